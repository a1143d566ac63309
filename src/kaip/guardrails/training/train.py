"""Train the guardrail classifiers on the `train` split of the project's corpus and write them as JSON.

    python -m kaip.guardrails.training.train            # writes src/kaip/guardrails/models/*.json

Deterministic (fixed seeds, liblinear): running it again writes the same files. Takes a few seconds.
The evaluation set (tests/data/guardrails/, made by tests/data/guardrails/make_eval.py) comes from the
`eval` split: other templates, other fillers, other seeds.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from sklearn.feature_extraction import DictVectorizer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from kaip.guardrails.detectors import names as names_mod
from kaip.guardrails.detectors.classifiers import mask_groups
from kaip.guardrails.detectors.textclf import MODELS, vectorizer_spec
from kaip.guardrails.training import corpus

TRAIN_SEED = 1001


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True))
    tmp.replace(path)


def train_text(name: str, texts: list[str], labels: list[int], *, note: str, c: float = 4.0,
               max_word: int = 4000, max_char: int = 6000) -> dict[str, Any]:
    from scipy.sparse import hstack

    word = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), lowercase=True, sublinear_tf=True,
                           max_features=max_word, min_df=1)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), lowercase=True, sublinear_tf=True,
                           max_features=max_char, min_df=2)
    x = hstack([word.fit_transform(texts), char.fit_transform(texts)]).tocsr()
    clf = LogisticRegression(C=c, solver="liblinear", class_weight="balanced", max_iter=1000)
    clf.fit(x, labels)
    return {"name": name, "vectorizers": [vectorizer_spec(word), vectorizer_spec(char)],
            "coef": [round(float(v), 5) for v in clf.coef_[0]], "intercept": float(clf.intercept_[0]),
            "threshold": 0.5, "trained_on": note}


def faker_name_lexicon() -> tuple[set[str], set[str]]:
    """Given names and surnames (lower-case, Latin script) from the person providers of every `faker` locale."""
    import importlib
    import pkgutil

    import faker.providers.person as person

    first: set[str] = set()
    last: set[str] = set()
    for module in pkgutil.iter_modules(person.__path__):
        provider = getattr(importlib.import_module(f"{person.__name__}.{module.name}"), "Provider", None)
        if provider is None:
            continue
        for attr, into in (("first_names", first), ("first_names_male", first), ("first_names_female", first),
                           ("first_names_nonbinary", first), ("last_names", last)):
            values = provider.__dict__.get(attr)  # some locales derive these as properties: skip those
            if not values or isinstance(values, property):
                continue
            for value in values:
                for part in str(value).split():
                    if _NAME_WORD.match(part) and part[0].isupper() and all(ord(c) < 0x250 for c in part):
                        into.add(part.lower())
    return first, last


_NAME_WORD = re.compile(r"^[^\W\d_][^\W\d_'\-]*$")
LEXICON_DROPOUT = 1 / 3  # candidates described as if no list knew their words, so context earns weight


def train_names() -> dict[str, Any]:
    examples = corpus.name_examples("train", 6000, TRAIN_SEED)
    first, last = faker_name_lexicon()
    first |= {n.lower() for n in corpus._split(corpus.FIRST_NAMES, "train")}
    last |= {n.lower() for n in corpus._split(corpus.LAST_NAMES, "train")}
    lexicon = names_mod.Lexicon(frozenset(first), frozenset(last))
    rng = random.Random(TRAIN_SEED)
    rows: list[dict[str, float]] = []
    labels: list[int] = []
    for ex in examples:
        tokens = names_mod.tokenize(ex.text)
        gold = {(s["start"], s["end"]) for s in ex.spans if s["type"] == "person"}
        for i, j in names_mod.candidates(tokens):
            seen = names_mod.EMPTY_LEXICON if rng.random() < LEXICON_DROPOUT else lexicon
            rows.append(dict.fromkeys(names_mod.features(tokens, i, j, seen), 1.0))
            labels.append(int((tokens[i].start, tokens[j - 1].end) in gold))
    vec = DictVectorizer()
    x = vec.fit_transform(rows)
    clf = LogisticRegression(C=0.5, solver="lbfgs", max_iter=3000, fit_intercept=False)
    clf.fit(x, labels)
    weights = {f: round(float(w), 5) for f, w in zip(vec.get_feature_names_out(), clf.coef_[0], strict=True)
               if abs(w) > 1e-4}
    return {"weights": weights, "first_names": sorted(first), "last_names": sorted(last), "threshold": 0.5,
            "trained_on": f"{len(examples)} project-made sentences (train split), {len(rows)} candidates; lexicon: "
                          f"{len(first)} given names and {len(last)} surnames from faker's person providers and "
                          "the training split"}


def main() -> None:
    MODELS.mkdir(parents=True, exist_ok=True)
    # Ordinary sentences from the other corpora serve as extra negatives for each classifier.
    pii_sentences = [e.text for e in corpus.pii_examples("train", 10, TRAIN_SEED)]
    name_sentences = [e.text for e in corpus.name_examples("train", 300, TRAIN_SEED)]
    bias_sentences = [e.text for e in corpus.bias_examples("train", TRAIN_SEED, 300) if not e.label]
    benign_prompts = [e.text for e in corpus.injection_examples("train", TRAIN_SEED, 0, 300)]
    hap = corpus.hap_examples("train", TRAIN_SEED, repeat=6)
    extra = benign_prompts + pii_sentences + name_sentences + bias_sentences
    texts = [e.text for e in hap] + extra
    labels = [e.label for e in hap] + [0] * len(extra)
    _write(MODELS / "hap.json", train_text("hap", texts, labels, c=2.0,
                                           note=f"{len(texts)} project-made sentences (train split)"))
    inj = corpus.injection_examples("train", TRAIN_SEED, 900, 900)
    extra = pii_sentences + name_sentences + bias_sentences + [e.text for e in hap if not e.label]
    _write(MODELS / "prompt_injection.json", train_text(
        "prompt_injection", [e.text for e in inj] + extra, [e.label for e in inj] + [0] * len(extra),
        note=f"{len(inj) + len(extra)} project-made prompts and sentences (train split)"))
    bias = corpus.bias_examples("train", TRAIN_SEED, 1200)
    extra = pii_sentences + benign_prompts
    _write(MODELS / "bias.json", train_text(
        "bias", [mask_groups(e.text) for e in bias] + [mask_groups(t) for t in extra],
        [e.label for e in bias] + [0] * len(extra), note=f"{len(bias) + len(extra)} project-made sentences "
                                                         "(train split), group mentions masked"))
    _write(MODELS / "names.json", train_names())
    for path in sorted(MODELS.glob("*.json")):
        print(f"{path.name}: {path.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
