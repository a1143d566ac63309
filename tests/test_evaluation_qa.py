"""kaip.evaluation.qa: the metrics on hand-written cases, evaluation-set loading errors, aggregation and the
champion/challenger decision, batched greedy generation on a tiny random model built in-process, and the
healthcare chatbot's generated data sets (reproducible, loadable by the trainer, eval held out from train)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from kaip.evaluation.qa import (
    REFUSAL,
    SYSTEM_PROMPT,
    EvalItem,
    EvalSetError,
    compare,
    evaluate,
    fact_score,
    generate_answers,
    is_refusal,
    load_eval_set,
    messages_for,
    rouge_l,
)
from kaip.training.lora_sft import load_chat_jsonl
from serving_fixtures import build_tiny_llm

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "healthcare-chatbot" / "data"


def make_datasets() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_datasets", DATA / "make_datasets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- metrics ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer", ["The deductible is $1,500.", "It is 1500 per year", "1,500 dollars",
                                    "a deductible of $1,500.00", "DEDUCTIBLE: 1500"])
def test_fact_score_matches_numbers_in_any_format(answer: str) -> None:
    assert fact_score(answer, ["1500"]) == 1.0
    assert fact_score(answer, ["$1,500"]) == 1.0
    assert fact_score(answer, ["1,500 dollars"]) == (1.0 if "dollars" in answer else 0.0)


def test_fact_score_fractions_words_and_near_misses() -> None:
    answer = "On the Gold plan specialist visits cost a $45 copay; coinsurance is 20% after the deductible."
    assert fact_score(answer, ["gold", "45", "20 percent", "prior authorization"]) == 0.75
    assert fact_score("You pay $11,500.", ["1,500"]) == 0.0  # not a substring match on digits
    assert fact_score("You pay $1,500.50.", ["1,500"]) == 0.0
    assert fact_score("You have met $599.80 [1].", ["$599.8"]) == 1.0
    assert fact_score("Open daily, 8am to 10pm.", ["8 am", "10 pm"]) == 1.0
    assert fact_score("Claim CLM-9008-0 was an x-ray.", ["CLM-9008-0"]) == 1.0
    assert fact_score("anything", []) == 1.0
    assert fact_score("", ["1500"]) == 0.0


def test_rouge_l_identical_disjoint_and_partial() -> None:
    text = "The Gold plan's annual deductible is $1,500."
    assert rouge_l(text, text) == pytest.approx(1.0)
    assert rouge_l("The Gold deductible is 1500", "the gold deductible is $1,500") == pytest.approx(1.0)
    assert rouge_l("bananas grow on trees", text) == 0.0
    assert 0.0 < rouge_l("The deductible is $1,500.", text) < 1.0


@pytest.mark.parametrize("answer", [
    REFUSAL,
    "I can only help with questions about your health plan.",
    "Sorry, I can't help with that.",
    "I'm sorry, but I cannot provide a diagnosis.",
    "I am unable to answer questions about the weather.",
    "That is outside my scope: I only handle health-plan questions.",
    "I can only help with questions about your Evergreen Mutual health plan, benefits and claims [1].",
    "i can only help with questions about your evergreen mutual plan and claims",
])
def test_refusal_variants(answer: str) -> None:
    assert is_refusal(answer, [REFUSAL])


@pytest.mark.parametrize("answer", [
    "The Gold plan's annual deductible is $1,500.",
    "You have met $599.80 of your $1,500 deductible [1].",
    "Call 911 or go to the nearest emergency room.",
    "Without prior authorization the claim may be denied.",
    "",
])
def test_not_refusals(answer: str) -> None:
    assert not is_refusal(answer, [REFUSAL])


# --- loading -----------------------------------------------------------------------------------------------------

def test_load_eval_set_reads_items(tmp_path: Path) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps({"question": "q?", "reference": "r.", "facts": ["1"]}) + "\n\n"
                    + json.dumps({"question": "w?", "reference": REFUSAL, "out_of_scope": True, "context": "c"}) + "\n")
    assert load_eval_set(path) == [EvalItem("q?", "r.", ("1",)), EvalItem("w?", REFUSAL, (), True, "c")]


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"question": "q", "reference": "r", "fact": []}', "unknown field(s) fact"),
    ('{"reference": "r"}', '"question" must be a non-empty string'),
    ('{"question": "q", "reference": ""}', '"reference" must be a non-empty string'),
    ('{"question": "q", "reference": "r", "facts": "1500"}', '"facts" must be a list'),
    ('{"question": "q", "reference": "r", "facts": [1500]}', '"facts" must be a list'),
    ('{"question": "q", "reference": "r", "out_of_scope": "no"}', '"out_of_scope" must be true or false'),
    ('{"question": "q", "reference": "r", "context": ["x"]}', '"context" must be a string'),
])
def test_load_eval_set_errors_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text('{"question": "q", "reference": "r"}\n\n' + line + "\n")
    with pytest.raises(EvalSetError) as err:
        load_eval_set(path)
    assert str(err.value).startswith(f"{path}:3: ")
    assert message in str(err.value)


def test_load_eval_set_empty_or_missing(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(EvalSetError, match="empty.jsonl: no items"):
        load_eval_set(tmp_path / "empty.jsonl")
    with pytest.raises(EvalSetError, match="missing.jsonl: cannot read"):
        load_eval_set(tmp_path / "missing.jsonl")


# --- evaluate and compare ----------------------------------------------------------------------------------------

ITEMS = [
    EvalItem("What is the Gold deductible?", "The Gold plan's annual deductible is $1,500.", ("1,500",)),
    EvalItem("Gold copays?", "Primary care costs a $20 copay and specialists a $45 copay.", ("20", "45")),
    EvalItem("Will it rain?", REFUSAL, (), True),
    EvalItem("Write Python.", REFUSAL, (), True),
]


def test_evaluate_fixed_answers() -> None:
    answers = ["It is 1500 dollars a year.", "I can't help with that.", REFUSAL, "def f(): pass"]
    report = evaluate(answers, ITEMS)
    assert (report["n_items"], report["n_in_scope"], report["n_out_of_scope"]) == (4, 2, 2)
    assert report["facts"] == 0.5
    assert report["refusal_accuracy"] == 0.5
    assert report["false_refusals"] == 0.5
    assert report["facts_with_context"] is None
    rouges = [rouge_l(a, i.reference) for a, i in zip(answers, ITEMS, strict=True)]
    assert report["rouge_l"] == pytest.approx(sum(rouges) / 4)
    assert report["score"] == pytest.approx((0.5 + report["rouge_l"] + 0.5) / 3)
    assert [r["refused"] for r in report["items"]] == [False, True, True, False]
    assert report["items"][0]["facts"] == 1.0 and report["items"][2]["facts"] is None

    perfect = evaluate([i.reference for i in ITEMS], ITEMS)
    assert (perfect["score"], perfect["facts"], perfect["refusal_accuracy"], perfect["false_refusals"]) == \
        (pytest.approx(1.0), 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="3 answers for 4 items"):
        evaluate(answers[:3], ITEMS)


def test_evaluate_without_out_of_scope_items_leaves_refusals_out_of_the_score() -> None:
    report = evaluate(["$1,500", "20 and 45"], ITEMS[:2])
    assert report["refusal_accuracy"] is None
    assert report["score"] == pytest.approx((1.0 + report["rouge_l"]) / 2)


def test_compare_both_ways() -> None:
    champion = {"score": 0.40, "refusal_accuracy": 0.5}
    better = {"score": 0.70, "refusal_accuracy": 1.0}
    wins, why = compare(better, champion)
    assert wins and why.startswith("candidate wins") and "0.700 vs 0.400" in why
    wins, why = compare(champion, better)
    assert not wins and why.startswith("champion stays") and "margin" in why
    wins, why = compare({"score": 0.45, "refusal_accuracy": 0.5}, champion, margin=0.1)
    assert not wins and "margin 0.100" in why
    wins, why = compare({"score": 0.9, "refusal_accuracy": 0.3}, champion)
    assert not wins and "refusal accuracy 0.300 vs 0.500 fell by 0.200" in why
    assert compare({"score": 0.9, "refusal_accuracy": 0.45}, champion)[0]  # within the 0.1 allowed
    assert not compare({"score": 0.9, "refusal_accuracy": 0.45}, champion, max_refusal_drop=0.0)[0]


# --- generation --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


def test_generate_answers_on_a_tiny_model(tiny_model: Path) -> None:
    items = [EvalItem("When does the clinic open?", "At nine."),
             EvalItem("Who serves models?", "Runtimes."),
             EvalItem("A patient asks the nurse about the clinic hours at the gateway, what now?", "Nine to five."),
             EvalItem("Hours?", "Nine.", context="[1] (faq.md)\nThe clinic opens at nine.")]
    stats: dict = {}
    answers = generate_answers(tiny_model, items, system_prompt="You answer briefly.", max_new_tokens=8,
                               batch_size=3, device="cpu", stats=stats)
    assert len(answers) == len(items) and all(isinstance(a, str) for a in answers)
    assert 0 < stats["new_tokens"] <= 8 * len(items) and stats["seconds"] > 0
    # left padding and order restoration: one at a time gives the same greedy answers
    assert generate_answers(tiny_model, items, system_prompt="You answer briefly.", max_new_tokens=8,
                            batch_size=1, device="cpu") == answers
    assert generate_answers(tiny_model, [], system_prompt=None) == []


def test_context_joins_the_system_prompt_as_the_gateway_does() -> None:
    md = make_datasets()
    m = md.member(__import__("random").Random(1), "EVM-950099")
    passage = md.record_passage(m, 7)
    item = EvalItem("What plan am I on?", "x", context=md.context_block([passage]))
    assert messages_for(item, SYSTEM_PROMPT) == md.rag_messages("What plan am I on?", [passage], m["member_id"])
    assert messages_for(EvalItem("q", "r"), None) == [{"role": "user", "content": "q"}]


# --- the healthcare chatbot's data sets --------------------------------------------------------------------------

def test_make_datasets_reproduces_the_committed_files(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(DATA / "make_datasets.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True, cwd=tmp_path)
    for name in ("train.jsonl", "eval.jsonl"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), f"{name} is stale: rerun make_datasets.py"


def test_train_set_loads_and_eval_set_is_held_out() -> None:
    conversations = load_chat_jsonl(DATA / "train.jsonl")
    assert 300 <= len(conversations) <= 600
    train_questions = {" ".join(m["content"].lower().split()) for c in conversations for m in c if m["role"] == "user"}
    items = load_eval_set(DATA / "eval.jsonl")
    assert 30 <= len(items) <= 45
    for item in items:
        assert " ".join(item.question.lower().split()) not in train_questions, item.question
        assert not item.facts or fact_score(item.question, item.facts) == 0.0, f"the question holds a fact: {item}"
    refusals = [i.reference for i in items if i.out_of_scope]
    assert len(refusals) >= 6 and set(refusals) == {REFUSAL}
    # the references are perfect answers by the set's own rules
    report = evaluate([i.reference for i in items], items)
    assert (report["facts"], report["refusal_accuracy"], report["false_refusals"]) == (1.0, 1.0, 0.0)
    assert sum(1 for i in items if i.context) >= 3
    quick = items[:12]  # a quick evaluation of the first dozen still sees every kind of item
    assert any(i.out_of_scope for i in quick) and any(i.context for i in quick)
    # the chatbot's persona is what it is trained with
    assert all(c[0]["role"] == "system" and (c[0]["content"] == SYSTEM_PROMPT or
                                             c[0]["content"].startswith(SYSTEM_PROMPT + "\n\n"))
               for c in conversations)
    # member records in the training set never use the demo members' ids
    text = (DATA / "train.jsonl").read_text()
    assert "EVM-1" not in text and "EVM-9" in text
