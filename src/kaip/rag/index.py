"""The vector index: cosine similarity over unit vectors, with filters applied inside the search.

FAISS backs it, chosen by `benchmarks/vector_index.py` (the numbers are in BENCHMARKS.md): it is the one
candidate that applies a filter *inside* the search natively — a bitmap of the records that match, consulted
by the scan itself — so a filtered query scores only matching records and returns the top k of them, never
fewer when k exist. The measurements also decided the two tiers:

- up to `EXACT_BELOW` candidates: exact search over float32 vectors (FAISS flat inner product);
- above: a scan over 4-bit product-quantised codes (FAISS `IndexPQFastScan`, two dimensions per sub-quantiser,
  so 384 dimensions take 96 bytes instead of 1,536), whose SIMD look-up-table scan costs a small fraction of
  the float32 scan, then the best `RERANK` candidates re-scored exactly in float32. On the benchmark this keeps
  recall@10 at 0.997 at about 14x the exact scan's QPS, where the graph indexes (HNSW in FAISS, hnswlib,
  USearch) needed search breadths that made them no faster than exact search to reach 0.95. The fast scan
  takes no selector, so filters and tombstones are applied to an over-fetched candidate list (`RERANK` divided
  by the share of records that may be returned); a query that still finds fewer than k falls back to the exact
  filtered scan, so a filter never returns fewer than k when k records match.

Ids are the caller's (int64, chunk ids). Removal marks a tombstone that the live bitmap excludes from every
search; the structure is rebuilt without tombstones once they are a quarter of it. `save` writes one file,
to a temporary name first and then renamed over the old one, so a crash leaves either the old or the new index.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import faiss
import numpy as np

EXACT_BELOW = 50_000  # candidates up to which the float32 scan is used (measured, see BENCHMARKS.md)
RERANK = 400  # quantised candidates re-scored in float32 (at least 40 k); 200 gave recall@10 0.98, 400 0.997
TRAIN_AT_MOST = 50_000  # vectors the product quantiser is trained on (a fixed-seed sample)
COMPACT_AT = 0.25

# Queries arrive one at a time from many server threads: FAISS's OpenMP team at batch 1 only adds contention
# (measured: 2 threads were ~10x slower than 1 on this machine's 2 cores).
faiss.omp_set_num_threads(1)


class VectorIndex:
    def __init__(self, dim: int, *, exact_below: int = EXACT_BELOW) -> None:
        self.dim = dim
        self.exact_below = exact_below
        self._flat = faiss.IndexFlatIP(dim)
        self._codes: faiss.Index | None = None  # quantised copy, kept once the index outgrows exact_below
        self._ids = np.empty(0, dtype=np.int64)  # external id at each internal position
        self._live = np.empty(0, dtype=bool)
        self._order = np.empty(0, dtype=np.int64)  # positions sorted by external id, for id -> position lookups

    # ---- contents -------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._live.sum())

    @property
    def uses_quantised_scan(self) -> bool:
        return self._codes is not None

    def ids(self) -> np.ndarray:
        return self._ids[self._live]

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(ids) != len(vectors):
            raise ValueError(f"expected ({len(ids)}, {self.dim}) vectors, got {vectors.shape}")
        if not len(ids):
            return
        if len(np.unique(ids)) != len(ids) or len(np.intersect1d(ids, self.ids())):
            raise ValueError("ids must be new and unique")
        if len(np.intersect1d(ids, self._ids)):  # an id removed earlier comes back: drop the tombstones first
            self._rebuild()
        self._flat.add(vectors)
        if self._codes is not None:
            self._codes.add(vectors)
        self._ids = np.concatenate([self._ids, ids])
        self._live = np.concatenate([self._live, np.ones(len(ids), dtype=bool)])
        self._order = np.argsort(self._ids, kind="stable")
        if self._codes is None and len(self) > self.exact_below:
            self._rebuild()

    def remove(self, ids: np.ndarray) -> int:
        positions = self._positions(np.asarray(ids, dtype=np.int64))
        positions = positions[self._live[positions]]
        self._live[positions] = False
        dead = len(self._live) - len(self)
        if dead and dead >= COMPACT_AT * len(self._live):
            self._rebuild()
        return len(positions)

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Internal positions of the given external ids (unknown ids are dropped); ids are unique (see add)."""
        if not len(self._ids) or not len(ids):
            return np.empty(0, dtype=np.int64)
        sorted_ids = self._ids[self._order]
        at = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        return self._order[at[sorted_ids[at] == ids]]

    def _rebuild(self) -> None:
        n = self._flat.ntotal
        vectors = faiss.rev_swig_ptr(self._flat.get_xb(), n * self.dim).reshape(n, self.dim)[self._live].copy()
        self._flat = faiss.IndexFlatIP(self.dim)
        self._flat.add(vectors)
        self._codes = quantised(vectors) if len(vectors) > self.exact_below else None
        self._ids = self._ids[self._live]
        self._live = np.ones(len(self._ids), dtype=bool)
        self._order = np.argsort(self._ids, kind="stable")

    # ---- search ---------------------------------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int, *, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest live vectors (ids, cosine scores, best first), among `allowed` ids when given."""
        q = np.ascontiguousarray(np.asarray(query, dtype=np.float32).reshape(1, self.dim))
        mask = self._live
        if allowed is not None:
            mask = np.zeros(len(self._live), dtype=bool)
            mask[self._positions(np.asarray(allowed, dtype=np.int64))] = True
            mask &= self._live
        candidates = int(mask.sum())
        k = min(k, candidates)
        if k <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        if self._codes is not None and candidates > self.exact_below:
            found = self._rerank(q, k, mask, candidates)
            if found is not None:
                return found
        selector = None
        if candidates < len(mask):
            bitmap = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
        params = faiss.SearchParameters(sel=selector) if selector is not None else None
        scores, pos = self._flat.search(q, k, params=params)
        keep = pos[0] >= 0
        return self._ids[pos[0][keep]], scores[0][keep]

    def _rerank(self, q: np.ndarray, k: int, mask: np.ndarray,
                candidates: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Quantised scan, over-fetched by the share of positions `mask` excludes, then exact re-scoring; None
        when fewer than k allowed positions came back (the caller then scans exactly)."""
        assert self._codes is not None
        want = max(RERANK, 40 * k)
        fetch = min(len(mask), int(np.ceil(want * len(mask) / candidates)))
        _, pos = self._codes.search(q, fetch)
        pos = pos[0][pos[0] >= 0]
        pos = pos[mask[pos]][:want]
        if len(pos) < k:
            return None
        scores = self._flat.reconstruct_batch(pos) @ q[0]
        best = np.argsort(-scores, kind="stable")[:k]
        return self._ids[pos[best]], scores[best].astype(np.float32)

    # ---- persistence ----------------------------------------------------------------------------------------

    def save(self, path: Path, stamp: int) -> int:
        """Write atomically (temporary file, fsync, rename); returns the size in bytes. `stamp` says which state
        of the caller's store the file reflects, so a stale file is detected on load."""
        buf = io.BytesIO()
        np.savez(buf, flat=faiss.serialize_index(self._flat), ids=self._ids, live=self._live,
                 meta=np.array([self.dim, stamp, self.exact_below], dtype=np.int64))
        data = buf.getvalue()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return len(data)

    @classmethod
    def load(cls, path: Path) -> tuple[VectorIndex, int]:
        """(index, stamp); raises OSError or ValueError for a missing or damaged file."""
        with np.load(path) as data:
            dim, stamp, exact_below = (int(v) for v in data["meta"])
            index = cls(dim, exact_below=exact_below)
            index._flat = faiss.deserialize_index(data["flat"])
            index._ids = data["ids"].astype(np.int64)
            index._live = data["live"].astype(bool)
        if index._flat.ntotal != len(index._ids) or index._flat.d != dim or len(index._live) != len(index._ids):
            raise ValueError(f"{path}: the index and its id list disagree")
        index._rebuild()  # drops tombstones; the quantised copy is derived, so it is not stored
        return index, stamp


def quantised(vectors: np.ndarray) -> faiss.Index:
    """4-bit product quantisation for FAISS's fast scan: two dimensions per sub-quantiser (one when the dimension
    is odd), trained on a fixed-seed sample so that a rebuild of the same vectors gives the same codes."""
    n, dim = vectors.shape
    index = faiss.IndexPQFastScan(dim, dim // 2 if dim % 2 == 0 else dim, 4, faiss.METRIC_INNER_PRODUCT)
    sample = vectors
    if n > TRAIN_AT_MOST:
        sample = vectors[np.sort(np.random.default_rng(0).choice(n, TRAIN_AT_MOST, replace=False))]
    index.train(np.ascontiguousarray(sample))
    index.add(vectors)
    return index
