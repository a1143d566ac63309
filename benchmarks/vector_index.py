"""Vector index benchmark (issue 10): which library backs Kaip's knowledge-base index.

N random-direction unit vectors of dimension 384 (the size of all-MiniLM-L6-v2's embeddings) and Q query
vectors; exact search with NumPy is the ground truth. For every candidate and for Kaip's own index
(`kaip.rag.index.VectorIndex`, which wraps the chosen library): build time, memory, query latency p50/p99,
QPS at batch 1 and recall@10, without a filter and with a filter that matches 10% of the records.

Random directions in 384 dimensions are the hardest case for a graph index (no cluster structure to exploit),
so recall here is a floor for real embeddings.

The anchor is exact search: the goal is recall@10 >= 0.95 at >= 5x the exact QPS, with the filter keeping recall.
The end-to-end RAG overhead (embed the question with the real model + search + prompt build) is measured too,
against a p50 goal of 20 ms.

    .venv/bin/python benchmarks/vector_index.py                 # the full size: 100,000 vectors, 1,000 queries
    .venv/bin/python benchmarks/vector_index.py --n 20000 --queries 200   # quick, for development
"""

from __future__ import annotations

import argparse
import gc
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIM = 384
K = 10
SELECTIVITY = 0.10


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


@dataclass
class Row:
    name: str
    build_s: float
    memory_mb: float
    p50_ms: float
    p99_ms: float
    qps: float
    recall: float
    f_p50_ms: float
    f_p99_ms: float
    f_qps: float
    f_recall: float
    f_full: float  # share of filtered queries that returned k results
    queries: int
    note: str = ""


def recall_at_k(found: list[np.ndarray], truth: np.ndarray) -> float:
    hits = sum(len(set(map(int, f)) & set(map(int, t))) for f, t in zip(found, truth, strict=False))
    return hits / (len(found) * truth.shape[1])


def run_queries(search: Callable[[np.ndarray], np.ndarray],
                queries: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
    found, times = [], []
    for q in queries:
        t = time.perf_counter()
        ids = search(q)
        times.append(time.perf_counter() - t)
        found.append(np.asarray(ids))
    return found, times


def measure(name: str, build: Callable[[], object], search: Callable[[object, np.ndarray], np.ndarray],
            fsearch: Callable[[object, np.ndarray], np.ndarray], queries: np.ndarray, truth: np.ndarray,
            ftruth: np.ndarray, note: str = "") -> Row:
    gc.collect()
    before = rss_mb()
    t = time.perf_counter()
    index = build()
    build_s = time.perf_counter() - t
    memory = rss_mb() - before
    found, times = run_queries(lambda q: search(index, q), queries)
    ffound, ftimes = run_queries(lambda q: fsearch(index, q), queries)
    full = sum(1 for f in ffound if len(f) >= K) / len(ffound)
    row = Row(name, build_s, memory, pct(times, 50) * 1e3, pct(times, 99) * 1e3, len(times) / sum(times),
              recall_at_k(found, truth[: len(queries)]), pct(ftimes, 50) * 1e3, pct(ftimes, 99) * 1e3,
              len(ftimes) / sum(ftimes), recall_at_k(ffound, ftruth[: len(queries)]), full, len(queries), note)
    print(f"  {name}: build {build_s:.1f}s, recall {row.recall:.3f}, {row.qps:.0f} QPS; filtered recall "
          f"{row.f_recall:.3f}, {row.f_qps:.0f} QPS", file=sys.stderr, flush=True)
    index = None
    gc.collect()
    return row


# ---- candidates --------------------------------------------------------------------------------------------

def exact_numpy(x: np.ndarray, mask: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                ftruth: np.ndarray) -> Row:
    matching = np.flatnonzero(mask)

    def search(idx: object, q: np.ndarray) -> np.ndarray:
        scores = x @ q
        top = np.argpartition(-scores, K)[:K]
        return top[np.argsort(-scores[top])]

    def fsearch(idx: object, q: np.ndarray) -> np.ndarray:
        scores = x[matching] @ q
        top = np.argpartition(-scores, K)[:K]
        return matching[top[np.argsort(-scores[top])]]

    return measure("exact (NumPy)", lambda: x, search, fsearch, queries, truth, ftruth,
                   "ground truth; filter: gather the matching rows, then a matrix-vector product")


def faiss_flat(x: np.ndarray, mask: np.ndarray, queries: np.ndarray, truth: np.ndarray, ftruth: np.ndarray) -> Row:
    import faiss

    bitmap = np.packbits(mask, bitorder="little")

    def build() -> object:
        faiss.omp_set_num_threads(1)  # batch 1: OpenMP only adds contention
        index = faiss.IndexFlatIP(DIM)
        index.add(x)
        return index

    params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap)))

    def search(index: object, q: np.ndarray) -> np.ndarray:
        return index.search(q[None, :], K)[1][0]  # type: ignore[attr-defined]

    def fsearch(index: object, q: np.ndarray) -> np.ndarray:
        ids = index.search(q[None, :], K, params=params)[1][0]  # type: ignore[attr-defined]
        return ids[ids >= 0]

    return measure("FAISS IndexFlatIP", build, search, fsearch, queries, truth, ftruth,
                   "exact; filter: IDSelectorBitmap inside the scan")


