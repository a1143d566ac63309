"""Incremental detokenization that never emits half a character.

Byte-level BPE splits a multi-byte character over several tokens, and a token's text can depend on its
neighbours (leading spaces, merges), so decoding tokens one at a time is wrong. As vLLM and TGI do, decode a short
window twice — up to the last emitted token and up to the newest — and emit the difference, holding it back while
it ends in U+FFFD (an incomplete UTF-8 sequence)."""

from __future__ import annotations

from typing import Any


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: list[int] | None = None, *, skip_special_tokens: bool = True,
                 window: int = 6) -> None:
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = list(prompt_ids[-window:]) if prompt_ids else []
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=self.skip))

    def push(self, token_id: int) -> str:
        """Add one token; return the new text that is now safe to show (maybe empty)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix):]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            self.text += delta
            return delta
        return ""

    def flush(self) -> str:
        """At the end: whatever is held back (a trailing incomplete character decodes as U+FFFD)."""
        full = self._decode(self.ids[self.prefix_offset:])
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        delta = full[len(prefix):] if len(full) > len(prefix) else ""
        self.read_offset = self.prefix_offset = len(self.ids)
        self.text += delta
        return delta
