"""A request as the engine tracks it: tokens so far, how many of them are in the KV cache, and how it ended.

Pure data: the scheduler and the KV-cache manager read and update it; nothing here does I/O or touches torch."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EngineParams:
    """Sampling and stopping for one request (a superset of the runtime's `SamplingParams`)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def plain_greedy(self) -> bool:
        """Greedy with no penalties: the argmax of the raw logits, so a whole batch can share one argmax."""
        return self.greedy and self.repetition_penalty == 1.0 and not self.presence_penalty \
            and not self.frequency_penalty


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: EngineParams = field(default_factory=EngineParams)
    arrival: float = 0.0
    status: Status = Status.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache (or are being computed this step)
    num_cached_prompt_tokens: int = 0  # prefix-cache hit at the last admission
    num_preemptions: int = 0
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    block_hashes: list[int] = field(default_factory=list)  # hashes of the full blocks of all_token_ids
    lora_name: str | None = None  # the LoRA adapter it runs with (None: the base model)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED
