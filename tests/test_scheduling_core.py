"""The pure scheduler: quotas, cohorts, borrowing and lending limits, queueing strategies, ordering."""

from __future__ import annotations

import pytest

from kaip.scheduling.model import (
    ClusterQueue,
    Cohort,
    Flavor,
    FlavorQuotas,
    PodSet,
    Preemption,
    Quota,
    ResourceGroup,
    Workload,
)
from kaip.scheduling.quantity import QuantityError, format_quantity, parse_quantity
from kaip.scheduling.quota import QuotaTree
from kaip.scheduling.scheduler import Scheduler

F = "default"


def cpu(n: float) -> int:
    return int(n * 1000)


def cq(name: str, nominal: float, cohort: str | None = None, *, borrowing: float | None = None,
       lending: float | None = None, **kw: object) -> ClusterQueue:
    quota = Quota(cpu(nominal), None if borrowing is None else cpu(borrowing),
                  None if lending is None else cpu(lending))
    return ClusterQueue(name, cohort, (ResourceGroup(("cpu",), (FlavorQuotas(F, {"cpu": quota}),)),), **kw)  # type: ignore[arg-type]


def wl(name: str, queue: str, n: float, prio: int = 0, ts: float = 0.0) -> Workload:
    return Workload(f"ns/{name}", queue, (PodSet("main", 1, {"cpu": cpu(n)}),), prio, ts, uid=name)


def names(result: object) -> list[str]:
    return sorted(a.workload.key.split("/")[1] for a in result.admitted)  # type: ignore[attr-defined]


def test_quantities_parse_exactly() -> None:
    assert parse_quantity("500m") == 500
    assert parse_quantity("2") == 2000
    assert parse_quantity(3) == 3000
    assert parse_quantity("1Gi") == 2 ** 30 * 1000
    assert parse_quantity("1.5") == 1500
    assert parse_quantity("1e3") == 1_000_000
    assert parse_quantity("1n") == 1  # rounded up to a milli-unit, as requests are
    assert format_quantity(2 ** 31 * 1000, "memory") == "2Gi"
    assert format_quantity(1500) == "1500m"
    with pytest.raises(QuantityError):
        parse_quantity("ten")


def test_cluster_queue_without_cohort_admits_up_to_nominal_only() -> None:
    s = Scheduler([cq("a", 2)], flavors=[Flavor(F)])
    for i in range(3):
        s.add(wl(f"w{i}", "a", 1, ts=i))
    assert names(s.run()) == ["w0", "w1"]
    assert "insufficient unused quota for cpu in flavor default, 1 more needed" in s.messages["ns/w2"]


def test_borrowing_is_capped_by_borrowing_limit_and_cohort_unused_quota() -> None:
    s = Scheduler([cq("a", 2, "co", borrowing=1), cq("b", 4, "co")], flavors=[Flavor(F)])
    s.add(wl("big", "a", 4, ts=0))
    s.add(wl("fits", "a", 3, ts=1))
    result = s.run()
    assert names(result) == ["fits"]  # 3 = nominal 2 + borrowingLimit 1; 4 never fits
    assert result.admitted[0].borrowing
    assert "request > maximum capacity (4 > 3)" in s.messages["ns/big"]


def test_lending_limit_keeps_the_rest_for_the_owner() -> None:
    tree = QuotaTree([cq("a", 4, "co", lending=1), cq("b", 0, "co")])
    assert tree.available("b", (F, "cpu")) == cpu(1)
    assert tree.available("a", (F, "cpu")) == cpu(4)
    tree.add("b", {(F, "cpu"): cpu(1)})
    assert tree.available("b", (F, "cpu")) == 0
    assert tree.available("a", (F, "cpu")) == cpu(3)


def test_hierarchical_cohorts_share_quota_through_the_tree() -> None:
    queues = [cq("a", 1, "left"), cq("b", 1, "right")]
    cohorts = [Cohort("left", "root"), Cohort("right", "root"),
               Cohort("root", resource_groups=(ResourceGroup(("cpu",), (FlavorQuotas(F, {"cpu": Quota(cpu(2))}),)),))]
    tree = QuotaTree(queues, cohorts)
    assert tree.available("a", (F, "cpu")) == cpu(4)  # its own 1, b's 1 and the root's 2
    tree.add("b", {(F, "cpu"): cpu(3)})
    assert tree.available("a", (F, "cpu")) == cpu(1)
    tree.add("b", {(F, "cpu"): -cpu(3)})
    assert tree.available("a", (F, "cpu")) == cpu(4)


