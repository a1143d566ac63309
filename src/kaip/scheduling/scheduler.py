"""The scheduling cycle: Kueue's `schedule()` as a pure object fed descriptions of queues and workloads.

One cycle takes one head per ClusterQueue, nominates each (a flavor assignment, and preemption targets when it
needs them), orders the entries (non-borrowing before borrowing, then priority, then FIFO) and processes them
in order against usage that is updated as the cycle admits: an entry that no longer fits is retried next
cycle; an entry whose targets overlap another's in the same cycle waits. `run()` repeats cycles until no queue
has a head left to try: the result is what Kueue would converge to for the same state.

No I/O: the caller owns the truth (the store, or a simulation) and applies the decisions it gets back.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from kaip.scheduling.flavors import FIT, NO_FIT, PREEMPT, Assignment, FlavorAssigner
from kaip.scheduling.model import FR, Admission, ClusterQueue, Cohort, Flavor, Workload
from kaip.scheduling.preemption import Preemptor, Target
from kaip.scheduling.queues import ClusterQueueQueue
from kaip.scheduling.quota import Node, QuotaTree


@dataclass(frozen=True)
class Admitted:
    workload: Workload
    admission: Admission
    borrowing: bool


@dataclass(frozen=True)
class Preempted:
    target: Workload
    preemptor: Workload
    reason: str


@dataclass
class CycleResult:
    admitted: list[Admitted] = field(default_factory=list)
    preempted: list[Preempted] = field(default_factory=list)
    heads: int = 0
    progress: bool = False  # something changed: an admission, a preemption, or a head set aside

    def extend(self, other: CycleResult) -> None:
        self.admitted += other.admitted
        self.preempted += other.preempted
        self.heads += other.heads
        self.progress |= other.progress


@dataclass
class _Entry:
    workload: Workload
    assignment: Assignment
    targets: list[Target]


class Scheduler:
    def __init__(self, queues: Iterable[ClusterQueue], cohorts: Iterable[Cohort] = (),
                 flavors: Iterable[Flavor] = (), *, capacity: dict[str, int] | None = None,
                 fair_sharing: bool = False) -> None:
        self.fair_sharing = fair_sharing  # Kueue's Configuration `fairSharing`: DRS ordering and preemption
        self.cohort_weights = {c.name: c.fair_weight for c in cohorts}
        self.queues = {q.name: q for q in queues}
        self.tree = QuotaTree(self.queues.values(), cohorts, capacity)
        self.flavors = {f.name: f for f in flavors}
        self.pending = {name: ClusterQueueQueue(name, q.queueing_strategy) for name, q in self.queues.items()}
        self.admitted: dict[str, dict[str, Workload]] = {name: {} for name in self.queues}
        self.members: dict[str, set[str]] = {}
        for name in self.queues:
            self.members.setdefault(self.tree.root_name(name), set()).add(name)
        self.disabled = {name for name in self.queues if self.tree.in_cyclic_cohort(name)}
        self.assigner = FlavorAssigner(self.tree, self.flavors)
        self.assigner.fair_sharing = fair_sharing
        self.preemptor = Preemptor(self.tree, self.queues, self.admitted)
        self.messages: dict[str, str] = {}  # why each pending workload is still pending
        self._ready: set[str] = set()  # queues that may have a head to try: a cycle touches only these
        self._nominations: dict[str, tuple[int, _Entry]] = {}  # preemptors' last nomination, by tree version
        self.cpu_seconds = 0.0
        self.cycles = 0

    # ---- feeding state ------------------------------------------------------------------------------

    def add(self, wl: Workload) -> None:
        """A workload: pending if it has no admission, else holding quota in its ClusterQueue."""
        if wl.cluster_queue not in self.queues:
            raise KeyError(f"ClusterQueue {wl.cluster_queue} doesn't exist")
        if wl.admission is not None:
            self.admitted[wl.cluster_queue][wl.key] = wl
            self.tree.add(wl.cluster_queue, wl.admission.usage())
        else:
            self.pending[wl.cluster_queue].push(wl)
            self._ready.add(wl.cluster_queue)

    def finish(self, wl: Workload) -> None:
        """A workload that held quota is gone (finished, deleted): its quota frees up."""
        held = self.admitted[wl.cluster_queue].pop(wl.key, None)
        if held is not None and held.admission is not None:
            self.tree.add(wl.cluster_queue, held.admission.usage(), -1)
            self._reactivate(wl.cluster_queue)
        self.pending[wl.cluster_queue].remove(wl.key)
        self.messages.pop(wl.key, None)

    def requeue(self, wl: Workload, timestamp: float) -> Workload:
        """An evicted workload whose pods are gone: it releases quota and queues again (from `timestamp`)."""
        self.finish(wl)
        again = Workload(wl.key, wl.cluster_queue, wl.pod_sets, wl.priority, timestamp, wl.uid)
        self.pending[wl.cluster_queue].push(again)
        self._ready.add(wl.cluster_queue)
        return again

    def _reactivate(self, cq: str) -> None:
        for name in self.members.get(self.tree.root_name(cq), (cq,)):
            self.pending[name].reactivate()
            self._ready.add(name)

    # ---- scheduling ---------------------------------------------------------------------------------

    def weighted_shares(self) -> tuple[dict[str, float], dict[str, float]]:
        """Each ClusterQueue's and Cohort's weighted share (DRS / weight) with the usage as it stands: what
        upstream reports as `status.fairSharing.weightedShare` and `kueue_*_weighted_share`."""
        queues = {name: self.tree.share(node, self.queues[name].fair_weight) for name, node in self.tree.queues.items()}
        cohorts = {name: self.tree.share(node, self.cohort_weights.get(name, 1.0))
                   for name, node in self.tree.cohorts.items()}
        return queues, cohorts

    def run(self, max_cycles: int = 100_000) -> CycleResult:
        total = CycleResult()
        for _ in range(max_cycles):
            result = self.cycle()
            total.extend(result)
            if not result.progress:
                break  # only preemptors waiting for their targets, or nothing at all
        return total

    def cycle(self) -> CycleResult:
        started = time.process_time()
        result = CycleResult()
        heads: list[Workload] = []
        for name in sorted(self._ready):
            if not self.queues[name].active or name in self.disabled:
                self._ready.discard(name)
                continue
            wl = self.pending[name].pop()
            if wl is None:
                self._ready.discard(name)
            else:
                heads.append(wl)
        result.heads = len(heads)
        if heads:
            self.cycles += 1
            entries = [self._nominate(wl) for wl in heads]
            preempting: set[str] = set()
            reserved: dict[str, dict[FR, int]] = {}
            if self.fair_sharing:
                while entries:
                    entry = self._tournament(entries)
                    entries.remove(entry)
                    self._process(entry, preempting, reserved, result)
            else:
                entries.sort(key=lambda e: (e.assignment.borrowing, -e.workload.priority, e.workload.timestamp,
                                            e.workload.key))
                for entry in entries:
                    self._process(entry, preempting, reserved, result)
        self.cpu_seconds += time.process_time() - started
        return result

    def _tournament(self, entries: list[_Entry]) -> _Entry:
        """Kueue's fair-sharing iterator (pkg/scheduler/fair_sharing_iterator.go): up each cohort tree, at every
        level the child whose share, counting its nominated workload, is lowest wins; ties go to higher
        priority, then FIFO. Trees are independent, so the next entry is the best winner over all trees by the
        same order (shares recomputed after every admission, as the iterator recomputes them)."""
        by_node: dict[str, list[_Entry]] = {}
        for e in entries:
            by_node.setdefault(e.workload.cluster_queue, []).append(e)
        winners: list[tuple[float, _Entry]] = []
        roots = {self.tree.root_name(e.workload.cluster_queue) for e in entries}
        for root in roots:
            node = self.tree.cohorts.get(root) if not root.startswith("cq:") else None
            if node is None:  # a ClusterQueue without a cohort: its own entry, share 0
                e = by_node[root[3:]][0]
                winners.append((0.0, e))
                continue
            won = self._play(node, by_node)
            if won is not None:
                winners.append(won)
        return min(winners, key=lambda w: self._order(w[0], w[1]))[1]

    @staticmethod
    def _order(share: float, e: _Entry) -> tuple[float, int, float, str]:
        return share, -e.workload.priority, e.workload.timestamp, e.workload.key

    def _play(self, node: Node, by_node: dict[str, list[_Entry]]) -> tuple[float, _Entry] | None:
        """The winner of a subtree, with its share at this node's level."""
        contenders: list[tuple[float, _Entry]] = []
        for child in node.children:
            if child.is_queue:
                found = by_node.get(child.name)
                if not found:
                    continue
                e = found[0]
                contenders.append((self.tree.share(child, self.queues[child.name].fair_weight, e.assignment.usage), e))
            else:
                won = self._play(child, by_node)
                if won is None:
                    continue
                e = won[1]
                extra = self.tree.path_deltas(e.workload.cluster_queue, e.assignment.usage).get(child.name, {})
                weight = self.cohort_weights.get(child.name, 1.0)
                contenders.append((self.tree.share(child, weight, extra), e))
        if not contenders:
            return None
        return min(contenders, key=lambda c: self._order(c[0], c[1]))

    def _nominate(self, wl: Workload) -> _Entry:
        """Flavor assignment and preemption targets. A preemptor waiting for its targets is nominated every
        cycle; while nothing changed in its cohort tree its last answer still holds."""
        version = self._version(wl.cluster_queue)
        cached = self._nominations.get(wl.key)
        if cached is not None and cached[0] == version and cached[1].workload is wl:
            return cached[1]
        cq = self.queues[wl.cluster_queue]
        assignment = self.assigner.assign(wl, cq)
        targets: list[Target] = []
        if assignment.mode == PREEMPT:
            targets = (self.preemptor.fair_targets(wl, assignment) if self.fair_sharing
                       else self.preemptor.targets(wl, assignment))
        entry = _Entry(wl, assignment, targets)
        if assignment.mode == PREEMPT:
            self._nominations[wl.key] = (version, entry)
        else:
            self._nominations.pop(wl.key, None)
        return entry

    def _version(self, cq: str) -> int:
        # The machine's capacity is shared by every tree: with a capacity, any usage change counts.
        if self.tree.capacity:
            return sum(self.tree.versions.values())
        return self.tree.versions.get(self.tree.root_name(cq), 0)

    def _fits_now(self, entry: _Entry, reserved: dict[FR, int]) -> bool:
        cq = entry.workload.cluster_queue
        usage = entry.assignment.usage
        return all(q + reserved.get(fr, 0) <= self.tree.available(cq, fr) for fr, q in usage.items()) \
            and self.tree.node_fits(usage)

    def _process(self, entry: _Entry, preempting: set[str], reserved: dict[str, dict[FR, int]],
                 result: CycleResult) -> None:
        wl, a = entry.workload, entry.assignment
        queue = self.pending[wl.cluster_queue]
        root = self.tree.root_name(wl.cluster_queue)
        if a.mode == FIT:
            if not self._fits_now(entry, reserved.get(root, {})):
                self.messages[wl.key] = "Workload no longer fits after processing another workload"
                queue.retry_later(wl)
                return
            admission = Admission(wl.cluster_queue, tuple(a.pod_sets))
            queue.remove(wl.key)
            wl.admission = admission
            self.admitted[wl.cluster_queue][wl.key] = wl
            self.tree.add(wl.cluster_queue, a.usage)
            self.messages.pop(wl.key, None)
            result.admitted.append(Admitted(wl, admission, a.borrowing))
            result.progress = True
            return
        if a.mode == PREEMPT and entry.targets:
            keys = {t.workload.key for t in entry.targets}
            if keys & preempting:
                self.messages[wl.key] = "Workload skipped: its preemption targets overlap another's in this cycle"
                queue.retry_later(wl)
                return
            preempting |= keys
            # Kueue reserves a preemptor's quota in its cohort for the rest of the cycle, so that later entries
            # do not take what its preemptions free.
            cohort_reserved = reserved.setdefault(root, {})
            for fr, q in a.usage.items():
                cohort_reserved[fr] = cohort_reserved.get(fr, 0) + q
            fresh = [t for t in entry.targets if not t.workload.evicted]
            for t in fresh:
                t.workload.evicted = True
                result.preempted.append(Preempted(t.workload, wl, t.reason))
            result.progress |= bool(fresh)
            waiting = len(entry.targets)
            self.messages[wl.key] = (f"{a.message}. Pending the preemption of {waiting} workload(s)"
                                     if a.message else f"Pending the preemption of {waiting} workload(s)")
            queue.retry_later(wl)  # stays at the head: nothing in its queue overtakes it meanwhile
            return
        result.progress = True
        self.messages[wl.key] = a.message if a.mode == NO_FIT or not a.message else \
            f"{a.message}. No workloads to preempt"
        queue.set_aside(wl)
