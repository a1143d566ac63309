"""The fast scorer for alt-profanity-check's model gives the same probabilities as the library itself."""

from __future__ import annotations

import json
from pathlib import Path

from profanity_check import predict_prob

from kaip.guardrails.detectors.profanity import ProfanityModel

HAP = Path(__file__).parent / "data" / "guardrails" / "hap.jsonl"


def test_same_probabilities_as_the_library() -> None:
    texts = [json.loads(line)["text"] for line in HAP.read_text().splitlines() if line.strip()][:400]
    texts += ["", "!!!", "the the and of", "Damn it", "UPPER CASE SHIT", "naïve café crap"]
    ours = ProfanityModel().probabilities(texts)
    theirs = predict_prob(texts)
    assert len(ours) == len(texts)
    assert max(abs(a - float(b)) for a, b in zip(ours, theirs, strict=True)) < 1e-9

