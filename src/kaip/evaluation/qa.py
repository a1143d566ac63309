"""Question-answering evaluation of a chat model on a held-out set, and the champion/challenger decision.

    items = load_eval_set("examples/healthcare-chatbot/data/eval.jsonl")
    answers = generate_answers(model_dir, items, system_prompt=SYSTEM_PROMPT)
    report = evaluate(answers, items)           # {"score", "facts", "rouge_l", "refusal_accuracy", ..., "rows"}
    wins, why = compare(report, champion_report)

An evaluation set is JSONL, one item a line:

    {"question": "...", "reference": "...", "facts": ["$1,500", "Gold"], "out_of_scope": false, "context": "..."}

`facts` are the strings a correct answer must contain, matched on normalised tokens: case-insensitive words, and
numbers without currency signs, thousands separators or trailing zeros ("$1,500", "1500", "1,500 dollars" and
"1500.00" all match "1500"; "%" reads as "percent"). An out-of-scope item's reference is the refusal the model
should give. `context` (optional) is the context block the serving gateway adds to the system prompt
(`kaip.rag.augment`), joined to it the same way, so that RAG-style reading is evaluated with the real prompt.

The score is the mean of three numbers in [0, 1]: the fact recall over in-scope items, ROUGE-L (F-measure, the
`rouge-score` package) against the references over all items, and the refusal accuracy over out-of-scope items.
In-scope items the model refused are reported as `false_refusals` (they already cost facts and ROUGE-L).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any

from kaip.jsonlines import records

# The flagship example's chatbot (examples/healthcare-chatbot): the persona it is fine-tuned with and the refusal
# it learns for out-of-scope questions. data/make_datasets.py trains with exactly these; whoever evaluates or
# serves the model should send the same system prompt.
SYSTEM_PROMPT = (
    "You are Evergreen Mutual's member assistant. Answer questions about Evergreen Mutual health plans, "
    "benefits, providers and claims from the plan documents and the member's records, in one or two sentences "
    "with exact figures. Politely refuse anything outside health-plan topics."
)
REFUSAL = "I can only help with questions about your Evergreen Mutual health plan, benefits and claims."


class EvalSetError(ValueError):
    pass


@dataclass(frozen=True)
class EvalItem:
    question: str
    reference: str
    facts: tuple[str, ...] = ()
    out_of_scope: bool = False
    context: str | None = None


# --- metrics ---------------------------------------------------------------------------------------------------

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+")


def _canonical_number(token: str) -> str:
    try:
        value = Decimal(token)
    except InvalidOperation:  # pragma: no cover - the token pattern only yields numbers here
        return token
    text = format(value.normalize(), "f")
    return text if "." not in text else text.rstrip("0").rstrip(".")


def normalise(text: str) -> list[str]:
    """Lower-case word and number tokens: "$1,500.00 (20%)" -> ["1500", "20", "percent"]."""
    text = _THOUSANDS.sub("", text.replace("\u2019", "'").replace("%", " percent ")).lower()
    return [_canonical_number(t) if t[0].isdigit() else t for t in _TOKEN.findall(text)]


def _contains(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    if not needle:
        return True
    n = len(needle)
    return any(list(haystack[i:i + n]) == list(needle) for i in range(len(haystack) - n + 1))


def fact_score(answer: str, facts: Iterable[str]) -> float:
    """The fraction of `facts` found in `answer` as contiguous runs of normalised tokens (1.0 when there are
    none): "$1,500", "1500" and "1,500 dollars" all contain "1500"; "11500" and "1500.5" do not."""
    facts = list(facts)
    if not facts:
        return 1.0
    tokens = normalise(answer)
    return sum(_contains(tokens, normalise(f)) for f in facts) / len(facts)


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure (rouge-score, Porter stemming), with thousands separators removed first so that "1,500"
    and "1500" are the same token."""
    return float(_rouge_scorer().score(_THOUSANDS.sub("", reference), _THOUSANDS.sub("", answer))["rougeL"].fmeasure)


