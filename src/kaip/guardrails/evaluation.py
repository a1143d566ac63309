"""Precision and recall of detectors on labelled JSONL sets (the tests assert floors; the benchmark reports).

PII is scored per span: a found span counts when it overlaps a labelled span of the same type; a found span
that overlaps none (or one of another type) is a false positive. The classifiers are scored per example: an
example is flagged when any detection reaches the detector's threshold.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaip.guardrails.detectors.base import Detector
from kaip.guardrails.detectors.pii import ENTITY_NAMES


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def row(self) -> dict[str, Any]:
        return {"precision": round(self.precision, 4), "recall": round(self.recall, 4), "f1": round(self.f1, 4),
                "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn}


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def evaluate_pii(detector: Detector, examples: list[dict[str, Any]],
                 threshold: float | None = None) -> dict[str, Score]:
    """Per-type span scores, plus "all" over every type."""
    cut = detector.default_threshold if threshold is None else threshold
    scores: dict[str, Score] = defaultdict(Score)
    for ex in examples:
        gold = [((s["start"], s["end"]), ENTITY_NAMES.get(s["type"], s["type"])) for s in ex.get("spans", [])]
        found = [((d.start or 0, d.end or 0), d.detection) for d in detector.detect(ex["text"], {}) if d.score >= cut]
        for span, kind in gold:
            hit = any(_overlaps(span, f) and fk == kind for f, fk in found)
            for key in (kind, "all"):
                if hit:
                    scores[key].tp += 1
                else:
                    scores[key].fn += 1
        for span, kind in found:
            if not any(_overlaps(span, g) and gk == kind for g, gk in gold):
                scores[kind].fp += 1
                scores["all"].fp += 1
    return dict(scores)


def evaluate_classifier(detector: Detector, examples: list[dict[str, Any]],
                        threshold: float | None = None) -> Score:
    cut = detector.default_threshold if threshold is None else threshold
    score = Score()
    for ex in examples:
        flagged = any(d.score >= cut for d in detector.detect(ex["text"], {}))
        if ex["label"] and flagged:
            score.tp += 1
        elif ex["label"]:
            score.fn += 1
        elif flagged:
            score.fp += 1
        else:
            score.tn += 1
    return score
