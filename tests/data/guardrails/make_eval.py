"""Write the guardrail evaluation sets (JSONL) in this folder.

    .venv/bin/python tests/data/guardrails/make_eval.py

Made by the Kaip project; every example is fictional (generated names, numbers and addresses, sentences we
wrote). The sentences come from the `eval` split of `kaip.guardrails.training.corpus`: templates and fillers
that the classifiers were not trained on, and another seed. Each line: {"text", "label", "kind", "spans"?}.
"""

from __future__ import annotations

import json
from pathlib import Path

from kaip.guardrails.training import corpus

EVAL_SEED = 20250901
HERE = Path(__file__).resolve().parent


def write(name: str, examples: list[corpus.Example]) -> None:
    with open(HERE / f"{name}.jsonl", "w") as out:
        for ex in examples:
            out.write(json.dumps(ex.to_json()) + "\n")
    positives = sum(e.label for e in examples)
    print(f"{name}.jsonl: {len(examples)} examples ({positives} positive, {len(examples) - positives} negative)")


def main() -> None:
    write("pii", corpus.pii_examples("eval", 40, EVAL_SEED) + corpus.name_examples("eval", 150, EVAL_SEED))
    write("hap", corpus.hap_examples("eval", EVAL_SEED, repeat=8)
          + corpus.injection_examples("eval", EVAL_SEED, 0, 60))
    write("prompt_injection", corpus.injection_examples("eval", EVAL_SEED, 200, 200))
    write("bias", corpus.bias_examples("eval", EVAL_SEED, 360))


if __name__ == "__main__":
    main()