def faiss_pq_fastscan(x: np.ndarray, mask: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                      ftruth: np.ndarray, m: int, rerank: int) -> Row:
    """The library alone: 4-bit PQ fast scan (m sub-quantisers), then `rerank` candidates re-scored exactly."""
    import faiss

    def build() -> object:
        faiss.omp_set_num_threads(1)
        index = faiss.IndexPQFastScan(DIM, m, 4, faiss.METRIC_INNER_PRODUCT)
        index.train(x[:50_000])
        index.add(x)
        return index

    def rescore(pos: np.ndarray, q: np.ndarray) -> np.ndarray:
        scores = x[pos] @ q
        return pos[np.argsort(-scores)[:K]]

    def search(index: object, q: np.ndarray) -> np.ndarray:
        pos = index.search(q[None, :], rerank)[1][0]  # type: ignore[attr-defined]
        return rescore(pos[pos >= 0], q)

    fetch = int(rerank / SELECTIVITY)

    def fsearch(index: object, q: np.ndarray) -> np.ndarray:  # the fast scan takes no selector: over-fetch
        pos = index.search(q[None, :], fetch)[1][0]  # type: ignore[attr-defined]
        pos = pos[pos >= 0]
        return rescore(pos[mask[pos]][:rerank], q)

    return measure(f"FAISS IndexPQFastScan M={m} x 4 bit, re-rank {rerank}", build, search, fsearch, queries,
                   truth, ftruth, "filter: over-fetch by 1 / selectivity, filter, re-rank (no selector in the "
                   "fast scan)")


