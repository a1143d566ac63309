"""Fair sharing: dominant resource share (DRS), the tournament ordering of heads, and fair-sharing preemption."""

from __future__ import annotations

import math

from kaip.scheduling.model import ClusterQueue, Flavor, FlavorQuotas, PodSet, Preemption, Quota, ResourceGroup, Workload
from kaip.scheduling.scheduler import Scheduler

F = "default"
RECLAIM = Preemption(reclaim_within_cohort="Any")


def cpu(n: float) -> int:
    return int(n * 1000)


def cq(name: str, nominal: float, weight: float = 1.0, **kw: object) -> ClusterQueue:
    return ClusterQueue(name, "co", (ResourceGroup(("cpu",), (FlavorQuotas(F, {"cpu": Quota(cpu(nominal))}),)),),
                        fair_weight=weight, **kw)  # type: ignore[arg-type]


def wl(name: str, queue: str, n: float, prio: int = 0, ts: float = 0.0) -> Workload:
    return Workload(f"ns/{name}", queue, (PodSet("main", 1, {"cpu": cpu(n)}),), prio, ts, uid=name)


def fill(s: Scheduler, queue: str, count: int, start: float = 0.0) -> None:
    for i in range(count):
        s.add(wl(f"{queue}{i}", queue, 1, ts=start + i))
    for item in s.run().admitted:
        item.workload.reserved_at = item.workload.timestamp  # as the store records QuotaReserved


def share(s: Scheduler, queue: str) -> float:
    return s.tree.share(s.tree.queues[queue], s.queues[queue].fair_weight)


def test_dominant_resource_share_is_borrowed_over_lendable_divided_by_weight() -> None:
    s = Scheduler([cq("a", 2), cq("b", 2, weight=2), cq("c", 2, weight=0), cq("d", 4)], flavors=[Flavor(F)],
                  fair_sharing=True)
    fill(s, "a", 4)  # borrows 2 of the cohort's 10
    assert share(s, "a") == 200
    fill(s, "b", 3, start=10)  # borrows 1 of 10, weight 2
    assert share(s, "b") == 100 / 2
    assert share(s, "d") == 0  # nothing used: not borrowing
    fill(s, "c", 1, start=20)
    assert share(s, "c") == 0  # within nominal: weight 0 does not matter
    s.add(wl("c-more", "c", 1, ts=30))
    s.add(wl("c-more2", "c", 1, ts=31))
    s.run()
    assert math.isinf(share(s, "c"))  # borrowing with weight 0: always at a disadvantage


def test_tournament_admits_the_lower_share_first_where_classic_orders_by_priority() -> None:
    def run(fair: bool) -> list[str]:
        s = Scheduler([cq("a", 0), cq("b", 0), cq("lender", 5)], flavors=[Flavor(F)], fair_sharing=fair)
        fill(s, "a", 4)  # a borrows 4 of the lender's 5
        s.add(wl("a-high", "a", 1, prio=10, ts=10))
        s.add(wl("b-low", "b", 1, prio=0, ts=11))
        return sorted(x.workload.key.split("/")[1] for x in s.run().admitted)
    assert run(fair=True) == ["b-low"]  # b has no share yet: it wins the last CPU
    assert run(fair=False) == ["a-high"]  # classic: both borrow, priority decides


def test_fair_preemption_lets_a_queue_borrow_back_to_an_equal_share() -> None:
    def setup(fair: bool) -> Scheduler:
        s = Scheduler([cq("a", 2, preemption=RECLAIM), cq("b", 2, preemption=RECLAIM), cq("c", 2)],
                      flavors=[Flavor(F)], fair_sharing=fair)
        fill(s, "a", 5)  # a borrows 3 of 6: share 500
        s.add(wl("b0", "b", 1, ts=10))
        s.run()
        s.add(wl("b-big", "b", 2, ts=20))  # b would borrow 1: share 166 with it
        return s
    fair = setup(True)
    result = fair.run()
    assert sorted((p.target.key, p.reason) for p in result.preempted) == [
        ("ns/a3", "InCohortFairSharing"), ("ns/a4", "InCohortFairSharing")]  # most recently admitted first
    for p in result.preempted:
        fair.requeue(p.target, timestamp=30)
    assert [x.workload.key for x in fair.run().admitted] == ["ns/b-big"]
    assert share(fair, "a") == share(fair, "b") == 1000 // 6
    # Classic preemption never preempts so that b can borrow (borrowWithinCohort is Never).
    assert setup(False).run().preempted == []


def test_fair_preemption_never_leaves_the_target_below_the_preemptors_share() -> None:
    s = Scheduler([cq("a", 2, preemption=RECLAIM), cq("b", 2, preemption=RECLAIM), cq("c", 2)],
                  flavors=[Flavor(F)], fair_sharing=True)
    fill(s, "a", 4)  # a borrows 2: share 333
    fill(s, "b", 2, start=10)  # b at its nominal quota: share 0
    s.add(wl("b-big", "b", 2, ts=20))  # with it b's share would be 333; a's after one preemption 166
    result = s.run()
    assert result.preempted == [] and result.admitted == []
    assert "No workloads to preempt" in s.messages["ns/b-big"]


def test_fair_preemption_takes_from_the_queue_with_the_highest_weighted_share() -> None:
    def victim(weight_a: float) -> str:
        s = Scheduler([cq("a", 2, weight=weight_a), cq("b", 2, preemption=RECLAIM), cq("c", 2)],
                      flavors=[Flavor(F)], fair_sharing=True)
        fill(s, "a", 3)
        fill(s, "c", 3, start=10)  # a and c each borrow 1
        s.add(wl("b0", "b", 1, ts=20))
        (p,) = s.run().preempted
        return p.target.cluster_queue
    assert victim(0.5) == "a"  # weight 0.5 doubles a's share
    assert victim(2.0) == "c"


def test_within_cluster_queue_preemption_still_applies_under_fair_sharing() -> None:
    s = Scheduler([cq("a", 1, preemption=Preemption(within_cluster_queue="LowerPriority"))], flavors=[Flavor(F)],
                  fair_sharing=True)
    s.add(wl("low", "a", 1, prio=0))
    s.run()
    s.add(wl("high", "a", 1, prio=5, ts=1))
    assert [(p.target.key, p.reason) for p in s.run().preempted] == [("ns/low", "InClusterQueue")]
