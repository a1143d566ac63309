"""Replica choice: least outstanding requests among ready replicas with room under containerConcurrency.

Pure: the gateway keeps the counts, this picks. Ties go round-robin, so equal replicas share load evenly.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(eq=False)
class Endpoint:
    pod: str
    port: int
    revision: str
    restarts: int = 0
    ready: bool = False
    inflight: int = 0
    last_probe: float = 0.0
    failures: int = field(default=0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def has_room(ep: Endpoint, limit: int) -> bool:
    return limit <= 0 or ep.inflight < limit


def pick(endpoints: list[Endpoint], limit: int, turn: int = 0, exclude: frozenset[str] = frozenset()
         ) -> Endpoint | None:
    """The ready endpoint with the fewest requests in flight and room for one more (`limit` 0 = no limit);
    `turn` rotates the start so that ties are broken round-robin; `exclude` names pods already tried."""
    best: Endpoint | None = None
    n = len(endpoints)
    for i in range(n):
        ep = endpoints[(turn + i) % n]
        if not ep.ready or ep.pod in exclude or not has_room(ep, limit):
            continue
        if best is None or ep.inflight < best.inflight:
            best = ep
    return best
