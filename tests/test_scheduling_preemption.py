"""Preemption (withinClusterQueue, reclaimWithinCohort, borrowWithinCohort) and flavor fungibility."""

from __future__ import annotations

from kaip.scheduling.model import (
    ClusterQueue,
    Flavor,
    FlavorQuotas,
    Fungibility,
    PodSet,
    Preemption,
    Quota,
    ResourceGroup,
    Taint,
    Toleration,
    Workload,
)
from kaip.scheduling.scheduler import Scheduler

F = "default"


def cpu(n: float) -> int:
    return int(n * 1000)


def cq(name: str, nominal: float, cohort: str | None = None, **kw: object) -> ClusterQueue:
    return ClusterQueue(name, cohort, (ResourceGroup(("cpu",), (FlavorQuotas(F, {"cpu": Quota(cpu(nominal))}),)),),
                        **kw)  # type: ignore[arg-type]


def wl(name: str, queue: str, n: float, prio: int = 0, ts: float = 0.0) -> Workload:
    return Workload(f"ns/{name}", queue, (PodSet("main", 1, {"cpu": cpu(n)}),), prio, ts, uid=name)


def names(result: object) -> list[str]:
    return sorted(a.workload.key.split("/")[1] for a in result.admitted)  # type: ignore[attr-defined]


def preempted(result: object) -> list[tuple[str, str]]:
    return sorted((p.target.key.split("/")[1], p.reason) for p in result.preempted)  # type: ignore[attr-defined]


def test_lower_priority_is_preempted_within_the_cluster_queue() -> None:
    s = Scheduler([cq("a", 2, preemption=Preemption(within_cluster_queue="LowerPriority"))], flavors=[Flavor(F)])
    s.add(wl("low", "a", 1, prio=0, ts=0))
    s.add(wl("mid", "a", 1, prio=5, ts=1))
    s.run()
    s.add(wl("high", "a", 1, prio=10, ts=2))
    result = s.run()
    assert preempted(result) == [("low", "InClusterQueue")]  # the minimal set: one, the lowest priority
    assert names(result) == []  # the preemptor waits for the eviction to finish
    s.requeue(next(w for w in s.admitted["a"].values() if w.key == "ns/low"), timestamp=3)
    assert names(s.run()) == ["high"]


def test_equal_priority_is_not_preempted_unless_newer_with_lower_or_newer_equal() -> None:
    s = Scheduler([cq("a", 1, preemption=Preemption(within_cluster_queue="LowerPriority"))], flavors=[Flavor(F)])
    s.add(wl("first", "a", 1, prio=5, ts=0))
    s.run()
    s.add(wl("second", "a", 1, prio=5, ts=1))
    assert s.run().preempted == []

    s = Scheduler([cq("a", 1, preemption=Preemption(within_cluster_queue="LowerOrNewerEqualPriority"))],
                  flavors=[Flavor(F)])
    s.add(wl("newer", "a", 1, prio=5, ts=5))
    s.run()
    s.add(wl("older", "a", 1, prio=5, ts=1))
    assert preempted(s.run()) == [("newer", "InClusterQueue")]


def test_minimisation_keeps_workloads_that_need_not_go() -> None:
    s = Scheduler([cq("a", 4, preemption=Preemption(within_cluster_queue="LowerPriority"))], flavors=[Flavor(F)])
    # Admitted in this order, so "c" is the most recently admitted: tried first, but too small alone.
    for i, (name, size) in enumerate((("a", 2), ("b", 1), ("c", 1))):
        w = wl(name, "a", size, prio=0, ts=i)
        s.add(w)
        s.run()
        w.reserved_at = i
    s.add(wl("high", "a", 2, prio=10, ts=9))
    # Greedy removal takes c (1) then b (1): enough; "a" (2) stays.
    assert preempted(s.run()) == [("b", "InClusterQueue"), ("c", "InClusterQueue")]


def test_reclaim_within_cohort_any_takes_back_borrowed_quota_whatever_its_priority() -> None:
    s = Scheduler([cq("a", 1, "co"), cq("b", 1, "co", preemption=Preemption(reclaim_within_cohort="Any"))],
                  flavors=[Flavor(F)])
    s.add(wl("borrower", "a", 2, prio=100))
    s.run()
    s.add(wl("owner", "b", 1, prio=0, ts=1))
    assert preempted(s.run()) == [("borrower", "InCohortReclamation")]


def test_reclaim_within_cohort_lower_priority_spares_higher_priority_borrowers() -> None:
    queues = [cq("a", 1, "co"), cq("b", 1, "co", preemption=Preemption(reclaim_within_cohort="LowerPriority"))]
    s = Scheduler(queues, flavors=[Flavor(F)])
    s.add(wl("borrower", "a", 2, prio=100))
    s.run()
    s.add(wl("owner", "b", 1, prio=0, ts=1))
    assert s.run().preempted == []

    s = Scheduler(queues, flavors=[Flavor(F)])
    s.add(wl("borrower", "a", 2, prio=0))
    s.run()
    s.add(wl("owner", "b", 1, prio=100, ts=1))
    assert preempted(s.run()) == [("borrower", "InCohortReclamation")]


