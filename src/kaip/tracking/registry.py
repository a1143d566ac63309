"""The model registry: registered models, versions, tags, aliases and (deprecated, still served) stages.

Model names are unique within a namespace; every call names the namespace it works in. Registering a
version from a run records lineage: run -> model version, with the content digest of the version's files.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError

from kaip.store.store import Store
from kaip.store.tables import (
    registry_aliases,
    registry_model_tags,
    registry_models,
    registry_version_tags,
    registry_versions,
    tracking_runs,
)
from kaip.tracking import filters
from kaip.tracking.access import Access, check_read, check_write
from kaip.tracking.db import Database, now_ms
from kaip.tracking.errors import already_exists, invalid_parameter, not_found
from kaip.tracking.filters import ATTRIBUTE, TAG
from kaip.tracking.service import _max_results, compare, parse_kv

STAGES = {"none": "None", "staging": "Staging", "production": "Production", "archived": "Archived"}
MAX_TAG_VALUE = 100_000
_ALIAS_RE = re.compile(r"^[\w\-]*$")
_RUN_SOURCE = re.compile(r"^(?:mlflow-artifacts:/+(?P<exp>\d+)/(?P<run>[0-9a-f]{32})/artifacts"
                         r"|runs:/(?P<run2>[0-9a-f]{32}))(?:/|$)")


def validate_model_name(name: Any, field: str = "name") -> str:
    if not isinstance(name, str) or not name.strip():
        raise invalid_parameter(f"Missing value for required parameter '{field}'.")
    if "/" in name or ":" in name:
        raise invalid_parameter(f"Invalid model name '{name}'. Names cannot contain '/' or ':'.")
    if name in (".", "..") or len(name) > 256:
        raise invalid_parameter(f"Invalid model name '{name}'.")
    return name


def validate_version(version: Any) -> int:
    try:
        return int(str(version))
    except ValueError:
        raise invalid_parameter(f"Parameter 'version' must be an integer, got '{version}'.") from None


def validate_alias(alias: Any) -> str:
    if not isinstance(alias, str) or not alias:
        raise invalid_parameter("Registered model alias name cannot be empty.")
    if not _ALIAS_RE.match(alias):
        raise invalid_parameter(f"Invalid alias name: '{alias}'. Names may only contain alphanumerics, underscores "
                                "(_), and dashes (-).")
    if len(alias) > 255:
        raise invalid_parameter("Registered model alias name exceeds the maximum length of 255")
    return alias


def validate_alias_not_reserved(alias: str) -> None:
    if alias.lower() == "latest":
        raise invalid_parameter("'latest' alias name (case insensitive) is reserved.")
    if re.fullmatch(r"[vV]\d+", alias):
        raise invalid_parameter(f"Version alias name '{alias}' is reserved.")


def canonical_stage(stage: Any) -> str:
    if not isinstance(stage, str) or stage.lower() not in STAGES:
        raise invalid_parameter(f"Invalid Model Version stage: {stage}. Value must be one of "
                                f"{', '.join(STAGES.values())}.")
    return STAGES[stage.lower()]


PIPELINE_RUN_TAG = "kaip.pipeline_run"  # NS/RUN, or RUN in the version's namespace
PIPELINE_TASK_TAG = "kaip.pipeline_task"  # the task id within that run


def pipeline_task_key(namespace: str, tags: dict[str, str]) -> str | None:
    """The lineage node of the pipeline task that registered a version, from its tags (the SDK sets them from a
    task's KAIP_PIPELINE_RUN / KAIP_PIPELINE_TASK). Only a run in the version's own namespace is linked, so a
    tag cannot tie a version to another team's pipeline."""
    run, task = tags.get(PIPELINE_RUN_TAG, ""), tags.get(PIPELINE_TASK_TAG, "")
    ns, _, name = run.rpartition("/")
    if not name or not task or (ns and ns != namespace):
        return None
    return f"pipelinetask:{namespace}/{name}/{task}"


class RegistryService:
    def __init__(self, store: Store) -> None:
        self.db = Database(store)
        self.store = store

    # ---- helpers ------------------------------------------------------------------------------------

    def _model(self, conn: Connection, access: Access, namespace: str, name: Any) -> Any:
        validate_model_name(name)
        missing = not_found(f"Registered Model with name={name} not found")
        check_read(access, namespace, missing)
        row = conn.execute(select(registry_models).where(registry_models.c.namespace == namespace,
                                                         registry_models.c.name == name)).first()
        if row is None:
            raise missing
        return row

    def _writable_model(self, conn: Connection, access: Access, namespace: str, name: Any) -> Any:
        row = self._model(conn, access, namespace, name)
        check_write(access, namespace, "registered models", not_found(f"Registered Model with name={name} not found"))
        return row

    def _version(self, conn: Connection, model: Any, version: Any) -> Any:
        v = validate_version(version)
        row = conn.execute(select(registry_versions).where(registry_versions.c.model_id == model.model_id,
                                                           registry_versions.c.version == v)).first()
        if row is None:
            raise not_found(f"Model Version (name={model.name}, version={version}) not found")
        return row

    def _touch(self, conn: Connection, model_id: int) -> None:
        conn.execute(update(registry_models).where(registry_models.c.model_id == model_id)
                     .values(last_updated_time=now_ms()))

    def _versions_json(self, conn: Connection, model: Any, rows: Sequence[Any]) -> list[dict[str, Any]]:
        if not rows:
            return []
        numbers = [r.version for r in rows]
        tags: dict[int, list[dict[str, str]]] = {n: [] for n in numbers}
        for v, k, val in conn.execute(select(registry_version_tags.c.version, registry_version_tags.c.key,
                                             registry_version_tags.c.value).where(
                registry_version_tags.c.model_id == model.model_id,
                registry_version_tags.c.version.in_(numbers)).order_by(registry_version_tags.c.key)):
            tags[v].append({"key": k, "value": val})
        aliases: dict[int, list[str]] = {n: [] for n in numbers}
        for alias, v in conn.execute(select(registry_aliases.c.alias, registry_aliases.c.version).where(
                registry_aliases.c.model_id == model.model_id).order_by(registry_aliases.c.alias)):
            if v in aliases:
                aliases[v].append(alias)
        out = []
        for r in rows:
            mv: dict[str, Any] = {
                "name": model.name, "version": str(r.version), "creation_timestamp": r.creation_time,
                "last_updated_timestamp": r.last_updated_time, "user_id": r.user_id, "current_stage": r.current_stage,
                "description": r.description, "source": r.source, "status": r.status,
                "status_message": r.status_message, "tags": tags[r.version], "run_link": r.run_link,
                "aliases": aliases[r.version]}
            if r.run_id:
                mv["run_id"] = r.run_id
            out.append(mv)
        return out

    def _model_json(self, conn: Connection, model: Any) -> dict[str, Any]:
        rv = registry_versions
        latest_rows = []
        for stage_latest in conn.execute(select(rv.c.current_stage, func.max(rv.c.version)).where(
                rv.c.model_id == model.model_id).group_by(rv.c.current_stage)).all():
            latest_rows.append(stage_latest[1])
        latest = conn.execute(select(rv).where(rv.c.model_id == model.model_id, rv.c.version.in_(latest_rows))
                              .order_by(rv.c.version)).all() if latest_rows else []
        tags = conn.execute(select(registry_model_tags.c.key, registry_model_tags.c.value).where(
            registry_model_tags.c.model_id == model.model_id).order_by(registry_model_tags.c.key)).all()
        aliases = conn.execute(select(registry_aliases.c.alias, registry_aliases.c.version).where(
            registry_aliases.c.model_id == model.model_id).order_by(registry_aliases.c.alias)).all()
        return {"name": model.name, "creation_timestamp": model.creation_time,
                "last_updated_timestamp": model.last_updated_time, "description": model.description,
                "latest_versions": self._versions_json(conn, model, latest),
                "tags": [{"key": k, "value": v} for k, v in tags],
                "aliases": [{"alias": a, "version": str(v)} for a, v in aliases]}

    # ---- registered models --------------------------------------------------------------------------

    def create_model(self, access: Access, namespace: str, name: Any, *, tags: Sequence[Any] = (),
                     description: Any = None) -> dict[str, Any]:
        validate_model_name(name)
        parsed = dict(parse_kv(t, f"tags[{i}]", "Tag", MAX_TAG_VALUE) for i, t in enumerate(tags))
        check_write(access, namespace, "registered models", not_found(f'namespace "{namespace}" not found'))

        def fn(conn: Connection) -> dict[str, Any]:
            exists = conn.execute(select(registry_models.c.model_id).where(
                registry_models.c.namespace == namespace, registry_models.c.name == name)).first()
            if exists is not None:
                raise already_exists(f"Registered Model (name={name}) already exists.")
            ts = now_ms()
            try:
                mid = conn.execute(insert(registry_models).values(
                    namespace=namespace, name=name, description=str(description or ""), creation_time=ts,
                    last_updated_time=ts).returning(registry_models.c.model_id)).scalar_one()
            except IntegrityError:
                raise already_exists(f"Registered Model (name={name}) already exists.") from None
            if parsed:
                conn.execute(insert(registry_model_tags), [{"model_id": mid, "key": k, "value": v}
                                                           for k, v in parsed.items()])
            return self._model_json(conn, self._model(conn, access, namespace, name))

        return self.db.write(fn)

    def get_model(self, access: Access, namespace: str, name: Any) -> dict[str, Any]:
        return self.db.read(lambda conn: self._model_json(conn, self._model(conn, access, namespace, name)))

    def rename_model(self, access: Access, namespace: str, name: Any, new_name: Any) -> dict[str, Any]:
        validate_model_name(new_name, "new_name")

        def fn(conn: Connection) -> dict[str, Any]:
            model = self._writable_model(conn, access, namespace, name)
            if conn.execute(select(registry_models.c.model_id).where(
                    registry_models.c.namespace == namespace, registry_models.c.name == new_name)).first():
                raise already_exists(f"Registered Model (name={new_name}) already exists.")
            conn.execute(update(registry_models).where(registry_models.c.model_id == model.model_id)
                         .values(name=new_name, last_updated_time=now_ms()))
            return self._model_json(conn, self._model(conn, access, namespace, new_name))

        return self.db.write(fn)

    def update_model(self, access: Access, namespace: str, name: Any, description: Any) -> dict[str, Any]:
        def fn(conn: Connection) -> dict[str, Any]:
            model = self._writable_model(conn, access, namespace, name)
            conn.execute(update(registry_models).where(registry_models.c.model_id == model.model_id)
                         .values(description=str(description or ""), last_updated_time=now_ms()))
            return self._model_json(conn, self._model(conn, access, namespace, name))

        return self.db.write(fn)

    def delete_model(self, access: Access, namespace: str, name: Any) -> None:
        def fn(conn: Connection) -> None:
            model = self._writable_model(conn, access, namespace, name)
            for table in (registry_aliases, registry_version_tags, registry_versions, registry_model_tags,
                          registry_models):
                conn.execute(delete(table).where(table.c.model_id == model.model_id))

        self.db.write(fn)

    def search_models(self, access: Access, namespace: str, *, filter_string: str | None = None,
                      max_results: Any = None, order_by: Sequence[str] | None = None,
                      page_token: str | None = None) -> dict[str, Any]:
        limit = _max_results(max_results, default=100, threshold=1000)
        offset = filters.decode_page_token(page_token)
        m = registry_models
        q = select(m).where(m.c.namespace == namespace)
        if not access.can_read(namespace):
            q = q.where(m.c.model_id < 0)
        for c in filters.parse_filter(filter_string, string_attrs={"name": "name"}, numeric_attrs={},
                                      bare_attributes=True):
            if c.type == ATTRIBUTE:
                q = q.where(self._compare(m.c.name, c))
            elif c.type == TAG:
                t = registry_model_tags
                sub, negate = self._tag_subquery(select(t.c.model_id).where(t.c.key == c.key), t.c.value, c)
                q = q.where(m.c.model_id.not_in(sub) if negate else m.c.model_id.in_(sub))
            else:
                raise invalid_parameter("registered models can be filtered by name and tags only")
        q = q.order_by(*self._order(order_by, {"name": m.c.name, "timestamp": m.c.creation_time,
                                               "creation_timestamp": m.c.creation_time,
                                               "last_updated_timestamp": m.c.last_updated_time}, m.c.name))
        q = q.offset(offset).limit(limit + 1)

        def fn(conn: Connection) -> dict[str, Any]:
            rows = conn.execute(q).all()
            out: dict[str, Any] = {"registered_models": [self._model_json(conn, r) for r in rows[:limit]]}
            if len(rows) > limit:
                out["next_page_token"] = filters.encode_page_token(offset + limit)
            return out

        return self.db.read(fn)

    def _compare(self, col: Any, c: filters.Comparison) -> Any:
        return compare(self.db, col, c)

    def _tag_subquery(self, sub: Any, value: Any, c: filters.Comparison) -> tuple[Any, bool]:
        """(subquery, negate). As MLflow's registry does, `tags.k != 'v'` also matches objects without the tag
        (the client adds ``tags.`mlflow.prompt.is_prompt` != 'true'`` to every search to leave prompts out)."""
        if c.op == "IS NULL":
            return sub, True
        if c.op == "IS NOT NULL":
            return sub, False
        if c.op == "!=":
            return sub.where(value == c.value), True
        return sub.where(self._compare(value, c)), False

    @staticmethod
    def _order(order_by: Sequence[str] | None, columns: dict[str, Any], default: Any) -> list[Any]:
        out = []
        for clause in order_by or []:
            parts = clause.strip().split()
            key = parts[0] if parts else ""
            key = key.split(".", 1)[1] if key.startswith(("attributes.", "attribute.")) else key
            if key not in columns or len(parts) > 2 or (len(parts) == 2 and parts[1].lower() not in ("asc", "desc")):
                raise invalid_parameter(f"Invalid order_by clause '{clause}'. Only {sorted(columns)} with ASC or "
                                        "DESC are supported.")
            col = columns[key]
            out.append(col.desc() if len(parts) == 2 and parts[1].lower() == "desc" else col.asc())
        return out + [default.asc()]

    def set_model_tag(self, access: Access, namespace: str, name: Any, key: Any, value: Any) -> None:
        k, v = parse_kv({"key": key, "value": value}, "", "Tag", MAX_TAG_VALUE)

        def fn(conn: Connection) -> None:
            model = self._writable_model(conn, access, namespace, name)
            self.db.upsert(conn, registry_model_tags, [{"model_id": model.model_id, "key": k, "value": v}],
                           ["model_id", "key"], ["value"])
            self._touch(conn, model.model_id)

        self.db.write(fn)

    def delete_model_tag(self, access: Access, namespace: str, name: Any, key: Any) -> None:
        def fn(conn: Connection) -> None:
            model = self._writable_model(conn, access, namespace, name)
            conn.execute(delete(registry_model_tags).where(registry_model_tags.c.model_id == model.model_id,
                                                           registry_model_tags.c.key == key))

        self.db.write(fn)

    # ---- versions -----------------------------------------------------------------------------------

    def create_version(self, access: Access, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        source = body.get("source")
        if not isinstance(source, str) or not source:
            raise invalid_parameter("Missing value for required parameter 'source'.")
        run_id = body.get("run_id") or None
        tags = dict(parse_kv(t, f"tags[{i}]", "Tag", MAX_TAG_VALUE) for i, t in enumerate(body.get("tags") or []))
        m = _RUN_SOURCE.match(source)
        source_run = (m.group("run") or m.group("run2")) if m else None
        if source_run and run_id != source_run:
            raise invalid_parameter(f"The run_id request parameter must identify the resource that contains the "
                                    f"source: the source {source!r} belongs to run {source_run}, got run_id "
                                    f"{run_id!r}.")

        def fn(conn: Connection) -> tuple[dict[str, Any], str | None]:
            model = self._writable_model(conn, access, namespace, name)
            run_ns = None
            if run_id:
                run = conn.execute(select(tracking_runs.c.namespace, tracking_runs.c.experiment_id).where(
                    tracking_runs.c.run_id == run_id)).first()
                if run is None or not access.can_read(run.namespace):
                    raise not_found(f"Run with id={run_id} not found")
                run_ns = run.namespace
                if m and m.group("exp") and int(m.group("exp")) != run.experiment_id:
                    raise invalid_parameter(f"The source {source!r} does not belong to run {run_id}")
            current = conn.execute(select(func.max(registry_versions.c.version)).where(
                registry_versions.c.model_id == model.model_id)).scalar() or 0
            ts = now_ms()
            conn.execute(insert(registry_versions).values(
                model_id=model.model_id, version=current + 1, source=source, run_id=run_id,
                run_link=str(body.get("run_link") or ""), description=str(body.get("description") or ""),
                status="READY", status_message="", current_stage="None", user_id=access.user, creation_time=ts,
                last_updated_time=ts))
            if tags:
                conn.execute(insert(registry_version_tags), [
                    {"model_id": model.model_id, "version": current + 1, "key": k, "value": v}
                    for k, v in tags.items()])
            self._touch(conn, model.model_id)
            return self._versions_json(conn, model, [self._version(conn, model, current + 1)])[0], run_ns

        mv, run_ns = self.db.write(fn)
        self._record_lineage(namespace, mv, run_ns)
        return mv

    def _record_lineage(self, namespace: str, mv: dict[str, Any], run_ns: str | None) -> None:
        from kaip.tracking.lineage import LineageStore, model_version_key, run_key
        from kaip.tracking.uris import artifact_path_for_source

        lineage = LineageStore(self.store)
        key = model_version_key(namespace, mv["name"], int(mv["version"]))
        attrs: dict[str, Any] = {"source": mv["source"]}
        path = artifact_path_for_source(mv["source"])
        if path is not None:
            from kaip.tracking.service import TrackingService

            digests = TrackingService(self.store).artifact_digests(path)
            if digests:
                lines = "".join(f"{p[len(path):].lstrip('/')}\t{d}\n" for p, d in sorted(digests.items()))
                attrs["content_digest"] = "sha256:" + hashlib.sha256(lines.encode()).hexdigest()
                attrs["files"] = len(digests)
        lineage.record_node(key, "modelversion", namespace, f"{mv['name']}/{mv['version']}", attrs)
        if mv.get("run_id"):
            lineage.record_edge(run_key(mv["run_id"]), key, "produced", run_ns or namespace)
        task = pipeline_task_key(namespace, {t["key"]: t["value"] for t in mv.get("tags") or []})
        if task is not None:  # the task's own node is recorded when it finishes; an edge may come first
            lineage.record_edge(task, key, "registered", namespace)

    def get_version(self, access: Access, namespace: str, name: Any, version: Any) -> dict[str, Any]:
        def fn(conn: Connection) -> dict[str, Any]:
            model = self._model(conn, access, namespace, name)
            return self._versions_json(conn, model, [self._version(conn, model, version)])[0]

        return self.db.read(fn)

    def update_version(self, access: Access, namespace: str, name: Any, version: Any,
                       description: Any) -> dict[str, Any]:
        def fn(conn: Connection) -> dict[str, Any]:
            model = self._writable_model(conn, access, namespace, name)
            row = self._version(conn, model, version)
            conn.execute(update(registry_versions).where(registry_versions.c.model_id == model.model_id,
                                                         registry_versions.c.version == row.version)
                         .values(description=str(description or ""), last_updated_time=now_ms()))
            return self._versions_json(conn, model, [self._version(conn, model, version)])[0]

        return self.db.write(fn)

    def delete_version(self, access: Access, namespace: str, name: Any, version: Any) -> None:
        def fn(conn: Connection) -> None:
            model = self._writable_model(conn, access, namespace, name)
            row = self._version(conn, model, version)
            for table in (registry_version_tags, registry_versions, registry_aliases):
                conn.execute(delete(table).where(table.c.model_id == model.model_id,
                                                 table.c.version == row.version))
            self._touch(conn, model.model_id)

        self.db.write(fn)

    def transition_stage(self, access: Access, namespace: str, name: Any, version: Any, stage: Any,
                         archive_existing: Any = False) -> dict[str, Any]:
        target = canonical_stage(stage)
        archive = archive_existing in (True, "true", "True", 1)

        def fn(conn: Connection) -> dict[str, Any]:
            model = self._writable_model(conn, access, namespace, name)
            row = self._version(conn, model, version)
            ts = now_ms()
            if archive and target in ("Staging", "Production"):
                conn.execute(update(registry_versions).where(
                    registry_versions.c.model_id == model.model_id, registry_versions.c.current_stage == target,
                    registry_versions.c.version != row.version).values(current_stage="Archived",
                                                                        last_updated_time=ts))
            conn.execute(update(registry_versions).where(registry_versions.c.model_id == model.model_id,
                                                         registry_versions.c.version == row.version)
                         .values(current_stage=target, last_updated_time=ts))
            self._touch(conn, model.model_id)
            return self._versions_json(conn, model, [self._version(conn, model, version)])[0]

        return self.db.write(fn)

    def latest_versions(self, access: Access, namespace: str, name: Any,
                        stages: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        wanted = [canonical_stage(s) for s in stages or []] or list(STAGES.values())

        def fn(conn: Connection) -> list[dict[str, Any]]:
            model = self._model(conn, access, namespace, name)
            rv = registry_versions
            latest = [v for _s, v in conn.execute(select(rv.c.current_stage, func.max(rv.c.version)).where(
                rv.c.model_id == model.model_id, rv.c.current_stage.in_(wanted)).group_by(rv.c.current_stage))]
            rows = conn.execute(select(rv).where(rv.c.model_id == model.model_id, rv.c.version.in_(latest))
                                .order_by(rv.c.version)).all() if latest else []
            return self._versions_json(conn, model, rows)

        return self.db.read(fn)

    def search_versions(self, access: Access, namespace: str, *, filter_string: str | None = None,
                        max_results: Any = None, order_by: Sequence[str] | None = None,
                        page_token: str | None = None) -> dict[str, Any]:
        limit = _max_results(max_results, default=10000, threshold=200000)
        offset = filters.decode_page_token(page_token)
        m, v = registry_models, registry_versions
        q = select(v, m.c.name.label("model_name")).join(m, m.c.model_id == v.c.model_id).where(
            m.c.namespace == namespace)
        if not access.can_read(namespace):
            q = q.where(m.c.model_id < 0)
        cols = {"name": m.c.name, "run_id": v.c.run_id, "source": v.c.source, "version_number": v.c.version,
                "current_stage": v.c.current_stage}
        for c in filters.parse_filter(filter_string, string_attrs={k: k for k in cols if k != "version_number"},
                                      numeric_attrs={"version_number": "version_number"}, bare_attributes=True):
            if c.type == ATTRIBUTE:
                q = q.where(self._compare(cols[c.key], c))
            elif c.type == TAG:
                t = registry_version_tags
                sub, negate = self._tag_subquery(select(t.c.model_id, t.c.version).where(t.c.key == c.key),
                                                 t.c.value, c)
                cond = tuple_(v.c.model_id, v.c.version).in_(sub)
                q = q.where(~cond if negate else cond)
            else:
                raise invalid_parameter("model versions can be filtered by name, run_id, source, version_number, "
                                        "current_stage and tags")
        q = q.order_by(*self._order(order_by, {"name": m.c.name, "version_number": v.c.version,
                                               "creation_timestamp": v.c.creation_time,
                                               "last_updated_timestamp": v.c.last_updated_time}, v.c.version))
        q = q.offset(offset).limit(limit + 1)

        def fn(conn: Connection) -> dict[str, Any]:
            rows = conn.execute(q).all()
            out_versions = []
            models: dict[int, Any] = {}
            for r in rows[:limit]:
                model = models.get(r.model_id)
                if model is None:
                    model = models[r.model_id] = conn.execute(select(m).where(m.c.model_id == r.model_id)).one()
                out_versions += self._versions_json(conn, model, [r])
            out: dict[str, Any] = {"model_versions": out_versions}
            if len(rows) > limit:
                out["next_page_token"] = filters.encode_page_token(offset + limit)
            return out

        return self.db.read(fn)

    def set_version_tag(self, access: Access, namespace: str, name: Any, version: Any, key: Any, value: Any) -> None:
        k, val = parse_kv({"key": key, "value": value}, "", "Tag", MAX_TAG_VALUE)

        def fn(conn: Connection) -> None:
            model = self._writable_model(conn, access, namespace, name)
            row = self._version(conn, model, version)
            self.db.upsert(conn, registry_version_tags, [{"model_id": model.model_id, "version": row.version,
                                                          "key": k, "value": val}],
                           ["model_id", "version", "key"], ["value"])

        self.db.write(fn)

    def delete_version_tag(self, access: Access, namespace: str, name: Any, version: Any, key: Any) -> None:
        def fn(conn: Connection) -> None:
            model = self._writable_model(conn, access, namespace, name)
            row = self._version(conn, model, version)
            conn.execute(delete(registry_version_tags).where(
                registry_version_tags.c.model_id == model.model_id, registry_version_tags.c.version == row.version,
                registry_version_tags.c.key == key))

        self.db.write(fn)

    def download_uri(self, access: Access, namespace: str, name: Any, version: Any) -> str:
        return self.get_version(access, namespace, name, version)["source"]

    # ---- aliases ------------------------------------------------------------------------------------

    def set_alias(self, access: Access, namespace: str, name: Any, alias: Any, version: Any) -> None:
        validate_alias(alias)
        validate_alias_not_reserved(alias)

        def fn(conn: Connection) -> None:
            model = self._writable_model(conn, access, namespace, name)
            row = self._version(conn, model, version)
            self.db.upsert(conn, registry_aliases, [{"model_id": model.model_id, "alias": alias,
                                                     "version": row.version}], ["model_id", "alias"], ["version"])
            self._touch(conn, model.model_id)

        self.db.write(fn)

    def delete_alias(self, access: Access, namespace: str, name: Any, alias: Any) -> None:
        validate_alias(alias)

        def fn(conn: Connection) -> None:
            model = self._writable_model(conn, access, namespace, name)
            conn.execute(delete(registry_aliases).where(registry_aliases.c.model_id == model.model_id,
                                                        registry_aliases.c.alias == alias))

        self.db.write(fn)

    def version_by_alias(self, access: Access, namespace: str, name: Any, alias: Any) -> dict[str, Any]:
        validate_alias(alias)

        def fn(conn: Connection) -> dict[str, Any]:
            model = self._model(conn, access, namespace, name)
            version = conn.execute(select(registry_aliases.c.version).where(
                registry_aliases.c.model_id == model.model_id, registry_aliases.c.alias == alias)).scalar()
            if version is None:
                raise not_found(f"Registered model alias {alias} not found.")
            return self._versions_json(conn, model, [self._version(conn, model, version)])[0]

        return self.db.read(fn)

    def latest_version(self, access: Access, namespace: str, name: Any) -> dict[str, Any]:
        def fn(conn: Connection) -> dict[str, Any]:
            model = self._model(conn, access, namespace, name)
            version = conn.execute(select(func.max(registry_versions.c.version)).where(
                registry_versions.c.model_id == model.model_id)).scalar()
            if version is None:
                raise not_found(f"Registered Model with name={name} has no versions")
            return self._versions_json(conn, model, [self._version(conn, model, version)])[0]

        return self.db.read(fn)
