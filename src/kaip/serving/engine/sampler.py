"""From logits to the next token, per request: penalties, temperature, top-k, top-p, min-p, a seeded generator.

Greedy requests with no penalties (the common benchmark case) share one argmax over the batch; the rest go row by
row, which costs little next to the forward pass. Processing follows transformers' logits processors, in their
order: repetition penalty, then (OpenAI-style) presence/frequency penalties, temperature, top-k, top-p, min-p."""

from __future__ import annotations

import torch

from kaip.serving.engine.request import EngineParams


def apply_penalties(logits: torch.Tensor, history: list[int], p: EngineParams, num_output: int | None = None
                    ) -> torch.Tensor:
    """Repetition penalty over prompt and output (as transformers' RepetitionPenaltyLogitsProcessor); presence and
    frequency penalties over the output only (the last `num_output` ids of `history`), as OpenAI and vLLM do."""
    if p.repetition_penalty != 1.0 and history:
        ids = torch.tensor(sorted(set(history)), dtype=torch.long)
        scores = logits[ids]
        logits[ids] = torch.where(scores < 0, scores * p.repetition_penalty, scores / p.repetition_penalty)
    output = history if num_output is None else history[len(history) - num_output:]
    if (p.presence_penalty or p.frequency_penalty) and output:
        ids, counts = torch.tensor(output, dtype=torch.long).unique(return_counts=True)
        logits[ids] -= p.presence_penalty + p.frequency_penalty * counts.to(logits.dtype)
    return logits


def filter_logits(logits: torch.Tensor, p: EngineParams) -> torch.Tensor:
    """Scale by temperature and mask everything outside top-k / top-p / min-p with -inf."""
    logits = logits / p.temperature
    if p.top_k and 0 < p.top_k < logits.numel():
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, -1)
        drop = torch.cumsum(probs, -1) - probs >= p.top_p  # keep the smallest set reaching top_p
        drop[0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    if p.min_p > 0.0:
        probs = torch.softmax(logits, -1)
        logits = logits.masked_fill(probs < p.min_p * probs.max(), float("-inf"))
    return logits


class Sampler:
    def __init__(self) -> None:
        self._generators: dict[str, torch.Generator] = {}
        self._buffer: torch.Tensor | None = None  # float32 logits of the greedy rows, reused step to step

    def generator(self, request_id: str, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        gen = self._generators.get(request_id)
        if gen is None:
            gen = self._generators[request_id] = torch.Generator().manual_seed(seed)
        return gen

    def _float_rows(self, rows: torch.Tensor) -> torch.Tensor:
        n = rows.numel()
        if self._buffer is None or self._buffer.numel() < n:
            self._buffer = torch.empty(n, dtype=torch.float32)
        return self._buffer[:n].view(rows.shape).copy_(rows)

    def forget(self, request_id: str) -> None:
        self._generators.pop(request_id, None)

    def sample(self, logits: torch.Tensor, request_ids: list[str], params: list[EngineParams],
               histories: list[list[int]], num_outputs: list[int] | None = None) -> list[int]:
        """One token per row of `logits` ([rows, vocab]); `histories` are prompt + output ids for penalties, of
        which the last `num_outputs[i]` are output."""
        out = [0] * len(request_ids)
        fast = [i for i, p in enumerate(params) if p.plain_greedy]
        if fast:
            rows = logits if len(fast) == logits.shape[0] else logits[fast]
            if rows.dtype != torch.float32:
                # in float32: torch's argmax over bfloat16 rows is about 5x slower than the cast and argmax together.
                # Cast into a buffer kept across steps: a fresh one (32 rows of a 262k vocabulary: 33 MB, above
                # glibc's largest mmap threshold) would be page-faulted in, zero-filled, at every step.
                rows = self._float_rows(rows)
            picked = torch.argmax(rows, dim=-1).tolist()
            for i, token in zip(fast, picked, strict=True):
                out[i] = int(token)
        for i, p in enumerate(params):
            if p.plain_greedy:
                continue
            row = apply_penalties(logits[i].clone(), histories[i], p, num_outputs[i] if num_outputs else None)
            if p.greedy:
                out[i] = int(torch.argmax(row))
                continue
            row = filter_logits(row, p)
            probs = torch.softmax(row, -1)
            out[i] = int(torch.multinomial(probs, 1, generator=self.generator(request_ids[i], p.seed)))
        return out
