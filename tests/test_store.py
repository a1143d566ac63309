"""The SQL store (store/store.py), on SQLite and on PostgreSQL: every test runs on both (the `store` fixture).

What a client relies on: resourceVersion orders every write, optimistic concurrency refuses stale writes,
status and spec are written separately, finalizers hold deletion, and the change log lets a watcher that
starts from a list's resourceVersion see every later change exactly once.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select

from kaip.api.core import CLUSTER_ROLE_BINDING, CONFIGMAP, NAMESPACE, POD, POD_FINALIZER, SECRET
from kaip.api.errors import ApiError
from kaip.api.kinds import KindInfo
from kaip.api.validation import validate_document
from kaip.store import Change, Store
from kaip.store.tables import changes, counters, metadata

Obj = dict[str, Any]


def create_namespace(store: Store, name: str = "default") -> Obj:
    return store.create(NAMESPACE, validate_document(NAMESPACE, {"metadata": {"name": name}}, namespace=None))


def configmap(name: str, data: dict[str, str] | None = None, namespace: str = "default", **meta: Any) -> Obj:
    doc = {"metadata": {"name": name, **meta}, "data": data or {}}
    return validate_document(CONFIGMAP, doc, namespace=namespace)


@pytest.fixture
def ns_store(store: Store) -> Store:
    """A store with the `default` namespace in it."""
    create_namespace(store)
    return store


def rv_of(obj: Obj) -> int:
    return int(obj["metadata"]["resourceVersion"])


def api_error(fn: Any, *args: Any, **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as exc:
        fn(*args, **kwargs)
    return exc.value


def summary(chs: list[Change]) -> list[tuple[str, str]]:
    return [(c.type, c.name) for c in chs]


# ---- create, get, list -----------------------------------------------------------------------------------


def test_create_sets_server_fields_and_get_returns_the_same_object(ns_store: Store) -> None:
    created = ns_store.create(CONFIGMAP, configmap("a", {"k": "v"}, labels={"app": "x"}))
    meta = created["metadata"]
    assert meta["name"] == "a" and meta["namespace"] == "default"
    assert len(meta["uid"]) == 36
    assert meta["generation"] == 1
    assert meta["creationTimestamp"].endswith("Z")
    assert rv_of(created) == ns_store.current_rv()
    assert ns_store.get(CONFIGMAP, "default", "a") == created
    assert created["data"] == {"k": "v"} and meta["labels"] == {"app": "x"}


def test_create_ignores_client_supplied_server_fields(ns_store: Store) -> None:
    doc = configmap("a", uid="mine", resourceVersion="999", generation=7, deletionTimestamp="2020-01-01T00:00:00Z")
    created = ns_store.create(CONFIGMAP, doc)
    meta = created["metadata"]
    assert meta["uid"] != "mine" and meta["generation"] == 1 and rv_of(created) != 999
    assert "deletionTimestamp" not in meta


def test_default_finalizers_are_added_on_create(ns_store: Store) -> None:
    doc = validate_document(POD, {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "command": ["x"]}]}},
                            namespace="default")
    assert ns_store.create(POD, doc)["metadata"]["finalizers"] == [POD_FINALIZER]


def test_create_twice_is_409_already_exists(ns_store: Store) -> None:
    ns_store.create(CONFIGMAP, configmap("a", {"k": "1"}))
    err = api_error(ns_store.create, CONFIGMAP, configmap("a", {"k": "2"}))
    assert (err.code, err.reason) == (409, "AlreadyExists")
    assert ns_store.get(CONFIGMAP, "default", "a")["data"] == {"k": "1"}


def test_same_name_in_other_namespace_or_kind_is_a_different_object(ns_store: Store) -> None:
    create_namespace(ns_store, "other")
    ns_store.create(CONFIGMAP, configmap("a", {"k": "1"}))
    ns_store.create(CONFIGMAP, configmap("a", {"k": "2"}, namespace="other"))
    ns_store.create(SECRET, validate_document(SECRET, {"metadata": {"name": "a"}}, namespace="default"))
    assert ns_store.get(CONFIGMAP, "other", "a")["data"] == {"k": "2"}
    assert ns_store.get(CONFIGMAP, "default", "a")["data"] == {"k": "1"}


def test_get_missing_is_404(ns_store: Store) -> None:
    err = api_error(ns_store.get, CONFIGMAP, "default", "nope")
    assert (err.code, err.reason) == (404, "NotFound")
    assert ns_store.try_get(CONFIGMAP, "default", "nope") is None


def test_create_in_a_missing_namespace_is_404_and_writes_nothing(store: Store) -> None:
    before = store.current_rv()
    err = api_error(store.create, CONFIGMAP, configmap("a", namespace="ghost"))
    assert err.code == 404 and "ghost" in err.message
    assert store.current_rv() == before
    assert store.list(CONFIGMAP)[0] == []


def test_create_in_a_terminating_namespace_is_forbidden(store: Store) -> None:
    create_namespace(store, "going")  # namespaces carry a finalizer, so delete only marks it
    _obj, removed = store.delete(NAMESPACE, None, "going")
    assert not removed
    err = api_error(store.create, CONFIGMAP, configmap("a", namespace="going"))
    assert err.code == 403


def test_list_by_namespace_set_and_everywhere(ns_store: Store) -> None:
    for ns in ("team-a", "team-b"):
        create_namespace(ns_store, ns)
    for ns, name in [("team-b", "z"), ("team-a", "y"), ("team-a", "b"), ("default", "x")]:
        ns_store.create(CONFIGMAP, configmap(name, namespace=ns))
    names = lambda items: [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in items]  # noqa: E731
    assert names(ns_store.list(CONFIGMAP, "team-a")[0]) == [("team-a", "b"), ("team-a", "y")]
    assert names(ns_store.list(CONFIGMAP, namespaces={"team-a", "default"})[0]) == [
        ("default", "x"), ("team-a", "b"), ("team-a", "y")]
    assert names(ns_store.list(CONFIGMAP, namespaces=set())[0]) == []
    assert len(ns_store.list(CONFIGMAP)[0]) == 4
    assert ns_store.count(CONFIGMAP) == 4 and ns_store.count(CONFIGMAP, "team-a") == 2
    assert [o["metadata"]["name"] for o in ns_store.list(NAMESPACE)[0]] == ["default", "team-a", "team-b"]
    assert ns_store.list(SECRET)[0] == []


# ---- resourceVersion and generation ----------------------------------------------------------------------


def test_resource_version_increases_with_every_write(ns_store: Store) -> None:
    seen = [ns_store.current_rv()]
    a = ns_store.create(CONFIGMAP, configmap("a"))
    seen.append(rv_of(a))
    seen.append(rv_of(ns_store.create(CONFIGMAP, configmap("b"))))
    a["data"] = {"k": "v"}
    seen.append(rv_of(ns_store.update(CONFIGMAP, a)))
    seen.append(rv_of(ns_store.update_status(CONFIGMAP, "default", "a", lambda s, _o: s.update(ok=True))))
    seen.append(rv_of(ns_store.delete(CONFIGMAP, "default", "b")[0]))
    assert seen == sorted(set(seen)), seen  # strictly increasing
    assert ns_store.current_rv() == seen[-1]


def test_generation_bumps_on_spec_changes_only(ns_store: Store) -> None:
    obj = ns_store.create(CONFIGMAP, configmap("a", {"k": "1"}))
    obj["metadata"]["labels"] = {"l": "1"}
    obj["metadata"]["annotations"] = {"note": "hi"}
    obj = ns_store.update(CONFIGMAP, obj)
    assert obj["metadata"]["generation"] == 1  # metadata changed, spec did not
    obj = ns_store.update_status(CONFIGMAP, "default", "a", lambda s, _o: s.update(phase="Ready"))
    assert obj["metadata"]["generation"] == 1  # status changed, spec did not
    obj["data"] = {"k": "2"}
    obj = ns_store.update(CONFIGMAP, obj)
    assert obj["metadata"]["generation"] == 2
    obj["data"]["extra"] = "x"
    assert ns_store.update(CONFIGMAP, obj)["metadata"]["generation"] == 3


def test_client_cannot_set_generation_uid_or_creation_time(ns_store: Store) -> None:
    obj = ns_store.create(CONFIGMAP, configmap("a"))
    original = dict(obj["metadata"])
    obj["metadata"].update(generation=50, uid="forged", creationTimestamp="1999-01-01T00:00:00Z")
    obj["metadata"]["labels"] = {"x": "y"}
    updated = ns_store.update(CONFIGMAP, obj)["metadata"]
    assert (updated["generation"], updated["uid"], updated["creationTimestamp"]) == (
        original["generation"], original["uid"], original["creationTimestamp"])


def test_noop_update_does_not_bump_resource_version(ns_store: Store) -> None:
    obj = ns_store.create(CONFIGMAP, configmap("a", {"k": "v"}))
    rv = ns_store.current_rv()
    same = ns_store.update(CONFIGMAP, obj)
    assert rv_of(same) == rv_of(obj)
    assert ns_store.current_rv() == rv
    assert ns_store.changes_since(rv) == []
    assert ns_store.mutate(CONFIGMAP, "default", "a", lambda o: None) == obj
    assert ns_store.current_rv() == rv


def test_update_of_a_missing_object_is_404(ns_store: Store) -> None:
    err = api_error(ns_store.update, CONFIGMAP, configmap("nope"))
    assert err.code == 404


# ---- status subresource ----------------------------------------------------------------------------------


def test_status_subresource_changes_only_status(ns_store: Store) -> None:
    obj = ns_store.create(CONFIGMAP, configmap("a", {"k": "v"}, labels={"l": "1"}))
    sneaky = dict(obj, data={"k": "changed"}, status={"phase": "Ready"})
    sneaky["metadata"] = dict(obj["metadata"], labels={"l": "changed"})
    updated = ns_store.update(CONFIGMAP, sneaky, subresource="status")
    assert updated["status"] == {"phase": "Ready"}
    assert updated["data"] == {"k": "v"}
    assert updated["metadata"]["labels"] == {"l": "1"}
    assert ns_store.get(CONFIGMAP, "default", "a") == updated


def test_main_update_keeps_the_stored_status(ns_store: Store) -> None:
    ns_store.create(CONFIGMAP, configmap("a", {"k": "v"}))
    ns_store.update_status(CONFIGMAP, "default", "a", lambda s, _o: s.update(phase="Ready"))
    obj = ns_store.get(CONFIGMAP, "default", "a")
    without_status = {k: v for k, v in obj.items() if k != "status"}
    without_status["data"] = {"k": "new"}
    updated = ns_store.update(CONFIGMAP, without_status)
    assert updated["status"] == {"phase": "Ready"} and updated["data"] == {"k": "new"}
    forged = dict(updated, status={"phase": "Forged"})
    assert ns_store.update(CONFIGMAP, forged)["status"] == {"phase": "Ready"}
    assert ns_store.get(CONFIGMAP, "default", "a")["status"] == {"phase": "Ready"}


# ---- optimistic concurrency -----------------------------------------------------------------------------


def test_stale_resource_version_is_409_and_changes_nothing(ns_store: Store) -> None:
    old = ns_store.create(CONFIGMAP, configmap("a", {"k": "1"}))
    fresh = ns_store.update(CONFIGMAP, dict(old, data={"k": "2"}))
    err = api_error(ns_store.update, CONFIGMAP, dict(old, data={"k": "3"}))
    assert (err.code, err.reason) == (409, "Conflict")
    assert ns_store.get(CONFIGMAP, "default", "a") == fresh
    # Status writes are checked the same way.
    err = api_error(ns_store.update, CONFIGMAP, dict(old, status={"x": 1}), subresource="status")
    assert err.code == 409


def test_update_without_resource_version_is_unconditional(ns_store: Store) -> None:
    obj = ns_store.create(CONFIGMAP, configmap("a", {"k": "1"}))
    ns_store.update(CONFIGMAP, dict(obj, data={"k": "2"}))
    blind = configmap("a", {"k": "3"})
    assert "resourceVersion" not in blind["metadata"]
    assert ns_store.update(CONFIGMAP, blind)["data"] == {"k": "3"}


# ---- deletion and finalizers -----------------------------------------------------------------------------


def test_delete_without_finalizers_removes_at_once(ns_store: Store) -> None:
    ns_store.create(CONFIGMAP, configmap("a"))
    obj, removed = ns_store.delete(CONFIGMAP, "default", "a")
    assert removed and obj["metadata"]["name"] == "a"
    assert ns_store.try_get(CONFIGMAP, "default", "a") is None
    assert api_error(ns_store.delete, CONFIGMAP, "default", "a").code == 404


def test_finalizers_hold_deletion_until_the_last_is_removed(ns_store: Store) -> None:
    ns_store.create(CONFIGMAP, configmap("a", finalizers=["x.dev/one", "x.dev/two"]))
    obj, removed = ns_store.delete(CONFIGMAP, "default", "a")
    assert not removed
    stamp = obj["metadata"]["deletionTimestamp"]
    assert ns_store.get(CONFIGMAP, "default", "a")["metadata"]["deletionTimestamp"] == stamp
    # Deleting again changes nothing.
    rv = ns_store.current_rv()
    assert ns_store.delete(CONFIGMAP, "default", "a") == (ns_store.get(CONFIGMAP, "default", "a"), False)
    assert ns_store.current_rv() == rv

    def drop(name: str) -> Any:
        def fn(o: Obj) -> Obj:
            o["metadata"]["finalizers"] = [f for f in o["metadata"]["finalizers"] if f != name]
            return o
        return fn

    after_one = ns_store.mutate(CONFIGMAP, "default", "a", drop("x.dev/one"))
    assert after_one["metadata"]["finalizers"] == ["x.dev/two"]
    assert after_one["metadata"]["deletionTimestamp"] == stamp
    ns_store.mutate(CONFIGMAP, "default", "a", drop("x.dev/two"))
    assert ns_store.try_get(CONFIGMAP, "default", "a") is None
    assert summary(ns_store.changes_since(rv)) == [("MODIFIED", "a"), ("DELETED", "a")]


def test_finalizers_cannot_be_added_while_deleting(ns_store: Store) -> None:
    ns_store.create(CONFIGMAP, configmap("a", finalizers=["x.dev/one"]))
    obj, _ = ns_store.delete(CONFIGMAP, "default", "a")
    obj["metadata"]["finalizers"] = ["x.dev/one", "x.dev/sneaky"]
    err = api_error(ns_store.update, CONFIGMAP, obj)
    assert err.code == 422
    assert [c.field for c in err.causes] == ["metadata.finalizers"]
    assert ns_store.get(CONFIGMAP, "default", "a")["metadata"]["finalizers"] == ["x.dev/one"]


def test_client_cannot_clear_deletion_timestamp(ns_store: Store) -> None:
    ns_store.create(CONFIGMAP, configmap("a", finalizers=["x.dev/one"]))
    obj, _ = ns_store.delete(CONFIGMAP, "default", "a")
    del obj["metadata"]["deletionTimestamp"]
    obj["metadata"]["labels"] = {"x": "y"}
    assert "deletionTimestamp" in ns_store.update(CONFIGMAP, obj)["metadata"]


def test_delete_preconditions(ns_store: Store) -> None:
    obj = ns_store.create(CONFIGMAP, configmap("a"))
    assert api_error(ns_store.delete, CONFIGMAP, "default", "a", uid="someone-else").code == 409
    assert api_error(ns_store.delete, CONFIGMAP, "default", "a", resource_version="1").code == 409
    assert ns_store.try_get(CONFIGMAP, "default", "a") is not None
    _, removed = ns_store.delete(CONFIGMAP, "default", "a", uid=obj["metadata"]["uid"],
                                 resource_version=obj["metadata"]["resourceVersion"])
    assert removed


def test_dry_run_writes_nothing(ns_store: Store) -> None:
    rv = ns_store.current_rv()
    would = ns_store.create(CONFIGMAP, configmap("a"), dry_run=True)
    assert would["metadata"]["name"] == "a"
    assert ns_store.try_get(CONFIGMAP, "default", "a") is None and ns_store.current_rv() == rv
    obj = ns_store.create(CONFIGMAP, configmap("a", {"k": "1"}))
    rv = ns_store.current_rv()
    assert ns_store.update(CONFIGMAP, dict(obj, data={"k": "2"}), dry_run=True)["data"] == {"k": "2"}
    assert ns_store.delete(CONFIGMAP, "default", "a", dry_run=True)[1]
    assert ns_store.get(CONFIGMAP, "default", "a") == obj
    assert ns_store.current_rv() == rv and ns_store.changes_since(rv) == []


def test_owner_references_are_indexed(ns_store: Store) -> None:
    owner = ns_store.create(CONFIGMAP, configmap("owner"))
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    child = ns_store.create(CONFIGMAP, configmap("child", ownerReferences=[ref]))
    assert ns_store.dependents(owner["metadata"]["uid"]) == [(CONFIGMAP.key, "default", "child")]
    child["metadata"].pop("ownerReferences")
    ns_store.update(CONFIGMAP, child)
    assert ns_store.dependents(owner["metadata"]["uid"]) == []


# ---- the change log -------------------------------------------------------------------------------------


def test_changes_since_returns_every_write_in_order(ns_store: Store) -> None:
    start = ns_store.current_rv()
    a = ns_store.create(CONFIGMAP, configmap("a"))
    ns_store.create(CONFIGMAP, configmap("b"))
    ns_store.create(SECRET, validate_document(SECRET, {"metadata": {"name": "s"}}, namespace="default"))
    ns_store.update(CONFIGMAP, dict(a, data={"k": "v"}))
    ns_store.delete(CONFIGMAP, "default", "b")
    log = ns_store.changes_since(start)
    assert summary(log) == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "s"), ("MODIFIED", "a"), ("DELETED", "b")]
    assert [c.rv for c in log] == list(range(start + 1, start + 6))
    assert all(c.rv == rv_of(c.object) for c in log)
    assert log[3].object["data"] == {"k": "v"}
    only_cm = ns_store.changes_since(start, kind_keys=[CONFIGMAP.key])
    assert summary(only_cm) == [("ADDED", "a"), ("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    assert summary(ns_store.changes_since(start, limit=2)) == [("ADDED", "a"), ("ADDED", "b")]
    assert summary(ns_store.changes_since(log[2].rv)) == [("MODIFIED", "a"), ("DELETED", "b")]


def test_list_returns_the_version_a_watch_continues_from_exactly(ns_store: Store) -> None:
    ns_store.create(CONFIGMAP, configmap("a"))
    ns_store.create(CONFIGMAP, configmap("b"))
    items, rv = ns_store.list(CONFIGMAP, "default")
    assert [o["metadata"]["name"] for o in items] == ["a", "b"]
    assert rv == ns_store.current_rv()
    ns_store.create(CONFIGMAP, configmap("c"))
    ns_store.update(CONFIGMAP, configmap("a", {"k": "v"}))
    ns_store.delete(CONFIGMAP, "default", "b")
    # Exactly the writes after the list: nothing listed is repeated, nothing later is missing.
    assert summary(ns_store.changes_since(rv, kind_keys=[CONFIGMAP.key])) == [
        ("ADDED", "c"), ("MODIFIED", "a"), ("DELETED", "b")]


def test_list_during_concurrent_writes_is_a_consistent_snapshot(ns_store: Store) -> None:
    """Whatever moment a list is taken at, its items plus the changes after its rv give the final state."""
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set() and i < 200:
            ns_store.create(CONFIGMAP, configmap(f"w{i:03d}"))
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    snapshots = []
    try:
        for _ in range(5):
            snapshots.append(ns_store.list(CONFIGMAP, "default"))
    finally:
        stop.set()
        t.join()
    final = {o["metadata"]["name"] for o in ns_store.list(CONFIGMAP, "default")[0]}
    for items, rv in snapshots:
        names = {o["metadata"]["name"] for o in items}
        assert all(rv_of(o) <= rv for o in items)
        added = {c.name for c in ns_store.changes_since(rv, kind_keys=[CONFIGMAP.key], limit=10_000)}
        assert names.isdisjoint(added)
        assert names | added == final


def test_compacted_history_is_410_gone(ns_store: Store) -> None:
    old = ns_store.current_rv()
    for name in ("a", "b", "c"):
        ns_store.create(CONFIGMAP, configmap(name))
    head = ns_store.current_rv()
    assert ns_store.compact(1) == head - 1
    err = api_error(ns_store.changes_since, old)
    assert (err.code, err.reason) == (410, "Expired")
    assert summary(ns_store.changes_since(head - 1)) == [("ADDED", "c")]
    assert ns_store.compact(5) == head - 1  # never un-compacts
    ns_store.compact(0)
    assert api_error(ns_store.changes_since, head - 1).code == 410
    assert ns_store.changes_since(head) == []
    # Compaction drops history, not objects.
    assert len(ns_store.list(CONFIGMAP)[0]) == 3


def test_listeners_hear_each_commit_after_it_is_visible(ns_store: Store) -> None:
    heard: list[tuple[int, str, bool]] = []
    ns_store.add_listener(lambda rv, kind: heard.append(
        (rv, kind, bool(ns_store.changes_since(rv - 1, limit=1)))))
    obj = ns_store.create(CONFIGMAP, configmap("a"))
    ns_store.update(CONFIGMAP, obj)  # a no-op: nothing to hear
    ns_store.delete(CONFIGMAP, "default", "a")
    assert heard == [(rv_of(obj), CONFIGMAP.key, True), (rv_of(obj) + 1, CONFIGMAP.key, True)]


# ---- races ------------------------------------------------------------------------------------------------


def race(store_a: Store, store_b: Store, rounds: int) -> None:
    """Two threads write one object from the same read: exactly one wins, the other gets 409."""
    for round_ in range(rounds):
        current = store_a.get(CONFIGMAP, "default", "a")
        barrier = threading.Barrier(2)
        results: dict[str, Any] = {}

        def write(who: str, s: Store, current: Obj = current, barrier: threading.Barrier = barrier,
                  results: dict[str, Any] = results, round_: int = round_) -> None:
            new = dict(current, data={"writer": who, "round": str(round_)})
            barrier.wait()
            try:
                results[who] = s.update(CONFIGMAP, new)
            except ApiError as err:
                results[who] = err

        threads = [threading.Thread(target=write, args=(who, s)) for who, s in (("one", store_a), ("two", store_b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [w for w, r in results.items() if isinstance(r, dict)]
        losers = [r for r in results.values() if isinstance(r, ApiError)]
        assert len(winners) == 1 and len(losers) == 1, results
        assert (losers[0].code, losers[0].reason) == (409, "Conflict")
        stored = store_a.get(CONFIGMAP, "default", "a")
        assert stored["data"] == {"writer": winners[0], "round": str(round_)}
        assert stored == results[winners[0]]
        assert rv_of(stored) == rv_of(current) + 1


def test_two_writers_with_the_same_resource_version_exactly_one_wins(ns_store: Store) -> None:
    ns_store.create(CONFIGMAP, configmap("a", {"n": "0"}))
    race(ns_store, ns_store, rounds=8)


def test_two_stores_on_one_database_race_safely(ns_store: Store) -> None:
    """Two Store objects (as two server processes would have) share no in-process lock: the database decides."""
    other = Store(ns_store.url)
    try:
        ns_store.create(CONFIGMAP, configmap("a", {"n": "0"}))
        race(ns_store, other, rounds=8)
    finally:
        other.close()


def increment(obj: Obj) -> Obj:
    obj["data"]["n"] = str(int(obj["data"]["n"]) + 1)
    return obj


def test_concurrent_mutations_lose_nothing(ns_store: Store) -> None:
    ns_store.create(CONFIGMAP, configmap("counter", {"n": "0"}))
    start = ns_store.current_rv()
    threads_n, each = 6, 15
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(each):
                ns_store.mutate(CONFIGMAP, "default", "counter", increment)
        except BaseException as err:  # recorded, asserted below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    final = ns_store.get(CONFIGMAP, "default", "counter")
    assert final["data"]["n"] == str(threads_n * each)
    assert final["metadata"]["generation"] == 1 + threads_n * each
    # The log holds every increment, each once, in order.
    log = ns_store.changes_since(start, limit=10_000)
    assert [c.object["data"]["n"] for c in log] == [str(i) for i in range(1, threads_n * each + 1)]


def test_concurrent_mutations_from_two_stores_lose_nothing(ns_store: Store) -> None:
    other = Store(ns_store.url)
    try:
        ns_store.create(CONFIGMAP, configmap("counter", {"n": "0"}))
        errors: list[BaseException] = []

        def worker(s: Store) -> None:
            try:
                for _ in range(10):
                    s.mutate(CONFIGMAP, "default", "counter", increment)
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=worker, args=((ns_store, other)[i % 2],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert ns_store.get(CONFIGMAP, "default", "counter")["data"]["n"] == "40"
    finally:
        other.close()


def test_status_writes_and_spec_writes_do_not_clobber_each_other(ns_store: Store) -> None:
    ns_store.create(CONFIGMAP, configmap("a", {"n": "0"}))

    def spec_writer() -> None:
        for _ in range(15):
            ns_store.mutate(CONFIGMAP, "default", "a", increment)

    def status_writer() -> None:
        for i in range(15):
            ns_store.update_status(CONFIGMAP, "default", "a", lambda s, _o, i=i: s.update(seen=i))

    threads = [threading.Thread(target=spec_writer), threading.Thread(target=status_writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = ns_store.get(CONFIGMAP, "default", "a")
    assert final["data"]["n"] == "15"
    assert final["status"] == {"seen": 14}


def test_a_mutate_callback_that_writes_fails_loudly_instead_of_hanging(ns_store: Store) -> None:
    ns_store.create(CONFIGMAP, configmap("a", {"n": "0"}))

    def writes(obj: Obj) -> Obj:
        ns_store.create(CONFIGMAP, configmap("b"))
        return obj

    with pytest.raises(RuntimeError):
        ns_store.mutate(CONFIGMAP, "default", "a", writes)
    assert ns_store.try_get(CONFIGMAP, "default", "b") is None
    assert ns_store.mutate(CONFIGMAP, "default", "a", increment)["data"] == {"n": "1"}  # the store still works


def test_mutate_of_a_missing_object_is_404(ns_store: Store) -> None:
    assert api_error(ns_store.mutate, CONFIGMAP, "default", "nope", increment).code == 404


# ---- schema and persistence ----------------------------------------------------------------------------


def test_alembic_migration_produces_exactly_the_declared_schema(store: Store) -> None:
    with store.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diffs == []
    with store.engine.connect() as conn:
        # The migration seeded the counters the store needs, and nothing else.
        assert conn.execute(select(changes.c.rv)).all() == []
        assert dict(conn.execute(select(counters.c.name, counters.c.value)).all()) == {"rv": 0, "compacted_rv": 0}


def test_reopening_a_store_keeps_everything(store: Store) -> None:
    create_namespace(store)
    obj = store.create(CONFIGMAP, configmap("a", {"k": "v"}))
    store.add_token("f" * 64, "alice", "default", expires_at=None)
    store.close()
    again = Store(store.url)  # runs the migrations again: a no-op on an up-to-date schema
    try:
        assert again.get(CONFIGMAP, "default", "a") == obj
        assert again.current_rv() == rv_of(obj)
        assert again.find_token("f" * 64) == ("alice", "default", None)
        assert rv_of(again.create(CONFIGMAP, configmap("b"))) == rv_of(obj) + 1
    finally:
        again.close()


def test_tokens_are_found_by_hash_and_deleted_by_user(store: Store) -> None:
    store.add_token("a" * 64, "alice", "team-a", expires_at=123.0, description="x")
    store.add_token("b" * 64, "alice", "team-a", expires_at=None)
    store.add_token("c" * 64, "bob", "", expires_at=None)
    assert store.find_token("a" * 64) == ("alice", "team-a", 123.0)
    assert store.find_token("d" * 64) is None
    assert store.delete_tokens("alice") == 2
    assert store.find_token("a" * 64) is None and store.find_token("c" * 64) is not None


def test_cluster_scoped_objects_ignore_a_namespace(store: Store) -> None:
    info: KindInfo = CLUSTER_ROLE_BINDING
    doc = validate_document(info, {"metadata": {"name": "crb"}, "roleRef": {"name": "view"},
                                   "subjects": [{"kind": "User", "name": "alice"}]}, namespace=None)
    store.create(info, doc)
    assert store.get(info, "whatever", "crb")["metadata"]["name"] == "crb"
    assert "namespace" not in store.get(info, None, "crb")["metadata"]