_REFUSAL_PATTERNS = [re.compile(p) for p in (
    r"\bi (?:can|could|am able to) only (?:help|assist|answer|discuss|talk)",
    r"\bi(?:'m| am) only (?:able|here|allowed) to (?:help|assist|answer|discuss)",
    r"\b(?:i|we) (?:can ?not|can't|could not|couldn't|won't be able to|am unable to|'m unable to|are unable to|"
    r"am not able to|'m not able to|am not allowed to|'m not allowed to) (?:help|assist|answer|provide|give|discuss|"
    r"diagnose|offer)",
    r"\b(?:outside|beyond) (?:of )?(?:my|the|our) (?:scope|expertise|area|remit)",
    r"\b(?:that|this)(?:'s| is) not something i can (?:help|assist|answer)",
    r"\bi(?:'m| am) (?:sorry|afraid),? (?:but )?i (?:can't|cannot|can not|can only)",
)]


def is_refusal(answer: str, refusals: Iterable[str] = ()) -> bool:
    """Whether `answer` declines the question: close to one of the given refusal sentences (ROUGE-L at least 0.6,
    or containing one), or a common way of saying "I can only help with ..." / "I can't help with that"."""
    text = " ".join(answer.replace("\u2019", "'").lower().split())
    if not text:
        return False
    for refusal in refusals:
        wanted = normalise(refusal)
        if wanted and (_contains(normalise(answer), wanted) or rouge_l(answer, refusal) >= 0.6):
            return True
    return any(p.search(text) for p in _REFUSAL_PATTERNS)


# --- the evaluation set ------------------------------------------------------------------------------------------

_FIELDS = {"question", "reference", "facts", "out_of_scope", "context"}


def load_eval_set(path: str | Path) -> list[EvalItem]:
    """The items of a JSONL evaluation set; a malformed line is an EvalSetError naming the file and line."""
    path = Path(path)
    items = []
    try:
        fh = open(path, encoding="utf-8")
    except OSError as err:
        raise EvalSetError(f"{path}: cannot read the evaluation set ({err.strerror})") from err
    with fh:
        for where, record in records(fh, path, EvalSetError):
            if not isinstance(record, dict):
                raise EvalSetError(f"{where}: expected a JSON object, got {type(record).__name__}")
            unknown = sorted(set(record) - _FIELDS)
            if unknown:
                raise EvalSetError(f"{where}: unknown field(s) {', '.join(unknown)} "
                                   f"(allowed: {', '.join(sorted(_FIELDS))})")
            for name in ("question", "reference"):
                if not isinstance(record.get(name), str) or not record[name].strip():
                    raise EvalSetError(f'{where}: "{name}" must be a non-empty string')
            facts = record.get("facts", [])
            if not isinstance(facts, list) or not all(isinstance(f, str) and f.strip() for f in facts):
                raise EvalSetError(f'{where}: "facts" must be a list of non-empty strings')
            out_of_scope = record.get("out_of_scope", False)
            if not isinstance(out_of_scope, bool):
                raise EvalSetError(f'{where}: "out_of_scope" must be true or false')
            context = record.get("context")
            if context is not None and not isinstance(context, str):
                raise EvalSetError(f'{where}: "context" must be a string')
            items.append(EvalItem(record["question"], record["reference"], tuple(facts), out_of_scope, context))
    if not items:
        raise EvalSetError(f"{path}: no items")
    return items


# --- generation --------------------------------------------------------------------------------------------------

def messages_for(item: EvalItem, system_prompt: str | None) -> list[dict[str, str]]:
    """The chat messages for an item; its context joins the system prompt as `kaip.rag.augment` joins it."""
    system = system_prompt or ""
    if item.context:
        system = f"{system.rstrip()}\n\n{item.context}" if system else item.context
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": item.question}]


