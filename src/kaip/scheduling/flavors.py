"""Flavor assignment: for each pod set and resource group, which flavor a workload gets, and at what cost.

As Kueue's flavorassigner: flavors are tried in the order the ClusterQueue lists them. A flavor where the
request fits without borrowing is taken at once. Otherwise `flavorFungibility` decides whether to stop at a
flavor that needs borrowing (`whenCanBorrow`) or preemption (`whenCanPreempt`), or to try the next one and
keep the best by `preference`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kaip.scheduling.model import (
    FR,
    MAY_STOP_SEARCH,
    NEVER,
    PREEMPTION_OVER_BORROWING,
    ClusterQueue,
    Flavor,
    PodSet,
    PodSetAssignment,
    ResourceGroup,
    Workload,
)
from kaip.scheduling.quantity import format_quantity
from kaip.scheduling.quota import QuotaTree

NO_FIT, PREEMPT, FIT = 0, 1, 2
MODE_NAMES = {NO_FIT: "NoFit", PREEMPT: "Preempt", FIT: "Fit"}


@dataclass
class Assignment:
    mode: int
    borrowing: bool = False
    pod_sets: list[PodSetAssignment] = field(default_factory=list)
    usage: dict[FR, int] = field(default_factory=dict)
    preempt_frs: set[FR] = field(default_factory=set)  # where preemption is needed to fit
    message: str = ""


def _rank(mode: int, borrow: bool, preference: str) -> int:
    if mode == FIT and not borrow:
        return 0
    if preference == PREEMPTION_OVER_BORROWING:
        return {(PREEMPT, False): 1, (FIT, True): 2}.get((mode, borrow), 3)
    return {(FIT, True): 1, (PREEMPT, False): 2}.get((mode, borrow), 3)


def flavor_matches(pod_set: PodSet, flavor: Flavor) -> str | None:
    """Why a pod set cannot use a flavor (node labels that contradict its nodeSelector, untolerated taints)."""
    for key, value in pod_set.node_selector.items():
        if key in flavor.node_labels and flavor.node_labels[key] != value:
            return f"flavor {flavor.name} doesn't match node affinity"
    for taint in flavor.taints:
        if taint.effect in ("NoSchedule", "NoExecute") and not any(t.tolerates(taint) for t in pod_set.tolerations):
            return f"untolerated taint {{{taint.key}: {taint.value}}} in flavor {flavor.name}"
    return None


class FlavorAssigner:
    def __init__(self, tree: QuotaTree, flavors: dict[str, Flavor]) -> None:
        self.tree = tree
        self.fair_sharing = False  # as upstream's canPreemptWhileBorrowing: fair sharing may preempt to borrow
        self.flavors = flavors

    def assign(self, wl: Workload, cq: ClusterQueue) -> Assignment:
        out = Assignment(mode=FIT)
        for ps in wl.pod_sets:
            total = ps.total()
            flavors: dict[str, str] = {}
            covered: set[str] = set()
            for rg in cq.resource_groups:
                requests = {r: total[r] for r in rg.covered if r in total}
                covered.update(rg.covered)
                if not requests:
                    continue
                choice, reasons = self._choose(ps, requests, rg, cq, out.usage)
                if choice is None:
                    return Assignment(mode=NO_FIT, message=f"couldn't assign flavors to pod set {ps.name}: "
                                                            + ", ".join(reasons))
                name, mode, borrow, preempt_frs = choice
                for r, q in requests.items():
                    flavors[r] = name
                    out.usage[(name, r)] = out.usage.get((name, r), 0) + q
                out.mode = min(out.mode, mode)
                out.borrowing |= borrow
                out.preempt_frs |= preempt_frs
                if mode == PREEMPT:
                    out.message = f"couldn't assign flavors to pod set {ps.name}: " + ", ".join(reasons)
            missing = sorted(set(total) - covered)
            if missing:
                return Assignment(mode=NO_FIT, message=f"couldn't assign flavors to pod set {ps.name}: resource "
                                                        f"{missing[0]} unavailable in ClusterQueue")
            out.pod_sets.append(PodSetAssignment(ps.name, flavors, {r: total[r] for r in flavors}, ps.count))
        return out

    def _choose(self, ps: PodSet, requests: dict[str, int], rg: ResourceGroup, cq: ClusterQueue,
                assigned: dict[FR, int]) -> tuple[tuple[str, int, bool, set[FR]] | None, list[str]]:
        reasons: list[str] = []
        best: tuple[str, int, bool, set[FR]] | None = None
        best_rank = 99
        fung = cq.fungibility
        for fq in rg.flavors:
            flavor = self.flavors.get(fq.name)
            if flavor is None:
                reasons.append(f"flavor {fq.name} not found")
                continue
            if why := flavor_matches(ps, flavor):
                reasons.append(why)
                continue
            mode, borrow, preempt_frs = FIT, False, set()
            for r, q in requests.items():
                fr = (fq.name, r)
                value = q + assigned.get(fr, 0)
                m, b, why = self._fits(cq, fr, value)
                if why:
                    reasons.append(why)
                if m == PREEMPT:
                    preempt_frs.add(fr)
                mode, borrow = min(mode, m), borrow or b
            if mode == NO_FIT:
                continue
            rank = _rank(mode, borrow, fung.preference)
            if rank < best_rank:
                best, best_rank = (fq.name, mode, borrow, preempt_frs), rank
            if mode == FIT and not borrow:
                break
            if mode == FIT and fung.when_can_borrow == MAY_STOP_SEARCH:
                break
            if mode == PREEMPT and fung.when_can_preempt == MAY_STOP_SEARCH:
                break
        return best, reasons

    def _fits(self, cq: ClusterQueue, fr: FR, value: int) -> tuple[int, bool, str]:
        flavor, resource = fr
        tree = self.tree
        ceiling = tree.potential_available(cq.name, fr)
        show = lambda v: format_quantity(v, resource)  # noqa: E731
        if value > ceiling:
            return NO_FIT, False, (f"insufficient quota for {resource} in flavor {flavor}, request > maximum "
                                   f"capacity ({show(value)} > {show(ceiling)})")
        if tree.beyond_node(resource, value):
            return NO_FIT, False, (f"insufficient capacity for {resource} on this machine, request > node "
                                   f"capacity ({show(value)} > {show(tree.capacity[resource])})")
        borrow = tree.usage(cq.name, fr) + value > tree.nominal(cq.name, fr)
        available = tree.available(cq.name, fr)
        if value <= available and not tree.node_short(resource, value):
            return FIT, borrow, ""
        if value <= available:
            why = f"insufficient free {resource} on this machine for flavor {flavor}"
        else:
            why = (f"insufficient unused quota for {resource} in flavor {flavor}, "
                   f"{show(value - max(available, 0))} more needed")
        # As upstream: preemption is worth trying for a request within nominal quota, or while borrowing
        # only when borrowWithinCohort allows it.
        if value <= tree.nominal(cq.name, fr) or cq.preemption.borrow_within_cohort != NEVER or self.fair_sharing:
            # Preempting makes room first: it borrows only if the request alone exceeds nominal quota.
            return PREEMPT, value > tree.nominal(cq.name, fr), why
        return NO_FIT, borrow, why
