"""Incremental sync of a knowledge base with its sources.

1. List the files the sources name. A file whose size and modification time are what was stored is not read
   again; one that changed is hashed, and only if its content hash changed is it parsed and chunked.
2. Chunks are compared by content hash with the file's stored chunks: an unchanged chunk keeps its row and
   embedding (only its position is updated), a new one is embedded, a vanished one is removed. Editing one
   document therefore re-embeds only the chunks of that document that actually changed.
3. Files that are gone are removed with their chunks. Files that can't be read are named in the report and
   keep what was indexed from them before; the rest is indexed regardless.
4. Everything is committed in one SQLite transaction (which bumps the generation), then the vector index is
   updated and saved, stamped with that generation.

The decisions (`plan_files`, `plan_chunks`) are pure functions; the I/O is around them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kaip.api.rag import Source
from kaip.rag import documents
from kaip.rag.chunking import Chunk, chunk_sections, record_chunk
from kaip.rag.documents import STRUCTURED, UnreadableError
from kaip.rag.knowledge import ArtifactResolver, KnowledgeBase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileStat:
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class StoredFile:
    hash: str
    size: int
    mtime_ns: int


@dataclass
class SyncReport:
    documents: int = 0
    chunks: int = 0
    embedded: int = 0  # chunks whose text went through the model in this sync
    kept: int = 0  # chunks of changed files whose embedding was reused
    removed: int = 0  # chunks removed (from changed or deleted files)
    files_changed: list[str] = field(default_factory=list)
    files_removed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # unreadable files and skipped records, "path: why"
    index_bytes: int = 0
    generation: int = 0


def plan_files(stored: Mapping[str, StoredFile], present: Mapping[str, FileStat], *,
               reread_all: bool = False) -> tuple[list[str], list[str]]:
    """(files to read and hash, files removed). Unchanged size and mtime mean unchanged content."""
    to_read = [p for p, st in present.items()
               if reread_all or p not in stored or (stored[p].size, stored[p].mtime_ns) != (st.size, st.mtime_ns)]
    removed = [p for p in stored if p not in present]
    return sorted(to_read), sorted(removed)


def plan_chunks(old: Sequence[tuple[int, str]], new: Sequence[Chunk]) -> tuple[dict[int, int], list[int], list[int]]:
    """Match a file's new chunks with its stored ones by content hash.

    Returns (new chunk index -> stored id it keeps, new chunk indexes to embed, stored ids to remove)."""
    available: dict[str, list[int]] = {}
    for chunk_id, digest in old:
        available.setdefault(digest, []).append(chunk_id)
    keep: dict[int, int] = {}
    embed: list[int] = []
    for i, chunk in enumerate(new):
        ids = available.get(chunk.content_hash)
        if ids:
            keep[i] = ids.pop(0)
        else:
            embed.append(i)
    used = set(keep.values())
    remove = [chunk_id for chunk_id, _ in old if chunk_id not in used]
    return keep, embed, remove


def config_digest(kb: KnowledgeBase) -> str:
    """What shapes chunks besides the files: a change re-reads every file (embeddings are still reused where a
    chunk's text comes out the same)."""
    spec = kb.config.spec
    raw = json.dumps([[s.model_dump() for s in spec.sources], spec.chunking.model_dump(), spec.metadataFields,
                      kb.config.owner_field], sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


def discover(sources: Sequence[Source], resolve_artifact: ArtifactResolver | None = None,
             ) -> tuple[dict[str, tuple[int, FileStat]], list[str]]:
    """{path: (source index, stat)} of every file the sources name, and problems (missing files, registry URIs
    that do not resolve)."""
    found: dict[str, tuple[int, FileStat]] = {}
    problems: list[str] = []
    for i, source in enumerate(sources):
        pattern = source.path
        if source.artifact is not None:
            if resolve_artifact is None:
                problems.append(f"sources[{i}].artifact {source.artifact}: the model registry is not available")
                continue
            try:
                pattern = str(resolve_artifact(source.artifact))
            except Exception as err:  # the registry's own errors say what is missing
                problems.append(f"sources[{i}].artifact {source.artifact}: {getattr(err, 'message', None) or err}")
                continue
        assert pattern is not None
        paths, is_glob = documents.expand(pattern)
        for path in paths:
            if path in found:
                continue
            try:
                st = os.stat(path)
            except OSError as err:
                if not is_glob:
                    problems.append(f"{path}: {err.strerror or err}")
                continue
            found[os.path.abspath(path)] = (i, FileStat(st.st_size, st.st_mtime_ns))
    return found, problems


def chunk_file(kb: KnowledgeBase, source: Source, path: str, data: bytes) -> tuple[list[Chunk], list[str]]:
    """Parse and chunk one file's content; per-record problems are returned, a wholly unreadable file raises."""
    spec = kb.config.spec
    fmt = documents.format_of(path, source.format)
    parsed = documents.parse(data, fmt)
    static = dict(source.metadata or {})
    owner_field = kb.config.owner_field
    problems = [f"{path}: {p}" for p in parsed.problems]
    if fmt not in STRUCTURED:
        owner = static.pop(owner_field, None) if owner_field else None
        chunks = chunk_sections(parsed.sections, size=spec.chunking.chunkSize, overlap=spec.chunking.chunkOverlap,
                                split_on_headings=spec.chunking.splitOnHeadings,
                                count_tokens=kb.embedder.count_tokens, metadata=static,
                                owner=None if owner is None else str(owner))
        return chunks, problems
    owned = owner_field is not None and (source.visibility or "Owner") == "Owner"
    chunks = []
    for record in parsed.records:
        owner = record.fields.get(owner_field) if owner_field else None
        if owned and (owner is None or isinstance(owner, dict | list) or str(owner) == ""):
            what = "line" if fmt == "jsonl" else "row"
            problems.append(f"{path}: {what} {record.number}: no {owner_field}: not indexed (owner-scoped source)")
            continue
        metadata: dict[str, Any] = dict(static)
        for name in spec.metadataFields:
            value = record.fields.get(name)
            if value is not None and not isinstance(value, dict | list):
                metadata[name] = value
        text = documents.render_record(record.fields, source.textFields)
        if not text.strip():
            problems.append(f"{path}: record {record.number}: no text to index")
            continue
        chunks.append(record_chunk(record.number, text, metadata, str(owner) if owned else None))
    return chunks, problems


def sync_knowledge_base(kb: KnowledgeBase) -> SyncReport:
    with kb.sync_lock:
        return _sync(kb)


def _sync(kb: KnowledgeBase) -> SyncReport:
    report = SyncReport()
    sources = kb.config.spec.sources
    present, report.problems = discover(sources, kb.resolve_artifact)
    digest = config_digest(kb)
    with kb.connect() as db:
        stored = {p: StoredFile(h, s, m) for p, h, s, m in db.execute("select path, hash, size, mtime_ns from files")}
        row = db.execute("select value from meta where key = 'config'").fetchone()
    reread_all = row is None or row[0] != digest
    to_read, removed = plan_files(stored, {p: st for p, (_, st) in present.items()}, reread_all=reread_all)

    # Read, hash, parse and chunk what changed; embed only the chunks that are new. No transaction is open yet.
    changed: dict[str, tuple[str, FileStat, list[Chunk]]] = {}
    restat: dict[str, tuple[str, FileStat]] = {}
    for path in to_read:
        index, stat = present[path]
        try:
            data = documents.read_file(path)
            file_hash = hashlib.sha256(data).hexdigest()
            if not reread_all and path in stored and stored[path].hash == file_hash:
                restat[path] = (file_hash, stat)  # touched, not changed
                continue
            chunks, problems = chunk_file(kb, sources[index], path, data)
        except UnreadableError as err:
            report.problems.append(f"{path}: {err}")
            continue
        report.problems += problems
        changed[path] = (file_hash, stat, chunks)

    with kb.connect() as db:
        old_by_path = {path: db.execute("select id, hash from chunks where path = ? order by id", (path,)).fetchall()
                       for path in changed}
    plans = {path: plan_chunks(old_by_path[path], chunks) for path, (_, _, chunks) in changed.items()}
    texts = [changed[p][2][i].text for p, (_, embed, _) in plans.items() for i in embed]
    vectors = kb.embedder.embed(texts) if texts else np.zeros((0, kb.embedder.dim), dtype=np.float32)
    report.embedded = len(texts)

    # One transaction: the store moves from one consistent state to the next, or not at all.
    added_ids: list[int] = []
    removed_ids: list[int] = []
    row_vector = iter(vectors)
    with kb.connect() as db:
        for path, (keep, embed, drop) in plans.items():
            file_hash, stat, chunks = changed[path]
            for i, chunk_id in keep.items():
                db.execute("update chunks set position = ? where id = ?", (json.dumps(chunks[i].position), chunk_id))
            for i in embed:
                c = chunks[i]
                cur = db.execute(
                    "insert into chunks (path, hash, position, text, metadata, owner, embedding) "
                    "values (?, ?, ?, ?, ?, ?, ?)",
                    (path, c.content_hash, json.dumps(c.position), c.text, json.dumps(c.metadata), c.owner,
                     np.asarray(next(row_vector), dtype=np.float32).tobytes()))
                added_ids.append(int(cur.lastrowid or 0))
            if drop:
                db.executemany("delete from chunks where id = ?", [(d,) for d in drop])
            removed_ids += drop
            report.kept += len(keep)
            db.execute("insert or replace into files (path, hash, size, mtime_ns, chunks) values (?, ?, ?, ?, ?)",
                       (path, file_hash, stat.size, stat.mtime_ns, len(chunks)))
        for path, (_hash, stat) in restat.items():
            db.execute("update files set size = ?, mtime_ns = ? where path = ?", (stat.size, stat.mtime_ns, path))
        for path in removed:
            removed_ids += [r[0] for r in db.execute("select id from chunks where path = ?", (path,))]
            db.execute("delete from chunks where path = ?", (path,))
            db.execute("delete from files where path = ?", (path,))
        db.execute("insert or replace into meta values ('config', ?)", (digest,))
        generation = kb.generation(db)
        if added_ids or removed_ids or changed or removed:
            generation += 1
            db.execute("update meta set value = ? where key = 'generation'", (str(generation),))
        report.documents = db.execute("select count(*) from files").fetchone()[0]
        report.chunks = db.execute("select count(*) from chunks").fetchone()[0]

    report.removed = len(removed_ids)
    report.files_changed = sorted(changed)
    report.files_removed = removed
    report.generation = generation
    # The index follows the committed store. Searches hold the same lock, so none sees a half-updated index.
    with kb.with_index():
        index = kb.index
        if removed_ids:
            index.remove(np.array(removed_ids, dtype=np.int64))
        if added_ids:
            index.add(np.array(added_ids, dtype=np.int64), vectors)
        report.index_bytes = kb.index_bytes = index.save(kb.index_path, generation)
        kb.refresh()
    if changed or removed:
        log.info("%s: synced: %d files changed, %d removed; %d chunks embedded, %d kept, %d removed",
                 kb.qualified_name, len(changed), len(removed), report.embedded, report.kept, report.removed)
    return report
