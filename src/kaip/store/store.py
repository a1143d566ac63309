"""The resource store.

Every write is one SQL transaction that bumps a single counter row, writes the object and appends
the change to the log with the counter's new value as its resourceVersion. The counter row is
locked by the update until commit, so writes commit in resourceVersion order on both SQLite and
PostgreSQL: a watcher that reads the log by increasing version can never miss a change that commits
later with a smaller version. That is what makes list-then-watch exact.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, delete, event, func, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError

from kaip.api import errors
from kaip.api.kinds import KindInfo
from kaip.api.validation import spec_of, validate_update
from kaip.store.tables import changes, counters, owner_refs, resources, tokens

Obj = dict[str, Any]
FOREGROUND = "foregroundDeletion"  # Kubernetes' finalizer for deletion that waits for the dependents


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Change:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    kind_key: str
    namespace: str
    name: str
    object: Obj


def _dumps(obj: Obj) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False)


def _ns(info: KindInfo, namespace: str | None) -> str:
    return (namespace or "") if info.namespaced else ""


def _configure_sqlite(engine: Engine) -> None:
    """Real transactions for reads too (a list and its resourceVersion come from one snapshot), WAL, and
    fsync on checkpoint only: a committed write survives a killed process."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A write transaction takes the write lock up front: upgrading a read snapshot to a writer fails at once
        # with "database is locked" (no busy wait) when another connection wrote in between.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("kaip_write") else "BEGIN")


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, pool_size=16, max_overflow=16)
        _configure_sqlite(engine)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_size=16, max_overflow=16, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(Path(__file__).parent / "migrations" / "alembic.ini"))
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Store:
    """Synchronous store; the HTTP layer calls it from worker threads, controllers call it directly."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.is_sqlite = url.startswith("sqlite")
        migrate(self.engine)
        # One server writes to a store (the server lock sees to it), and the database serialises writers on the
        # counter row anyway: queueing them here is cheaper than SQLite's busy retries or PostgreSQL's lock waits.
        self._write_lock = threading.Lock()
        self._in_write = threading.local()
        self._listeners: list[Callable[[int, str], None]] = []

    # ---- notification -------------------------------------------------------------------------------

    def add_listener(self, fn: Callable[[int, str], None]) -> None:
        """`fn(rv, kind_key)` is called after every commit that changed an object, from the writing thread."""
        self._listeners.append(fn)

    def _notify(self, rv: int, kind_key: str) -> None:
        for fn in list(self._listeners):
            fn(rv, kind_key)

    # ---- transactions -------------------------------------------------------------------------------

    def _write(self, fn: Callable[[Connection], tuple[Any, int]], kind_key: str = "") -> Any:
        """Run `fn(conn)` in a write transaction; `fn` returns (result, rv) with rv 0 when nothing changed."""
        if getattr(self._in_write, "active", False):
            # The write lock is held by this very thread: waiting for it would hang forever.
            raise RuntimeError("a store write was started inside another one (a mutate callback must not write)")
        with self._write_lock, self.engine.connect() as conn:
            self._in_write.active = True
            try:
                conn.execution_options(kaip_write=True)
                with conn.begin():
                    result, rv = fn(conn)
            finally:
                self._in_write.active = False
        if rv:
            self._notify(rv, kind_key)
        return result

    @staticmethod
    def _next_rv(conn: Connection) -> int:
        return conn.execute(
            update(counters).where(counters.c.name == "rv").values(value=counters.c.value + 1)
            .returning(counters.c.value)).scalar_one()

    @staticmethod
    def _log(conn: Connection, rv: int, type_: str, info: KindInfo, obj: Obj) -> None:
        meta = obj["metadata"]
        conn.execute(insert(changes).values(rv=rv, type=type_, kind_key=info.key,
                                            namespace=meta.get("namespace", ""), name=meta["name"],
                                            data=_dumps(obj)))

    @staticmethod
    def _index_owners(conn: Connection, info: KindInfo, obj: Obj, *, new: bool = False) -> None:
        meta = obj["metadata"]
        if not new:
            conn.execute(delete(owner_refs).where(owner_refs.c.dependent_uid == meta["uid"]))
        refs = meta.get("ownerReferences") or []
        if refs:
            conn.execute(insert(owner_refs), [
                {"owner_uid": r["uid"], "dependent_uid": meta["uid"], "kind_key": info.key,
                 "namespace": meta.get("namespace", ""), "name": meta["name"]} for r in refs])

    @staticmethod
    def _load(conn: Connection, info: KindInfo, namespace: str, name: str, *, lock: bool = False) -> Obj | None:
        """The stored object; `lock` holds its row until commit (on PostgreSQL; SQLite locks the whole database),
        so that a read-modify-write can't interleave with another writer's, even one in another process."""
        query = select(resources.c.data).where(
            resources.c.kind_key == info.key, resources.c.namespace == namespace, resources.c.name == name)
        row = conn.execute(query.with_for_update() if lock else query).first()
        return json.loads(row[0]) if row else None

    # ---- reads --------------------------------------------------------------------------------------

    def current_rv(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(counters.c.value).where(counters.c.name == "rv")).scalar_one()

    def get(self, info: KindInfo, namespace: str | None, name: str) -> Obj:
        with self.engine.connect() as conn:
            obj = self._load(conn, info, _ns(info, namespace), name)
        if obj is None:
            raise errors.not_found(info.kind, name, info.plural)
        return obj

    def try_get(self, info: KindInfo, namespace: str | None, name: str) -> Obj | None:
        try:
            return self.get(info, namespace, name)
        except errors.ApiError:
            return None

    def list(self, info: KindInfo, namespace: str | None = None, *, namespaces: Iterable[str] | None = None,
             after: tuple[str, str] | None = None, limit: int | None = None) -> tuple[list[Obj], int]:
        """Objects of a kind (in one namespace, in a set of namespaces, or everywhere) and the
        resourceVersion they were read at: a watch from that version continues exactly after them.

        `after` (namespace, name) and `limit` read one page, in (namespace, name) order."""
        query = select(resources.c.data).where(resources.c.kind_key == info.key)
        if info.namespaced and namespace:
            query = query.where(resources.c.namespace == namespace)
        elif info.namespaced and namespaces is not None:
            query = query.where(resources.c.namespace.in_(list(namespaces)))
        if after is not None:
            query = query.where(tuple_(resources.c.namespace, resources.c.name) > tuple_(*after))
        query = query.order_by(resources.c.namespace, resources.c.name)
        if limit is not None:
            query = query.limit(limit)
        with self._snapshot() as conn:
            rows = conn.execute(query).all()
            rv = conn.execute(select(counters.c.value).where(counters.c.name == "rv")).scalar_one()
        return [json.loads(r[0]) for r in rows], rv

    def _snapshot(self) -> Any:
        if self.is_sqlite:
            return self.engine.begin()
        return self.engine.connect().execution_options(isolation_level="REPEATABLE READ")

    def count(self, info: KindInfo, namespace: str | None = None) -> int:
        query = select(func.count()).select_from(resources).where(resources.c.kind_key == info.key)
        if namespace:
            query = query.where(resources.c.namespace == namespace)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def dependents(self, owner_uid: str) -> list[tuple[str, str, str]]:
        """(kind_key, namespace, name) of every object that names `owner_uid` in its ownerReferences."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(owner_refs.c.kind_key, owner_refs.c.namespace, owner_refs.c.name)
                                .where(owner_refs.c.owner_uid == owner_uid)).all()
        return [(r[0], r[1], r[2]) for r in rows]

    def owned(self, info: KindInfo, owner_uid: str) -> list[dict[str, Any]]:
        """The objects of kind `info` that name `owner_uid` in their ownerReferences (a job's pods, say)."""
        found = (self.try_get(info, ns, name) for key, ns, name in self.dependents(owner_uid) if key == info.key)
        return [obj for obj in found if obj is not None]

    def locate_uid(self, uid: str) -> tuple[str, str, str] | None:
        """(kind_key, namespace, name) of the object with this uid, if it exists."""
        with self.engine.connect() as conn:
            row = conn.execute(select(resources.c.kind_key, resources.c.namespace, resources.c.name)
                               .where(resources.c.uid == uid)).first()
        return (row[0], row[1], row[2]) if row else None

    def uid_exists(self, uid: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(resources.c.uid).where(resources.c.uid == uid)).first() is not None

    def owner_uids(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(select(owner_refs.c.owner_uid).distinct()).all()]

    # ---- the change log -----------------------------------------------------------------------------

    def compacted_rv(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(counters.c.value).where(counters.c.name == "compacted_rv")).scalar_one()

    def changes_since(self, rv: int, *, kind_keys: Iterable[str] | None = None, limit: int = 1000) -> list[Change]:
        """Changes with a resourceVersion above `rv`, oldest first; 410 Gone if the log no longer reaches back."""
        query = select(changes).where(changes.c.rv > rv)
        if kind_keys is not None:
            query = query.where(changes.c.kind_key.in_(list(kind_keys)))
        query = query.order_by(changes.c.rv).limit(limit)
        with self._snapshot() as conn:  # one snapshot: a compaction can't cut rows between the check and the read
            compacted = conn.execute(select(counters.c.value).where(counters.c.name == "compacted_rv")).scalar_one()
            if rv < compacted:
                raise errors.gone(f"too old resource version: {rv} ({compacted})")
            rows = conn.execute(query).all()
        return [Change(r.rv, r.type, r.kind_key, r.namespace, r.name, json.loads(r.data)) for r in rows]

    def compact(self, retain: int) -> int:
        """Drop all but the newest `retain` changes; watches from before the cut get 410 Gone."""
        def fn(conn: Connection) -> tuple[int, int]:
            head = conn.execute(select(counters.c.value).where(counters.c.name == "rv")).scalar_one()
            cut = head - retain
            old = conn.execute(select(counters.c.value).where(counters.c.name == "compacted_rv")).scalar_one()
            if cut <= old:
                return old, 0
            conn.execute(delete(changes).where(changes.c.rv <= cut))
            conn.execute(update(counters).where(counters.c.name == "compacted_rv").values(value=cut))
            return cut, 0
        return self._write(fn)

    # ---- writes -------------------------------------------------------------------------------------

    def create(self, info: KindInfo, obj: Obj, *, dry_run: bool = False) -> Obj:
        """Store a validated object. Sets uid, resourceVersion, generation, creationTimestamp."""
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        namespace = _ns(info, meta.get("namespace"))
        meta["uid"] = str(uuid.uuid4())
        meta["generation"] = 1
        meta["creationTimestamp"] = now_rfc3339()
        meta.pop("deletionTimestamp", None)
        meta.pop("resourceVersion", None)
        finalizers = list(meta.get("finalizers") or [])
        for f in info.default_finalizers:
            if f not in finalizers:
                finalizers.append(f)
        if finalizers:
            meta["finalizers"] = finalizers

        def fn(conn: Connection) -> tuple[Obj, int]:
            if info.namespaced:
                self._check_namespace(conn, namespace)
            if self._load(conn, info, namespace, meta["name"]) is not None:
                raise errors.already_exists(info.kind, meta["name"], info.plural)
            if dry_run:
                return obj, 0
            rv = self._next_rv(conn)
            meta["resourceVersion"] = str(rv)
            try:
                conn.execute(insert(resources).values(kind_key=info.key, namespace=namespace, name=meta["name"],
                                                      uid=meta["uid"], resource_version=rv, data=_dumps(obj)))
            except IntegrityError as err:
                raise errors.already_exists(info.kind, meta["name"], info.plural) from err
            self._index_owners(conn, info, obj, new=True)
            self._log(conn, rv, "ADDED", info, obj)
            return obj, rv

        return self._write(fn, info.key)

    def _check_namespace(self, conn: Connection, namespace: str) -> None:
        from kaip.api.core import NAMESPACE

        ns = self._load(conn, NAMESPACE, "", namespace)
        if ns is None:
            raise errors.not_found("Namespace", namespace, "namespaces")
        if ns["metadata"].get("deletionTimestamp"):
            raise errors.ApiError(403, "Forbidden", f'unable to create new content in namespace {namespace} '
                                                    "because it is being terminated")

    def update(self, info: KindInfo, obj: Obj, *, subresource: str | None = None, dry_run: bool = False,
               keep_finalizers: bool = False) -> Obj:
        """Replace an object. A resourceVersion in the request must match the stored one (else 409).

        `keep_finalizers` keeps the stored finalizers when the new object names none: a user's replace that does
        not mention finalizers must not strip the ones the server added (a pod's process would be left running).

        The main resource keeps the stored status; the `status` subresource changes only status. When the
        object is being deleted and its last finalizer goes, it is removed for good.
        """
        return self._write(lambda conn: self._update_in(conn, info, obj, subresource=subresource, dry_run=dry_run,
                                                        keep_finalizers=keep_finalizers), info.key)

    def _update_in(self, conn: Connection, info: KindInfo, obj: Obj, *, subresource: str | None = None,
                   dry_run: bool = False, keep_finalizers: bool = False) -> tuple[Obj, int]:
        """`update` inside the caller's write transaction: returns (result, rv), rv 0 when nothing changed."""
        meta_in = obj["metadata"]
        namespace = _ns(info, meta_in.get("namespace"))
        name = meta_in["name"]
        want_rv = meta_in.get("resourceVersion")
        stored = self._load(conn, info, namespace, name, lock=True)
        if stored is None:
            raise errors.not_found(info.kind, name, info.plural)
        smeta = stored["metadata"]
        if want_rv and str(want_rv) != smeta["resourceVersion"]:
            raise errors.conflict(info.kind, name, info.plural)
        if subresource == "status":
            new = copy.deepcopy(stored)
            if "status" in obj:
                new["status"] = copy.deepcopy(obj["status"])
            else:
                new.pop("status", None)
        else:
            new = copy.deepcopy(obj)
            nmeta = new["metadata"]
            for key in ("uid", "creationTimestamp", "deletionTimestamp", "generation"):
                if key in smeta:
                    nmeta[key] = smeta[key]
                else:
                    nmeta.pop(key, None)
            if info.namespaced:
                nmeta["namespace"] = namespace
            if keep_finalizers and not nmeta.get("finalizers") and smeta.get("finalizers"):
                nmeta["finalizers"] = list(smeta["finalizers"])
            if smeta.get("deletionTimestamp"):
                # While deleting, finalizers may only be removed, never added (Kubernetes refuses it too).
                added = [f for f in nmeta.get("finalizers") or [] if f not in (smeta.get("finalizers") or [])]
                if added:
                    raise errors.invalid(info.kind, name, [errors.Cause(
                        "metadata.finalizers", f"Forbidden: no new finalizers can be added if the object is being "
                        f"deleted, found new finalizers {added}", "FieldValueForbidden")])
            if not nmeta.get("finalizers"):
                nmeta.pop("finalizers", None)
            if "status" in stored:
                new["status"] = stored["status"]
            else:
                new.pop("status", None)
            if info.update_checks:
                validate_update(info, stored, new)  # upstream's transition rules, for every writer
            if spec_of(new) != spec_of(stored):
                nmeta["generation"] = int(smeta.get("generation", 1)) + 1
        if new == stored:
            return stored, 0  # a no-op write does not bump resourceVersion, as Kubernetes does
        if dry_run:
            return new, 0
        rv = self._next_rv(conn)
        new["metadata"]["resourceVersion"] = str(rv)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._remove(conn, info, namespace, name, new["metadata"]["uid"])
            self._log(conn, rv, "DELETED", info, new)
            return new, rv
        self._put(conn, info, namespace, name, new, rv)
        if new["metadata"].get("ownerReferences") != smeta.get("ownerReferences"):
            self._index_owners(conn, info, new)
        self._log(conn, rv, "MODIFIED", info, new)
        return new, rv

    def mutate(self, info: KindInfo, namespace: str | None, name: str, fn: Callable[[Obj], Obj | None], *,
               subresource: str | None = None) -> Obj:
        """Read-modify-write in one transaction, the row locked from read to commit: `fn` gets a copy of the
        current object and returns the new one, or None to leave it as it is. Concurrent mutations of one object
        queue behind each other, so none is lost and none fails with a conflict. `fn` must not write to the store."""
        ns = _ns(info, namespace)

        def tx(conn: Connection) -> tuple[Obj, int]:
            current = self._load(conn, info, ns, name, lock=True)
            if current is None:
                raise errors.not_found(info.kind, name, info.plural)
            new = fn(copy.deepcopy(current))
            if new is None:
                return current, 0
            new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            return self._update_in(conn, info, new, subresource=subresource)

        return self._write(tx, info.key)

    def update_status(self, info: KindInfo, namespace: str | None, name: str,
                      fn: Callable[[dict[str, Any], Obj], None]) -> Obj:
        """Controllers' way to write status: `fn(status, obj)` edits the status dict in place."""
        def apply(obj: Obj) -> Obj:
            status = obj.setdefault("status", {})
            fn(status, obj)
            return obj
        return self.mutate(info, namespace, name, apply, subresource="status")

    def replace_status(self, info: KindInfo, namespace: str | None, name: str, status: dict[str, Any]) -> Obj:
        """Write `status` as the object's whole status (a controller's freshly computed one)."""
        def replace(current: dict[str, Any], _obj: Obj) -> None:
            current.clear()
            current.update(copy.deepcopy(status))
        return self.update_status(info, namespace, name, replace)

    def _put(self, conn: Connection, info: KindInfo, namespace: str, name: str, obj: Obj, rv: int) -> None:
        conn.execute(update(resources).where(
            resources.c.kind_key == info.key, resources.c.namespace == namespace, resources.c.name == name)
            .values(resource_version=rv, data=_dumps(obj)))

    @staticmethod
    def _remove(conn: Connection, info: KindInfo, namespace: str, name: str, uid: str) -> None:
        conn.execute(delete(resources).where(
            resources.c.kind_key == info.key, resources.c.namespace == namespace, resources.c.name == name))
        conn.execute(delete(owner_refs).where(owner_refs.c.dependent_uid == uid))

    def delete(self, info: KindInfo, namespace: str | None, name: str, *, uid: str | None = None,
               resource_version: str | None = None, dry_run: bool = False,
               foreground: bool = False) -> tuple[Obj, bool]:
        """Delete an object: gone at once without finalizers, else marked with deletionTimestamp until its
        finalizers are removed. `foreground` adds the `foregroundDeletion` finalizer, so the object stays until
        the garbage collector has deleted its dependents. Returns (object, removed)."""
        ns = _ns(info, namespace)

        def fn(conn: Connection) -> tuple[tuple[Obj, bool], int]:
            stored = self._load(conn, info, ns, name, lock=True)
            if stored is None:
                raise errors.not_found(info.kind, name, info.plural)
            smeta = stored["metadata"]
            if (uid and smeta["uid"] != uid) or (resource_version and smeta["resourceVersion"] != resource_version):
                raise errors.conflict(info.kind, name, info.plural)
            if foreground and not smeta.get("deletionTimestamp") and FOREGROUND not in (smeta.get("finalizers") or []):
                smeta["finalizers"] = [*(smeta.get("finalizers") or []), FOREGROUND]
            if smeta.get("finalizers"):
                if smeta.get("deletionTimestamp"):
                    return (stored, False), 0
                if dry_run:
                    return (stored, False), 0
                rv = self._next_rv(conn)
                smeta["deletionTimestamp"] = now_rfc3339()
                smeta["resourceVersion"] = str(rv)
                self._put(conn, info, ns, name, stored, rv)
                self._log(conn, rv, "MODIFIED", info, stored)
                return (stored, False), rv
            if dry_run:
                return (stored, True), 0
            rv = self._next_rv(conn)
            smeta["resourceVersion"] = str(rv)
            self._remove(conn, info, ns, name, smeta["uid"])
            self._log(conn, rv, "DELETED", info, stored)
            return (stored, True), rv

        return self._write(fn, info.key)

    # ---- credentials --------------------------------------------------------------------------------

    def add_token(self, token_hash: str, user: str, namespace: str, *, expires_at: float | None,
                  description: str = "") -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(tokens).values(token_hash=token_hash, user=user, namespace=namespace,
                                               created_at=time.time(), expires_at=expires_at,
                                               description=description))

    def find_token(self, token_hash: str) -> tuple[str, str, float | None] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(tokens.c.user, tokens.c.namespace, tokens.c.expires_at)
                               .where(tokens.c.token_hash == token_hash)).first()
        return (row[0], row[1], row[2]) if row else None

    def delete_tokens(self, user: str) -> int:
        with self.engine.begin() as conn:
            return conn.execute(delete(tokens).where(tokens.c.user == user)).rowcount

    def close(self) -> None:
        self.engine.dispose()
