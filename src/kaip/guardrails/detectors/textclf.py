"""A small text classifier stored as JSON: TF-IDF over word and character n-grams, then a logistic regression.

Training (`kaip.guardrails.training.train`) fits scikit-learn's vectorisers and model and writes their
vocabularies, IDF weights and coefficients to a JSON file; loading rebuilds the vectorisers with that fixed
vocabulary, so no pickle is ever loaded and the file can be read in review.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

MODELS = Path(__file__).resolve().parent.parent / "models"
_VECTORIZER_KEYS = ("analyzer", "ngram_range", "lowercase", "sublinear_tf", "token_pattern", "strip_accents")


def vectorizer_spec(vec: TfidfVectorizer) -> dict[str, Any]:
    params = {k: v for k, v in vec.get_params().items() if k in _VECTORIZER_KEYS}
    params["ngram_range"] = list(params["ngram_range"])
    vocab = sorted(vec.vocabulary_, key=vec.vocabulary_.__getitem__)
    return {"params": params, "vocabulary": vocab, "idf": [round(float(x), 5) for x in vec.idf_]}


def build_vectorizer(spec: dict[str, Any]) -> TfidfVectorizer:
    params = dict(spec["params"])
    params["ngram_range"] = tuple(params["ngram_range"])
    vec = TfidfVectorizer(vocabulary={t: i for i, t in enumerate(spec["vocabulary"])}, **params)
    vec.idf_ = np.asarray(spec["idf"], dtype=np.float64)
    return vec


class TextClassifier:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.name = spec["name"]
        self.vectorizers = [build_vectorizer(v) for v in spec["vectorizers"]]
        self.coef = np.asarray(spec["coef"], dtype=np.float64)
        self.intercept = float(spec["intercept"])
        self.threshold = float(spec.get("threshold", 0.5))
        self.trained_on = spec.get("trained_on", "")

    @classmethod
    def load(cls, name: str) -> TextClassifier:
        return cls(json.loads((MODELS / f"{name}.json").read_text()))

    def probabilities(self, texts: list[str]) -> np.ndarray:
        from scipy.sparse import hstack

        x = hstack([v.transform(texts) for v in self.vectorizers]).tocsr()
        z = x @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))

    def probability(self, text: str) -> float:
        return float(self.probabilities([text])[0])