def test_a_cycle_of_cohorts_disables_its_members() -> None:
    s = Scheduler([cq("a", 2, "x")], [Cohort("x", "y"), Cohort("y", "x")], [Flavor(F)])
    s.add(wl("w", "a", 1))
    assert names(s.run()) == []


def test_strict_fifo_blocks_behind_a_head_that_does_not_fit() -> None:
    s = Scheduler([cq("a", 2, queueing_strategy="StrictFIFO")], flavors=[Flavor(F)])
    s.add(wl("running", "a", 1.5, ts=0))
    s.run()
    s.add(wl("big", "a", 1, ts=1))
    s.add(wl("small", "a", 0.5, ts=2))
    assert names(s.run()) == []


def test_best_effort_fifo_lets_newer_workloads_past_a_head_that_does_not_fit() -> None:
    s = Scheduler([cq("a", 2)], flavors=[Flavor(F)])
    s.add(wl("running", "a", 1.5, ts=0))
    s.run()
    s.add(wl("big", "a", 1, ts=1))
    s.add(wl("small", "a", 0.5, ts=2))
    assert names(s.run()) == ["small"]


def test_inadmissible_workloads_are_retried_when_quota_frees() -> None:
    s = Scheduler([cq("a", 2)], flavors=[Flavor(F)])
    first = wl("first", "a", 2, ts=0)
    s.add(first)
    s.run()
    s.add(wl("second", "a", 2, ts=1))
    assert names(s.run()) == []
    s.finish(first)
    assert names(s.run()) == ["second"]


def test_priority_orders_within_a_queue_then_fifo() -> None:
    s = Scheduler([cq("a", 1)], flavors=[Flavor(F)])
    s.add(wl("old-low", "a", 1, prio=0, ts=0))
    s.add(wl("new-high", "a", 1, prio=10, ts=5))
    s.add(wl("old-high", "a", 1, prio=10, ts=1))
    assert names(s.run()) == ["old-high"]


def test_non_borrowing_entries_go_before_borrowing_ones_in_a_cycle() -> None:
    # b's workload fits in its own quota; a's needs to borrow the same unused quota: b goes first.
    s = Scheduler([cq("a", 1, "co"), cq("b", 1, "co")], flavors=[Flavor(F)])
    s.add(wl("a-borrows", "a", 2, prio=100, ts=0))
    s.add(wl("b-own", "b", 1, prio=0, ts=1))
    assert names(s.run()) == ["b-own"]


def test_node_capacity_is_a_hard_limit_on_top_of_quota() -> None:
    s = Scheduler([cq("a", 8)], flavors=[Flavor(F)], capacity={"cpu": cpu(2)})
    s.add(wl("w1", "a", 1.5, ts=0))
    s.add(wl("w2", "a", 1, ts=1))
    s.add(wl("huge", "a", 3, ts=2))
    assert names(s.run()) == ["w1"]
    assert "request > node capacity" in s.messages["ns/huge"]
    assert "on this machine" in s.messages["ns/w2"]


def test_requeue_after_eviction_orders_by_eviction_time() -> None:
    s = Scheduler([cq("a", 1)], flavors=[Flavor(F)])
    early = wl("early", "a", 1, ts=0)
    s.add(early)
    s.run()
    s.add(wl("waiting", "a", 1, ts=1))
    s.run()
    again = s.requeue(early, timestamp=10)
    assert again.admission is None
    assert names(s.run()) == ["waiting"]


def test_reclaim_policy_never_leaves_borrowed_quota_alone() -> None:
    s = Scheduler([cq("a", 1, "co"), cq("b", 1, "co", preemption=Preemption(reclaim_within_cohort="Never"))],
                  flavors=[Flavor(F)])
    s.add(wl("borrower", "a", 2))
    s.run()
    s.add(wl("owner", "b", 1, ts=1))
    result = s.run()
    assert result.admitted == [] and result.preempted == []
