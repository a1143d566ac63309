"""Pending workloads per ClusterQueue, as Kueue's queue manager keeps them.

Each ClusterQueue has a heap ordered by priority, then queue-order timestamp. Under BestEffortFIFO a head
that does not fit moves aside to the *inadmissible* set, so that newer workloads get their turn; under
StrictFIFO it stays at the head and blocks the queue. Either way nothing is retried until quota frees up in
the queue's cohort tree, when the inadmissible workloads there return to their heaps.
"""

from __future__ import annotations

import heapq
import itertools

from kaip.scheduling.model import STRICT_FIFO, Workload


class ClusterQueueQueue:
    def __init__(self, name: str, strategy: str) -> None:
        self.name = name
        self.strategy = strategy
        self._heap: list[tuple[int, float, int, str]] = []
        self._seq = itertools.count()
        self.pending: dict[str, Workload] = {}  # every pending workload, active or not
        self.inadmissible: set[str] = set()
        self.blocked = False  # StrictFIFO: the head did not fit

    def push(self, wl: Workload) -> None:
        self.pending[wl.key] = wl
        self.inadmissible.discard(wl.key)
        heapq.heappush(self._heap, (-wl.priority, wl.timestamp, next(self._seq), wl.key))

    def remove(self, key: str) -> None:
        self.pending.pop(key, None)
        self.inadmissible.discard(key)

    def _clean(self) -> None:
        while self._heap:
            _, ts, _, key = self._heap[0]
            wl = self.pending.get(key)
            if wl is None or key in self.inadmissible or wl.timestamp != ts:
                heapq.heappop(self._heap)
                continue
            return

    def head(self) -> Workload | None:
        if self.blocked:
            return None
        self._clean()
        return self.pending[self._heap[0][3]] if self._heap else None

    def pop(self) -> Workload | None:
        wl = self.head()
        if wl is not None:
            heapq.heappop(self._heap)
        return wl

    def set_aside(self, wl: Workload) -> None:
        """The head did not fit: StrictFIFO keeps it at the front and blocks; BestEffortFIFO moves on."""
        if self.strategy == STRICT_FIFO:
            heapq.heappush(self._heap, (-wl.priority, wl.timestamp, next(self._seq), wl.key))
            self.blocked = True
        else:
            self.inadmissible.add(wl.key)

    def retry_later(self, wl: Workload) -> None:
        """Back to the heap for the next cycle (state changed under it within this cycle)."""
        heapq.heappush(self._heap, (-wl.priority, wl.timestamp, next(self._seq), wl.key))

    def reactivate(self) -> None:
        self.blocked = False
        if self.inadmissible:
            keys, self.inadmissible = self.inadmissible, set()
            for key in keys:
                wl = self.pending.get(key)
                if wl is not None:
                    heapq.heappush(self._heap, (-wl.priority, wl.timestamp, next(self._seq), key))

    def ordered(self) -> list[Workload]:
        return sorted(self.pending.values(), key=lambda w: (-w.priority, w.timestamp, w.key))

    @property
    def active_count(self) -> int:
        return len(self.pending) - len(self.inadmissible)