def test_borrow_within_cohort_preempts_lower_priority_while_borrowing() -> None:
    policy = Preemption(reclaim_within_cohort="Any", borrow_within_cohort="LowerPriority")
    s = Scheduler([cq("a", 1, "co", preemption=policy), cq("b", 2, "co")], flavors=[Flavor(F)])
    s.add(wl("b-borrows", "b", 3, prio=0))
    s.run()
    s.add(wl("a-needs-2", "a", 2, prio=10, ts=1))  # over a's nominal: only borrowWithinCohort allows this
    assert preempted(s.run()) == [("b-borrows", "InCohortReclaimWhileBorrowing")]

    s = Scheduler([cq("a", 1, "co", preemption=Preemption(reclaim_within_cohort="Any")), cq("b", 2, "co")],
                  flavors=[Flavor(F)])
    s.add(wl("b-borrows", "b", 3, prio=0))
    s.run()
    s.add(wl("a-needs-2", "a", 2, prio=10, ts=1))
    assert s.run().preempted == []


def test_targets_overlapping_in_one_cycle_preempt_once() -> None:
    policy = Preemption(reclaim_within_cohort="Any")
    s = Scheduler([cq("a", 0, "co"), cq("b", 1, "co", preemption=policy), cq("c", 1, "co", preemption=policy)],
                  flavors=[Flavor(F)])
    s.add(wl("hog", "a", 2))
    s.run()
    s.add(wl("b1", "b", 1, ts=1))
    s.add(wl("c1", "c", 1, ts=2))
    result = s.run()
    assert preempted(result) == [("hog", "InCohortReclamation")]


def two_flavors(fungibility: Fungibility, **kw: object) -> ClusterQueue:
    return ClusterQueue("a", "co", (ResourceGroup(("cpu",), (
        FlavorQuotas("spot", {"cpu": Quota(cpu(1))}), FlavorQuotas("on-demand", {"cpu": Quota(cpu(2))}))),),
        fungibility=fungibility, **kw)  # type: ignore[arg-type]


def lender() -> ClusterQueue:
    return ClusterQueue("lender", "co", (ResourceGroup(("cpu",), (FlavorQuotas("spot", {"cpu": Quota(cpu(4))}),)),))


def flavor_of(result: object) -> str:
    return result.admitted[0].admission.pod_sets[0].flavors["cpu"]  # type: ignore[attr-defined]


def test_may_stop_search_borrows_in_the_first_flavor() -> None:
    s = Scheduler([two_flavors(Fungibility()), lender()], flavors=[Flavor("spot"), Flavor("on-demand")])
    s.add(wl("w", "a", 2))
    result = s.run()
    assert flavor_of(result) == "spot" and result.admitted[0].borrowing


def test_try_next_flavor_prefers_a_flavor_without_borrowing() -> None:
    s = Scheduler([two_flavors(Fungibility(when_can_borrow="TryNextFlavor")), lender()],
                  flavors=[Flavor("spot"), Flavor("on-demand")])
    s.add(wl("w", "a", 2))
    result = s.run()
    assert flavor_of(result) == "on-demand" and not result.admitted[0].borrowing


def test_preemption_over_borrowing_preference() -> None:
    fung = Fungibility("TryNextFlavor", "TryNextFlavor", "PreemptionOverBorrowing")
    queue = ClusterQueue("a", "co", (ResourceGroup(("cpu",), (
        FlavorQuotas("spot", {"cpu": Quota(cpu(1))}), FlavorQuotas("on-demand", {"cpu": Quota(cpu(1))}))),),
        fungibility=fung, preemption=Preemption(within_cluster_queue="LowerPriority"))
    s = Scheduler([queue, lender()], flavors=[Flavor("spot"), Flavor("on-demand")])
    low = Workload("ns/low", "a", (PodSet("main", 1, {"cpu": cpu(1)}),), 0, 0, "low")
    s.add(low)
    s.run()  # takes spot without borrowing
    low2 = Workload("ns/low2", "a", (PodSet("main", 1, {"cpu": cpu(1)}),), 0, 1, "low2")
    s.add(low2)
    assert flavor_of(s.run()) == "on-demand"  # without borrowing, rather than borrowing spot
    s.add(Workload("ns/high", "a", (PodSet("main", 1, {"cpu": cpu(1)}),), 10, 2, "high"))
    # spot could be borrowed from the lender, but the preference is to preempt within quota first:
    # in on-demand, held by low2.
    assert preempted(s.run()) == [("low2", "InClusterQueue")]


def test_flavor_taints_and_node_labels_steer_the_choice() -> None:
    queue = two_flavors(Fungibility())
    flavors = [Flavor("spot", {"kind": "spot"}, (Taint("spot", "true", "NoSchedule"),)),
               Flavor("on-demand", {"kind": "on-demand"})]
    s = Scheduler([queue], flavors=flavors)
    s.add(wl("plain", "a", 1))
    assert flavor_of(s.run()) == "on-demand"  # spot's taint is not tolerated

    s = Scheduler([queue], flavors=flavors)
    s.add(Workload("ns/tolerant", "a", (PodSet("main", 1, {"cpu": cpu(1)},
                                               tolerations=(Toleration("spot", "Equal", "true"),)),), 0, 0, "t"))
    assert flavor_of(s.run()) == "spot"

    s = Scheduler([queue], flavors=flavors)
    s.add(Workload("ns/picky", "a", (PodSet("main", 1, {"cpu": cpu(1)}, node_selector={"kind": "on-demand"}),),
                   0, 0, "p"))
    assert flavor_of(s.run()) == "on-demand"


def test_resource_not_covered_by_the_queue_never_fits() -> None:
    s = Scheduler([cq("a", 4)], flavors=[Flavor(F)])
    s.add(Workload("ns/gpu", "a", (PodSet("main", 1, {"cpu": cpu(1), "nvidia.com/gpu": cpu(1)}),), 0, 0, "g"))
    assert names(s.run()) == []
    assert "resource nvidia.com/gpu unavailable in ClusterQueue" in s.messages["ns/gpu"]
