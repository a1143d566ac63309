"""Cutting documents into chunks (pure).

Prose is split on headings first, then packed into windows of at most `size` tokens (counted with the
embedder's own tokenizer, so a chunk is never silently truncated by the model), consecutive windows sharing
`overlap` tokens. Each chunk starts with its heading path, which gives the embedding the context a
paragraph alone lacks ("Gold plan > Deductible"). Structured records are one chunk each.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kaip.rag.documents import Section

TokenCounter = Callable[[Sequence[str]], list[int]]


@dataclass(frozen=True)
class Chunk:
    text: str
    position: dict[str, Any]  # {"index": i, "section": "...", "page": n} or {"index": i, "record": n}
    metadata: dict[str, Any]
    owner: str | None = None

    @property
    def content_hash(self) -> str:
        """What decides whether a chunk must be embedded again: its text (metadata and owner are not embedded,
        but a change in them rewrites the row, so they count too)."""
        raw = json.dumps([self.text, self.metadata, self.owner], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(raw.encode()).hexdigest()


_WORD = re.compile(r"\S+\s*")


def windows(counts: Sequence[int], size: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) word ranges covering all words, each at most `size` tokens (a single longer word stands
    alone), consecutive ranges sharing words worth about `overlap` tokens."""
    out: list[tuple[int, int]] = []
    n = len(counts)
    start = 0
    while start < n:
        end, used = start, 0
        while end < n and (used + counts[end] <= size or end == start):
            used += counts[end]
            end += 1
        out.append((start, end))
        if end >= n:
            break
        back, shared = end, 0
        while back > start + 1 and shared + counts[back - 1] <= overlap:
            back -= 1
            shared += counts[back]
        start = back if back > start else end
    return out


def chunk_sections(sections: Sequence[Section], *, size: int, overlap: int, split_on_headings: bool,
                   count_tokens: TokenCounter, metadata: dict[str, Any] | None = None,
                   owner: str | None = None) -> list[Chunk]:
    if not split_on_headings and len(sections) > 1:
        joined = "\n\n".join(f"{s.heading}\n{s.text}" if s.heading else s.text for s in sections)
        sections = [Section("", joined)]
    chunks: list[Chunk] = []
    for section in sections:
        words = _WORD.findall(section.text)
        if not words:
            continue
        prefix = f"{section.heading}\n" if section.heading else ""
        budget = max(1, size - (count_tokens([section.heading])[0] if section.heading else 0))
        counts = count_tokens([w.strip() for w in words])
        for start, end in windows(counts, budget, min(overlap, budget - 1)):
            position: dict[str, Any] = {"index": len(chunks)}
            if section.heading:
                position["section"] = section.heading
            if section.page is not None:
                position["page"] = section.page
            body = "".join(words[start:end]).strip()
            chunks.append(Chunk(prefix + body, position, dict(metadata or {}), owner))
    return chunks


def record_chunk(number: int, text: str, metadata: dict[str, Any], owner: str | None) -> Chunk:
    return Chunk(text, {"index": number - 1, "record": number}, metadata, owner)
