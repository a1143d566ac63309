"""Classic preemption: which admitted workloads to evict so that a pending one fits, and no more than needed.

Kueue's algorithm (pkg/scheduler/preemption): candidates are the ClusterQueue's own workloads allowed by
`withinClusterQueue`, plus workloads of *borrowing* ClusterQueues in the cohort allowed by
`reclaimWithinCohort`. They are ordered (evictions already under way first, other queues before our own,
lower priority first, most recently admitted first) and removed greedily from a simulated snapshot until the
preemptor fits; then the set is minimised by putting back, newest target first, every one that is not needed.
The heuristics differ in whether the preemptor may borrow while preempting, to avoid preemption loops.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kaip.scheduling.flavors import Assignment
from kaip.scheduling.model import (
    ANY,
    FR,
    LOWER_OR_NEWER_EQUAL,
    NEVER,
    ClusterQueue,
    Workload,
)
from kaip.scheduling.quota import QuotaTree

IN_CLUSTER_QUEUE = "InClusterQueue"
IN_COHORT_RECLAMATION = "InCohortReclamation"
IN_COHORT_RECLAIM_WHILE_BORROWING = "InCohortReclaimWhileBorrowing"
IN_COHORT_FAIR_SHARING = "InCohortFairSharing"

# Kueue's fair-sharing preemption strategies (Configuration fairSharing.preemptionStrategies), default both in order.
LESS_THAN_OR_EQUAL_TO_FINAL_SHARE = "LessThanOrEqualToFinalShare"
LESS_THAN_INITIAL_SHARE = "LessThanInitialShare"
DEFAULT_FAIR_STRATEGIES = (LESS_THAN_OR_EQUAL_TO_FINAL_SHARE, LESS_THAN_INITIAL_SHARE)


@dataclass(frozen=True)
class Target:
    workload: Workload
    reason: str


def _uses(wl: Workload, frs: set[FR]) -> bool:
    return wl.admission is not None and any(fr in frs for fr in wl.admission.usage())


class Preemptor:
    def __init__(self, tree: QuotaTree, queues: dict[str, ClusterQueue],
                 admitted: dict[str, dict[str, Workload]]) -> None:
        self.tree = tree
        self.queues = queues
        self.admitted = admitted  # cluster queue -> workload key -> admitted workload
        self.cohort_members: dict[str, set[str]] = {}
        for name in queues:
            self.cohort_members.setdefault(tree.root_name(name), set()).add(name)

    def targets(self, wl: Workload, assignment: Assignment) -> list[Target]:
        cq = self.queues[wl.cluster_queue]
        frs = assignment.preempt_frs or set(assignment.usage)
        candidates = self._candidates(wl, cq, frs)
        if not candidates:
            return []
        candidates.sort(key=lambda c: (not c.evicted, c.cluster_queue == cq.name, c.priority, -c.reserved_at, c.uid))
        same_queue = [c for c in candidates if c.cluster_queue == cq.name]
        usage = assignment.usage
        if len(same_queue) == len(candidates):
            found = self._minimal(usage, cq, frs, candidates, allow_borrowing=True)
        elif cq.preemption.borrow_within_cohort != NEVER:
            threshold = wl.priority
            if cq.preemption.max_priority_threshold is not None:
                threshold = min(threshold, cq.preemption.max_priority_threshold + 1)
            found = self._minimal(usage, cq, frs, candidates, allow_borrowing=True, borrow_below=threshold)
        else:
            found = []
            if self._under_nominal(cq, frs):
                found = self._minimal(usage, cq, frs, candidates, allow_borrowing=False)
            if not found:
                found = self._minimal(usage, cq, frs, same_queue, allow_borrowing=True)
        borrowing = self._would_borrow(cq, usage, found)
        return [Target(t, IN_CLUSTER_QUEUE if t.cluster_queue == cq.name else
                       IN_COHORT_RECLAIM_WHILE_BORROWING if borrowing else IN_COHORT_RECLAMATION) for t in found]

    # ---- fair sharing -----------------------------------------------------------------------------------

    def share(self, cq: str, extra: dict[FR, int] | None = None) -> float:
        return self.tree.share(self.tree.queues[cq], self.queues[cq].fair_weight, extra)

    def fair_targets(self, wl: Workload, assignment: Assignment,
                     strategies: Iterable[str] = DEFAULT_FAIR_STRATEGIES) -> list[Target]:
        """Fair-sharing preemption (Kueue preemption.md#fair-sharing): candidates as in classic preemption
        (borrowWithinCohort is ignored), taken from the ClusterQueue with the highest share first. A workload of
        another ClusterQueue is preempted only while the preemptor's queue, counting the incoming workload, keeps
        a share at most that of the target's queue after the removal (LessThanOrEqualToFinalShare) or below it
        before the removal (LessThanInitialShare); strategies are tried in order. The set is then minimised."""
        cq = self.queues[wl.cluster_queue]
        frs = assignment.preempt_frs or set(assignment.usage)
        candidates = self._candidates(wl, cq, frs)
        if not candidates:
            return []
        candidates.sort(key=lambda c: (not c.evicted, c.priority, -c.reserved_at, c.uid))
        usage = assignment.usage
        found: list[Workload] = []
        for strategy in strategies:
            found = self._fair_greedy(wl, cq, usage, candidates, strategy)
            if found:
                break
        if not found:
            return []
        found = self._minimise(usage, cq, found, allow_borrowing=True)
        return [Target(t, IN_CLUSTER_QUEUE if t.cluster_queue == cq.name else IN_COHORT_FAIR_SHARING) for t in found]

    def _fair_greedy(self, wl: Workload, cq: ClusterQueue, usage: dict[FR, int], candidates: list[Workload],
                     strategy: str) -> list[Workload]:
        by_queue: dict[str, list[Workload]] = {}
        for cand in candidates:
            by_queue.setdefault(cand.cluster_queue, []).append(cand)
        targets: list[Workload] = []
        while not self._fits(usage, cq, allow_borrowing=True):
            live = [name for name, queue in by_queue.items() if queue]
            if not live:
                self._restore(targets)
                return []
            name = max(live, key=lambda n: (self.share(n), n == cq.name, n))
            cand = by_queue[name].pop(0)
            if name == cq.name:
                self._remove([cand])
                targets.append(cand)
                continue
            if not self.tree.borrowing(name, set(cand.admission.usage()) if cand.admission else ()):
                by_queue[name] = []  # no longer borrowing: another queue's nominal quota is never taken
                continue
            mine = self.share(cq.name, usage)
            if strategy == LESS_THAN_INITIAL_SHARE:
                if mine < self.share(name):
                    self._remove([cand])
                    targets.append(cand)
                else:
                    by_queue[name] = []  # its share is no higher than ours: none of its workloads may go
                continue
            self._remove([cand])
            if mine <= self.share(name):
                targets.append(cand)
            else:
                self._restore([cand])
                by_queue[name] = []
        self._restore(targets)
        return targets

    def _minimise(self, usage: dict[FR, int], cq: ClusterQueue, targets: list[Workload], *,
                  allow_borrowing: bool) -> list[Workload]:
        """Put back, newest target first, every workload the preemptor fits without."""
        targets = list(targets)
        self._remove(targets)
        return self._put_back(usage, cq, targets, allow_borrowing=allow_borrowing)

    def _put_back(self, usage: dict[FR, int], cq: ClusterQueue, targets: list[Workload], *,
                  allow_borrowing: bool) -> list[Workload]:
        """With `targets` removed: put back, newest first, every one the preemptor fits without; the rest are
        restored to the snapshot too and returned as the workloads to preempt."""
        i = len(targets) - 2
        while i >= 0:
            self._restore([targets[i]])
            if self._fits(usage, cq, allow_borrowing):
                targets.pop(i)
            else:
                self._remove([targets[i]])
            i -= 1
        self._restore(targets)
        return targets

    def _candidates(self, wl: Workload, cq: ClusterQueue, frs: set[FR]) -> list[Workload]:
        out: list[Workload] = []
        policy = cq.preemption.within_cluster_queue
        if policy != NEVER:
            for cand in self.admitted.get(cq.name, {}).values():
                if cand.key == wl.key or not _uses(cand, frs):
                    continue
                if cand.priority < wl.priority or (policy == LOWER_OR_NEWER_EQUAL and cand.priority == wl.priority
                                                   and wl.timestamp < cand.timestamp):
                    out.append(cand)
        reclaim = cq.preemption.reclaim_within_cohort
        if cq.cohort and reclaim != NEVER:
            root = self.tree.root_name(cq.name)
            for name in self.cohort_members.get(root, ()):
                members = self.admitted.get(name, {})
                if name == cq.name or not members:
                    continue
                if not self.tree.borrowing(name, frs):
                    continue  # reclaiming only takes back what others borrowed
                for cand in members.values():
                    if not _uses(cand, frs):
                        continue
                    if reclaim == ANY or cand.priority < wl.priority:
                        out.append(cand)
        return out

    def _under_nominal(self, cq: ClusterQueue, frs: Iterable[FR]) -> bool:
        return all(self.tree.usage(cq.name, fr) < self.tree.nominal(cq.name, fr) for fr in frs)

    def _fits(self, usage: dict[FR, int], cq: ClusterQueue, allow_borrowing: bool) -> bool:
        tree = self.tree
        for fr, q in usage.items():
            if not allow_borrowing and tree.usage(cq.name, fr) + q > tree.nominal(cq.name, fr):
                return False
            if q > tree.available(cq.name, fr):
                return False
        return tree.node_fits(usage)

    def _would_borrow(self, cq: ClusterQueue, usage: dict[FR, int], targets: list[Workload]) -> bool:
        self._remove(targets)
        try:
            return any(self.tree.usage(cq.name, fr) + q > self.tree.nominal(cq.name, fr) for fr, q in usage.items())
        finally:
            self._restore(targets)

    def _remove(self, targets: Iterable[Workload]) -> None:
        for t in targets:
            assert t.admission is not None
            self.tree.add(t.cluster_queue, t.admission.usage(), -1)

    def _restore(self, targets: Iterable[Workload]) -> None:
        for t in targets:
            assert t.admission is not None
            self.tree.add(t.cluster_queue, t.admission.usage(), 1)

    def _minimal(self, usage: dict[FR, int], cq: ClusterQueue, frs: set[FR], candidates: list[Workload], *,
                 allow_borrowing: bool, borrow_below: int | None = None) -> list[Workload]:
        targets: list[Workload] = []
        fits = False
        for cand in candidates:
            if cand.cluster_queue != cq.name and not self.tree.borrowing(cand.cluster_queue, frs):
                continue  # removing earlier targets may have brought that queue back under its quota
            if cand.cluster_queue != cq.name and borrow_below is not None and cand.priority >= borrow_below:
                allow_borrowing = False
            self._remove([cand])
            targets.append(cand)
            if self._fits(usage, cq, allow_borrowing):
                fits = True
                break
        if not fits:
            self._restore(targets)
            return []
        return self._put_back(usage, cq, targets, allow_borrowing=allow_borrowing)
