"""Person names: a small named-entity model the project trains itself (no download, no spaCy pipeline).

Candidates are runs of capitalised tokens (initials such as `J.` included). Each candidate is described by
sparse features — its shape, its words and suffixes, the words around it, titles (`Dr.`, `Ms.`), cue phrases
(`my name is`, `regards,`), whether it opens the sentence, and whether its words are in a lexicon of given names
and surnames — and a logistic regression trained on project-made sentences (`kaip.guardrails.training`) scores
it. The weights and the lexicon are plain JSON (`models/names.json`): reviewable, and loading them runs no code.

The lexicon (about 20,000 given names and 20,000 surnames in Latin script) is taken at training time from the
name lists of the `faker` package's person providers (MIT licence; dozens of locales, census-style lists), plus the
training split's names. During training a third of the candidates are described as if the lexicon were empty, so
that the context features carry weight of their own: a name no list holds (the evaluation set has invented ones)
is still found from how the sentence uses it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

# Initials and abbreviated titles keep their full stop; any other word does not (so "Carver." ends at "r").
TOKEN = re.compile(r"\b(?:[^\W\d_]|Dr|Mr|Mrs|Ms|Mx|Prof|Jr|Sr|St)\.|[^\W\d_](?:[^\W\d_]|['\-])*|\d+|[^\s\w]")
TITLES = {"dr.", "mr.", "mrs.", "ms.", "dr", "mr", "mrs", "ms", "prof.", "nurse", "doctor"}
# Capitalised words that open sentences without being names, stripped from the front of a candidate.
OPENERS = {"a", "an", "the", "my", "our", "your", "his", "her", "their", "we", "i", "you", "he", "she", "they",
           "it", "is", "are", "was", "can", "could", "does", "do", "did", "will", "would", "should", "please", "hi",
           "hello", "hey", "dear", "thanks", "thank", "regards", "yes", "no", "ok", "okay", "so", "and", "but", "if",
           "when", "where", "what", "who", "why", "how", "which", "this", "that", "these", "those", "tell", "ask",
           "send", "call", "has", "have", "had", "may", "might", "let", "also", "then", "today", "tomorrow"}
# Words that are capitalised for other reasons: calendar, places, languages, organisations' common words.
_NON_PERSON_WORDS = """
january february march april may june july august september october november december monday
tuesday wednesday thursday friday saturday sunday christmas thanksgiving easter ramadan hanukkah
alabama alaska arizona arkansas california colorado connecticut delaware florida georgia hawaii
idaho illinois indiana iowa kansas kentucky louisiana maine maryland massachusetts michigan
minnesota mississippi missouri montana nebraska nevada ohio oklahoma oregon pennsylvania tennessee
texas utah vermont virginia washington wisconsin wyoming boston chicago seattle denver dallas
houston atlanta miami phoenix portland springfield america canada mexico europe england france
germany spain italy india china japan africa asia english spanish french german chinese japanese
arabic hindi clinic hospital pharmacy insurance mutual cross shield care health center centre
services support team app plan medical medicare medicaid gold silver bronze platinum urgent
emergency room street avenue road campus pediatrics cardiology radiology oncology university
college inc corp company group bank covid street st avenue ave road rd boulevard blvd lane ln drive dr court
ct way place terrace circle parkway suite apt apartment unit floor po box
"""
NON_PERSON = frozenset(_NON_PERSON_WORDS.split())

MODEL_PATH = Path(__file__).resolve().parent.parent / "models" / "names.json"


@dataclass(frozen=True)
class Token:
    text: str
    start: int
    end: int


def tokenize(text: str) -> list[Token]:
    return [Token(m.group(), m.start(), m.end()) for m in TOKEN.finditer(text)]


CONTRACTION = re.compile(r"['’](?:m|s|ll|re|ve|d|t)$", re.IGNORECASE)


def _is_cap(tok: str) -> bool:
    if CONTRACTION.search(tok):  # "I'm", "I'll", "Tom's": not part of a name run
        return False
    return tok[:1].isupper() and (len(tok) == 1 or not tok.isupper() or (len(tok) == 2 and tok.endswith(".")))


def candidates(tokens: list[Token]) -> list[tuple[int, int]]:
    """[i, j) token ranges of capitalised runs (at most four tokens), titles excluded."""
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(tokens):
        if _is_cap(tokens[i].text) and tokens[i].text.lower() not in TITLES:
            j = i
            while j < len(tokens) and j - i < 4 and _is_cap(tokens[j].text):
                j += 1
            start = i
            while start < j and tokens[start].text.lower() in OPENERS:
                start += 1
            if start < j:
                out.append((start, j))
            i = j
        else:
            i += 1
    return out


def _shape(tok: str) -> str:
    s = re.sub(r"[A-Z]", "X", tok)
    s = re.sub(r"[a-z]+", "x", s)
    return s


@dataclass(frozen=True)
class Lexicon:
    first: frozenset[str]
    last: frozenset[str]


EMPTY_LEXICON = Lexicon(frozenset(), frozenset())


def features(tokens: list[Token], i: int, j: int, lexicon: Lexicon) -> list[str]:
    words = [t.text for t in tokens[i:j]]
    low = [w.lower() for w in words]
    prev = [tokens[k].text.lower() for k in range(max(0, i - 3), i)]
    nxt = [tokens[k].text.lower() for k in range(j, min(len(tokens), j + 2))]
    f = ["bias", f"len={min(j - i, 3)}", "shape=" + " ".join(_shape(w) for w in words)]
    f += [f"known={w}" for w in low if w in NON_PERSON]
    if any(w in NON_PERSON for w in low):
        f.append("has_non_person_word")
    if i > 0 and tokens[i - 1].text[:1].islower():
        f.append("after_lowercase")
    f += [f"suf3={w[-3:]}" for w in low if len(w) > 3]
    f += [f"suf2={w[-2:]}" for w in low if len(w) > 2]
    f.append(f"p1={prev[-1] if prev else '<s>'}")
    if len(prev) >= 2:
        f.append(f"p2={prev[-2]} {prev[-1]}")
    if len(prev) >= 3:
        f.append(f"p3={' '.join(prev)}")
    f.append(f"n1={nxt[0] if nxt else '</s>'}")
    if len(nxt) >= 2:
        f.append(f"n2={nxt[0]} {nxt[1]}")
    if not prev or prev[-1] in {".", "!", "?", "\n", ":"}:
        f.append("sentence_start")
    if prev and prev[-1] in TITLES:
        f.append("after_title")
    if low[0] in lexicon.first:
        f.append("first_in_lexicon")
    if j - i >= 2 and low[-1] in lexicon.last:
        f.append("last_in_lexicon")
    if any(w in lexicon.first or w in lexicon.last for w in low[1:-1]):
        f.append("middle_in_lexicon")
    if not any(w in lexicon.first or w in lexicon.last for w in low):
        f.append("none_in_lexicon")
    if any(len(w) == 2 and w.endswith(".") for w in words):
        f.append("has_initial")
    if i > 0 and tokens[i - 1].text.isdigit():
        f.append("after_number")  # "7651 Orchard Street": a house number
    if j + 1 < len(tokens) and tokens[j].text == "," and re.fullmatch(r"[A-Z]{2}", tokens[j + 1].text):
        f.append("before_state_code")  # "Dover, DE"
    return f


class NameModel:
    def __init__(self, weights: dict[str, float], lexicon: Lexicon, threshold: float) -> None:
        self.weights = weights
        self.lexicon = lexicon
        self.threshold = threshold

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> NameModel:
        data = json.loads(path.read_text())
        lexicon = Lexicon(frozenset(data["first_names"]), frozenset(data["last_names"]))
        return cls(data["weights"], lexicon, float(data.get("threshold", 0.5)))

    def score(self, tokens: list[Token], i: int, j: int) -> float:
        z = sum(self.weights.get(name, 0.0) for name in features(tokens, i, j, self.lexicon))
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))

    def find(self, text: str) -> list[tuple[int, int, float]]:
        """(start, end, score) of each candidate whose score is at least the model's threshold."""
        tokens = tokenize(text)
        out = []
        for i, j in candidates(tokens):
            p = self.score(tokens, i, j)
            if p >= self.threshold:
                out.append((tokens[i].start, tokens[j - 1].end, p))
        return out