def faiss_hnsw(x: np.ndarray, mask: np.ndarray, queries: np.ndarray, truth: np.ndarray, ftruth: np.ndarray,
               m: int, ef_construction: int, ef: int) -> Row:
    import faiss

    bitmap = np.packbits(mask, bitorder="little")

    def build() -> object:
        faiss.omp_set_num_threads(os.cpu_count() or 1)  # build in parallel, search one query per thread
        index = faiss.IndexHNSWFlat(DIM, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.add(x)
        index.hnsw.efSearch = ef
        faiss.omp_set_num_threads(1)
        return index

    sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
    fparams = faiss.SearchParametersHNSW(sel=sel, efSearch=ef)

    def search(index: object, q: np.ndarray) -> np.ndarray:
        return index.search(q[None, :], K)[1][0]  # type: ignore[attr-defined]

    def fsearch(index: object, q: np.ndarray) -> np.ndarray:
        ids = index.search(q[None, :], K, params=fparams)[1][0]  # type: ignore[attr-defined]
        return ids[ids >= 0]

    return measure(f"FAISS IndexHNSWFlat M={m} ef={ef}", build, search, fsearch, queries, truth, ftruth,
                   f"efConstruction={ef_construction}; filter: IDSelectorBitmap inside the graph search")


def hnswlib_index(x: np.ndarray, mask: np.ndarray, queries: np.ndarray, truth: np.ndarray, ftruth: np.ndarray,
                  m: int, ef_construction: int, ef: int) -> Row:
    import hnswlib

    def build() -> object:
        index = hnswlib.Index(space="ip", dim=DIM)
        index.init_index(max_elements=len(x), M=m, ef_construction=ef_construction)
        index.add_items(x, np.arange(len(x)))
        index.set_ef(ef)
        index.set_num_threads(1)
        return index

    allowed = mask.tolist()

    def search(index: object, q: np.ndarray) -> np.ndarray:
        return index.knn_query(q, k=K)[0][0]  # type: ignore[attr-defined]

    def fsearch(index: object, q: np.ndarray) -> np.ndarray:
        return index.knn_query(q, k=K, filter=lambda i: allowed[i])[0][0]  # type: ignore[attr-defined]

    return measure(f"hnswlib M={m} ef={ef}", build, search, fsearch, queries, truth, ftruth,
                   f"ef_construction={ef_construction}; filter: a Python callback inside the graph search")


def usearch_index(x: np.ndarray, mask: np.ndarray, queries: np.ndarray, truth: np.ndarray, ftruth: np.ndarray,
                  m: int, ef_construction: int, ef: int) -> Row:
    from usearch.index import Index

    def build() -> object:
        index = Index(ndim=DIM, metric="ip", dtype="f32", connectivity=m, expansion_add=ef_construction,
                      expansion_search=ef)
        index.add(np.arange(len(x)), x)
        return index

    def search(index: object, q: np.ndarray) -> np.ndarray:
        return index.search(q, K, threads=1).keys  # type: ignore[attr-defined]

    # USearch's Python API has no predicate: the best it can do is over-fetch and filter afterwards.
    over = int(K / SELECTIVITY * 2)

    def fsearch(index: object, q: np.ndarray) -> np.ndarray:
        keys = index.search(q, over, threads=1).keys  # type: ignore[attr-defined]
        return keys[mask[keys]][:K]

    return measure(f"USearch M={m} ef={ef}", build, search, fsearch, queries, truth, ftruth,
                   f"expansion_add={ef_construction}; filter: over-fetch {over}, filter after (no predicate in "
                   "the Python API)")


def sqlite_vec_index(x: np.ndarray, mask: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                     ftruth: np.ndarray) -> Row:
    import sqlite_vec

    tmp = tempfile.mkdtemp(prefix="kaip-bench-vec-")

    def build() -> object:
        db = sqlite3.connect(os.path.join(tmp, "vec.db"))
        db.enable_load_extension(True)  # AttributeError where Python's sqlite3 lacks extension loading
        sqlite_vec.load(db)
        db.execute(f"create virtual table v using vec0(embedding float[{DIM}] distance_metric=cosine, tag integer)")
        db.executemany("insert into v(rowid, embedding, tag) values (?, ?, ?)",
                       ((i, x[i].tobytes(), int(not mask[i])) for i in range(len(x))))
        db.commit()
        return db

    def search(db: object, q: np.ndarray) -> np.ndarray:
        rows = db.execute("select rowid from v where embedding match ? and k = ? order by distance",  # type: ignore
                          (q.tobytes(), K)).fetchall()
        return np.array([r[0] for r in rows])

    def fsearch(db: object, q: np.ndarray) -> np.ndarray:
        rows = db.execute("select rowid from v where embedding match ? and k = ? and tag = 0 "  # type: ignore
                          "order by distance", (q.tobytes(), K)).fetchall()
        return np.array([r[0] for r in rows])

    return measure("sqlite-vec vec0", build, search, fsearch, queries, truth, ftruth,
                   "exact (brute force in SQLite); filter: a metadata column inside the KNN query")


def kaip_index(x: np.ndarray, mask: np.ndarray, queries: np.ndarray, truth: np.ndarray, ftruth: np.ndarray) -> Row:
    from kaip.rag.index import VectorIndex

    tmp = Path(tempfile.mkdtemp(prefix="kaip-bench-index-"))
    ids = np.arange(len(x), dtype=np.int64)

    def build() -> object:
        index = VectorIndex(DIM)
        index.add(ids, x)
        index.save(tmp / "index.npz", 0)
        return index

    allowed = ids[mask]

    def search(index: object, q: np.ndarray) -> np.ndarray:
        return index.search(q, K)[0]  # type: ignore[attr-defined]

    def fsearch(index: object, q: np.ndarray) -> np.ndarray:
        return index.search(q, K, allowed=allowed)[0]  # type: ignore[attr-defined]

    return measure("Kaip VectorIndex", build, search, fsearch, queries, truth, ftruth,
                   "FAISS behind Kaip's planner: exact scan up to 50,000 candidates, else the PQ fast scan + "
                   "re-rank of 400")


def pgvector_index(x: np.ndarray, mask: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                   ftruth: np.ndarray, url: str) -> Row:
    """Kaip's pgvector store (`kaip.rag.pgvector.PgVectorIndex`): exact inner-product scans in PostgreSQL, filters
    as a WHERE inside the query. Memory is the server's, not this process's."""
    from sqlalchemy import create_engine

    from kaip.rag.pgvector import PgVectorIndex, ensure_extension

    engine = create_engine(url)
    ensure_extension(engine)
    ids = np.arange(len(x), dtype=np.int64)
    allowed = ids[mask]

    def build() -> object:
        index, _ = PgVectorIndex.open(engine, "bench/vectors", DIM)
        index.reset()
        index.add(ids, x)
        index.save(None, 1)
        return index

    def search(index: object, q: np.ndarray) -> np.ndarray:
        return index.search(q, K)[0]  # type: ignore[attr-defined]

    def fsearch(index: object, q: np.ndarray) -> np.ndarray:
        return index.search(q, K, allowed=allowed)[0]  # type: ignore[attr-defined]

    return measure("Kaip pgvector store (PostgreSQL 16, pgvector 0.6.2)", build, search, fsearch, queries, truth,
                   ftruth, "exact scan (no HNSW: see BENCHMARKS.md); filtered: WHERE id = any(...) inside the "
                   "query; memory column: this process only")


# ---- end-to-end RAG overhead -------------------------------------------------------------------------------

def rag_overhead(requests: int) -> tuple[float, float, float]:
    """(embed p50, search + prompt p50, total p50) in ms for the healthcare corpus with the real model."""
    import shutil

    from kaip.rag.augment import augment
    from kaip.rag.embeddings import load_embedder
    from kaip.rag.knowledge import KnowledgeBase, kb_from_spec  # noqa: I001
    from kaip.rag.sync import sync_knowledge_base

    root = Path(__file__).resolve().parent.parent / "tests" / "data" / "rag"
    tmp = Path(tempfile.mkdtemp(prefix="kaip-bench-rag-"))
    corpus = tmp / "corpus"
    shutil.copytree(root / "corpus", corpus)
    shutil.copy(root / "members.jsonl", corpus / "members.jsonl")
    embedder = load_embedder("all-MiniLM-L6-v2")
    spec = {"sources": [{"path": str(corpus / "*.md")}, {"path": str(corpus / "members.jsonl")}],
            "accessControl": {"ownerField": "member_id"}, "metadataFields": ["member_id", "plan"]}
    kb = KnowledgeBase(kb_from_spec("bench", "default", spec), tmp / "kb", embedder)
    sync_knowledge_base(kb)
    question = "How much is my deductible on the Gold plan and how much of it have I met?"
    messages = [{"role": "system", "content": "You are a helpful insurance assistant."},
                {"role": "user", "content": question}]
    embed_t, rest_t, total_t = [], [], []
    for _ in range(requests):
        t0 = time.perf_counter()
        embedder.embed([question])
        t1 = time.perf_counter()
        augment(messages, [kb], subject="EVM-100001")
        t2 = time.perf_counter()
        embed_t.append(t1 - t0)
        total_t.append(t2 - t1)
    # augment() embeds the question itself: search + prompt is its total minus one embedding.
    rest_t = [max(0.0, a - b) for a, b in zip(total_t, embed_t, strict=True)]
    return statistics.median(embed_t) * 1e3, statistics.median(rest_t) * 1e3, statistics.median(total_t) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--slow-queries", type=int, default=200,
                        help="queries for the brute-force SQLite candidate (it is the slowest by far)")
    parser.add_argument("--ef", default="256,1024", help="HNSW search breadths to measure (comma-separated)")
    parser.add_argument("--rerank", default="200,400", help="re-ranked candidates for the PQ fast scan")
    parser.add_argument("--only", default="", help="comma-separated candidates (exact,faiss-flat,faiss-pq,faiss-hnsw,"
                        "hnswlib,usearch,sqlite-vec,kaip,pgvector,rag)")
    parser.add_argument("--rag-requests", type=int, default=200)
    parser.add_argument("--pgvector", action="store_true", help="also measure the pgvector store (a PostgreSQL "
                        "server from the pgserver wheel; minutes at full size)")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))

    def want(name: str) -> bool:
        return not only or name in only

    rng = np.random.default_rng(0)
    x = unit(rng, args.n)
    queries = unit(rng, args.queries)
    mask = rng.random(args.n) < SELECTIVITY
    matching = np.flatnonzero(mask)
    print(f"{args.n} vectors x {DIM}, {args.queries} queries, filter matches {len(matching)} records",
          file=sys.stderr)
    scores = queries @ x.T
    truth = np.argsort(-scores, axis=1)[:, :K]
    fscores = scores[:, matching]
    ftruth = matching[np.argsort(-fscores, axis=1)[:, :K]]
    del scores, fscores

    rows: list[Row] = []
    if want("exact"):
        rows.append(exact_numpy(x, mask, queries, truth, ftruth))
    if want("faiss-flat"):
        rows.append(faiss_flat(x, mask, queries, truth, ftruth))
    for rerank in [int(r) for r in args.rerank.split(",") if r]:
        if want("faiss-pq"):
            rows.append(faiss_pq_fastscan(x, mask, queries, truth, ftruth, DIM // 2, rerank))
    efs = [int(e) for e in args.ef.split(",") if e]
    for ef in efs:
        if want("faiss-hnsw"):
            rows.append(faiss_hnsw(x, mask, queries, truth, ftruth, 32, 200, ef))
    for ef in efs:
        if want("hnswlib"):
            rows.append(hnswlib_index(x, mask, queries, truth, ftruth, 32, 200, ef))
    for ef in efs:
        if want("usearch"):
            rows.append(usearch_index(x, mask, queries, truth, ftruth, 32, 200, ef))
    if want("sqlite-vec"):
        try:
            rows.append(sqlite_vec_index(x, mask, queries[: args.slow_queries], truth, ftruth))
        except AttributeError as err:
            print(f"- sqlite-vec: not measured: this Python's sqlite3 cannot load extensions ({err})")
    if want("kaip"):
        rows.append(kaip_index(x, mask, queries, truth, ftruth))
    if want("pgvector") and (args.pgvector or only):
        from kaip.testing.postgres import temporary_postgres

        with temporary_postgres(pgvector=True) as url:
            rows.append(pgvector_index(x, mask, queries[: args.slow_queries], truth, ftruth, url))

    exact_qps = next((r.qps for r in rows if r.name.startswith("exact")), None)
    print(f"\n{args.n:,} unit vectors, dim {DIM}, k={K}; filter matches {SELECTIVITY:.0%} "
          f"({len(matching):,} records); batch 1, {os.cpu_count()} CPUs\n")
    print("| index | build s | memory MB | p50 ms | p99 ms | QPS | vs exact | recall@10 | filtered p50 ms | "
          "filtered QPS | filtered recall@10 | filtered full k | queries |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r.qps / exact_qps:.1f}x" if exact_qps else "-"
        print(f"| {r.name} | {r.build_s:.1f} | {r.memory_mb:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.qps:.0f} | "
              f"{ratio} | {r.recall:.3f} | {r.f_p50_ms:.2f} | {r.f_qps:.0f} | {r.f_recall:.3f} | "
              f"{r.f_full:.0%} | {r.queries} |")
    print()
    for r in rows:
        if r.note:
            print(f"- {r.name}: {r.note}")
    kaip = next((r for r in rows if r.name.startswith("Kaip")), None)
    if kaip and exact_qps:
        met = kaip.recall >= 0.95 and kaip.qps >= 5 * exact_qps and kaip.f_recall >= 0.95
        print(f"\nKaip: recall@10 {kaip.recall:.3f} at {kaip.qps / exact_qps:.1f}x the exact QPS, filtered recall "
              f"{kaip.f_recall:.3f}: {'meets' if met else 'misses'} the goal (recall >= 0.95 at >= 5x, filter "
              "keeps recall).")
    if want("rag"):
        embed, rest, total = rag_overhead(args.rag_requests)
        verdict = "meets" if total <= 20 else "misses"
        print(f"\nEnd-to-end RAG overhead per request (augment(): embed the last user turn with all-MiniLM-L6-v2, "
              f"search with the member's owner filter, build the prompt), median of {args.rag_requests}: "
              f"{total:.1f} ms (embedding alone {embed:.1f} ms, search + prompt {rest:.1f} ms): "
              f"{verdict} the 20 ms goal ({20 / total:.1f}x).")


if __name__ == "__main__":
    main()
