"""The scheduler's view of the world: plain, immutable descriptions of queues, cohorts, flavors and workloads.

Quantities are ints of milli-units (see `quantity`). A (flavor, resource) pair, `FR`, is the unit of quota,
as in Kueue: a ClusterQueue's 8 GPUs of flavor `a100` are `{("a100", "nvidia.com/gpu"): 8000}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

FR = tuple[str, str]

NEVER = "Never"
LOWER_PRIORITY = "LowerPriority"
LOWER_OR_NEWER_EQUAL = "LowerOrNewerEqualPriority"
ANY = "Any"
STRICT_FIFO = "StrictFIFO"
BEST_EFFORT_FIFO = "BestEffortFIFO"
MAY_STOP_SEARCH = "MayStopSearch"
TRY_NEXT_FLAVOR = "TryNextFlavor"
BORROWING_OVER_PREEMPTION = "BorrowingOverPreemption"
PREEMPTION_OVER_BORROWING = "PreemptionOverBorrowing"


@dataclass(frozen=True)
class Quota:
    nominal: int
    borrowing_limit: int | None = None
    lending_limit: int | None = None


@dataclass(frozen=True)
class FlavorQuotas:
    name: str
    resources: dict[str, Quota]


@dataclass(frozen=True)
class ResourceGroup:
    covered: tuple[str, ...]
    flavors: tuple[FlavorQuotas, ...]


@dataclass(frozen=True)
class Preemption:
    within_cluster_queue: str = NEVER
    reclaim_within_cohort: str = NEVER
    borrow_within_cohort: str = NEVER
    max_priority_threshold: int | None = None


@dataclass(frozen=True)
class Fungibility:
    when_can_borrow: str = MAY_STOP_SEARCH
    when_can_preempt: str = TRY_NEXT_FLAVOR
    preference: str = BORROWING_OVER_PREEMPTION


@dataclass(frozen=True)
class ClusterQueue:
    name: str
    cohort: str | None = None
    resource_groups: tuple[ResourceGroup, ...] = ()
    queueing_strategy: str = BEST_EFFORT_FIFO
    preemption: Preemption = Preemption()
    fungibility: Fungibility = Fungibility()
    fair_weight: float = 1.0
    # False while stopped (stopPolicy Hold/HoldAndDrain) or misconfigured (a missing flavor): nothing is admitted.
    active: bool = True

    def quotas(self) -> dict[FR, Quota]:
        return {(f.name, r): q for rg in self.resource_groups for f in rg.flavors for r, q in f.resources.items()}


@dataclass(frozen=True)
class Cohort:
    name: str
    parent: str | None = None
    resource_groups: tuple[ResourceGroup, ...] = ()
    fair_weight: float = 1.0

    def quotas(self) -> dict[FR, Quota]:
        return {(f.name, r): q for rg in self.resource_groups for f in rg.flavors for r, q in f.resources.items()}


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"


@dataclass(frozen=True)
class Toleration:
    key: str | None = None
    operator: str = "Equal"
    value: str | None = None
    effect: str | None = None

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if self.key is None:
            return self.operator == "Exists"
        if self.key != taint.key:
            return False
        return self.operator == "Exists" or (self.value or "") == taint.value


@dataclass(frozen=True)
class Flavor:
    name: str
    node_labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()


@dataclass(frozen=True)
class PodSet:
    name: str
    count: int
    requests: dict[str, int]  # per pod
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()

    def total(self) -> dict[str, int]:
        return {r: q * self.count for r, q in self.requests.items() if q > 0}


@dataclass(frozen=True)
class PodSetAssignment:
    name: str
    flavors: dict[str, str]  # resource -> flavor
    usage: dict[str, int]  # resource -> total over the pod set's pods
    count: int


@dataclass(frozen=True)
class Admission:
    cluster_queue: str
    pod_sets: tuple[PodSetAssignment, ...]

    def usage(self) -> dict[FR, int]:
        return self._usage

    @cached_property
    def _usage(self) -> dict[FR, int]:
        out: dict[FR, int] = {}
        for ps in self.pod_sets:
            for r, q in ps.usage.items():
                fr = (ps.flavors[r], r)
                out[fr] = out.get(fr, 0) + q
        return out


@dataclass
class Workload:
    key: str  # "namespace/name"
    cluster_queue: str
    pod_sets: tuple[PodSet, ...]
    priority: int = 0
    timestamp: float = 0.0  # queue order: creation, or the last eviction
    uid: str = ""
    admission: Admission | None = None  # set while the workload holds quota
    reserved_at: float = 0.0  # when quota was reserved (candidates: most recently admitted go first)
    evicted: bool = False  # an eviction is under way: still holds quota until its pods are gone