def generate_answers(model_dir: str | Path, items: Sequence[EvalItem], *, system_prompt: str | None,
                     max_new_tokens: int = 64, batch_size: int = 8, device: str | None = None,
                     stats: dict[str, Any] | None = None) -> list[str]:
    """Greedy answers of the model in `model_dir` (transformers, fp32), one per item in order. Prompts are rendered
    with the tokenizer's chat template and generated in left-padded batches (sorted by length, so that a batch
    pads little); only the new tokens are decoded. `stats`, when given, receives the generated token count and
    the seconds spent generating."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not items:
        return []
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(device).eval()
    config = model.generation_config
    config.do_sample = False
    config.temperature = config.top_p = config.top_k = None
    config.max_new_tokens = max_new_tokens
    config.pad_token_id = tokenizer.pad_token_id
    eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])

    prompts = [tokenizer.apply_chat_template(messages_for(item, system_prompt), tokenize=False,
                                             add_generation_prompt=True) for item in items]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    generated = 0
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            enc = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            out = model.generate(**enc, generation_config=config)
            new = out[:, enc["input_ids"].shape[1]:].tolist()
            for i, ids in zip(batch, new, strict=True):
                end = next((k + 1 for k, t in enumerate(ids) if t in eos_ids), len(ids))
                generated += end
                answers[i] = tokenizer.decode(ids[:end], skip_special_tokens=True).strip()
    if stats is not None:
        stats.update(new_tokens=generated, seconds=time.perf_counter() - started, device=device)
    return answers


# --- scoring -----------------------------------------------------------------------------------------------------

def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def evaluate(answers: Sequence[str], items: Sequence[EvalItem]) -> dict[str, Any]:
    """Aggregate metrics, and per-item rows under "items". A metric with no items to average over (no
    out-of-scope items, say) is None and left out of `score`."""
    if len(answers) != len(items):
        raise ValueError(f"{len(answers)} answers for {len(items)} items")
    refusals = sorted({item.reference for item in items if item.out_of_scope})
    rows = []
    for answer, item in zip(answers, items, strict=True):
        rows.append({"question": item.question, "answer": answer, "reference": item.reference,
                     "out_of_scope": item.out_of_scope, "context": item.context is not None,
                     "facts": None if item.out_of_scope else fact_score(answer, item.facts),
                     "rouge_l": rouge_l(answer, item.reference), "refused": is_refusal(answer, refusals)})
    in_scope = [r for r in rows if not r["out_of_scope"]]
    out_scope = [r for r in rows if r["out_of_scope"]]
    report: dict[str, Any] = {
        "n_items": len(rows), "n_in_scope": len(in_scope), "n_out_of_scope": len(out_scope),
        "facts": _mean([r["facts"] for r in in_scope]),
        "facts_with_context": _mean([r["facts"] for r in in_scope if r["context"]]),
        "rouge_l": _mean([r["rouge_l"] for r in rows]),
        "refusal_accuracy": _mean([float(r["refused"]) for r in out_scope]),
        "false_refusals": _mean([float(r["refused"]) for r in in_scope]),
    }
    parts = [report[k] for k in ("facts", "rouge_l", "refusal_accuracy") if report[k] is not None]
    report["score"] = _mean(parts) if parts else 0.0
    report["items"] = rows
    return report


def compare(candidate: dict[str, Any], champion: dict[str, Any], *, margin: float = 0.0,
            max_refusal_drop: float = 0.1) -> tuple[bool, str]:
    """Whether the candidate should replace the champion: a score higher by more than `margin`, and a refusal
    accuracy no more than `max_refusal_drop` below the champion's. Returns the decision and why, in words."""
    cand, champ = float(candidate["score"]), float(champion["score"])
    scores = f"score {cand:.3f} vs {champ:.3f} ({cand - champ:+.3f}, margin {margin:.3f})"
    if cand <= champ + margin:
        return False, f"champion stays: {scores}: not better by more than the margin"
    c_ref, h_ref = candidate.get("refusal_accuracy"), champion.get("refusal_accuracy")
    if c_ref is not None and h_ref is not None:
        refusals = f"refusal accuracy {c_ref:.3f} vs {h_ref:.3f}"
        if h_ref - c_ref > max_refusal_drop + 1e-9:
            return False, (f"champion stays: {refusals} fell by {h_ref - c_ref:.3f}, more than {max_refusal_drop:.3f}"
                           f", although {scores}")
        return True, f"candidate wins: {scores}; {refusals}"
    return True, f"candidate wins: {scores}"


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The report without its per-item rows, rounded for printing."""
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in report.items() if k != "items"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaip.evaluation.qa", description="Evaluate a chat model on a "
                                     "question-answering set and print the metrics as JSON.")
    parser.add_argument("model_dir")
    parser.add_argument("eval_set")
    parser.add_argument("--system-prompt", default=SYSTEM_PROMPT, help="default: the healthcare chatbot's")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, help="write the full report (with per-item rows) here")
    args = parser.parse_args(argv)
    items = load_eval_set(args.eval_set)
    stats: dict[str, Any] = {}
    answers = generate_answers(args.model_dir, items, system_prompt=args.system_prompt,
                               max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, stats=stats)
    report = evaluate(answers, items)
    report["generation"] = stats
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    json.dump(summary(report), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
