"""Experiments and runs: the tracking half of MLflow's protocol, over the platform store.

Methods take and return MLflow's JSON shapes (plain dicts), so the HTTP layer is a thin mapping and the
CLI reads the same documents. Each write is one transaction: a log-batch that fails validation, or whose
param conflicts with a logged one, writes nothing.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    String,
    and_,
    case,
    cast,
    delete,
    false,
    insert,
    literal,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from kaip.store.store import Store
from kaip.store.tables import (
    artifact_files,
    tracking_experiment_tags,
    tracking_experiments,
    tracking_latest_metrics,
    tracking_metrics,
    tracking_params,
    tracking_run_inputs,
    tracking_run_tags,
    tracking_runs,
)
from kaip.tracking import filters
from kaip.tracking.access import Access, check_read, check_write
from kaip.tracking.db import Database, now_ms
from kaip.tracking.errors import already_exists, invalid_parameter, not_found
from kaip.tracking.filters import ATTRIBUTE, METRIC, PARAM, TAG, Comparison

ACTIVE, DELETED = "active", "deleted"
RUN_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
VIEW_TYPES = {"ACTIVE_ONLY": (ACTIVE,), "DELETED_ONLY": (DELETED,), "ALL": (ACTIVE, DELETED)}
DEFAULT_EXPERIMENT_ID = "0"
DEFAULT_EXPERIMENT_NAME = "Default"
RUN_NAME_TAG = "mlflow.runName"
BASE_MODEL_TAG = "kaip.base_model"

# Limits, as MLflow's server enforces them (mlflow/utils/validation.py).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
MAX_BATCH_REQUEST_BYTES = 1_000_000
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_EXPERIMENT_NAME_LENGTH = 500
MAX_EXPERIMENT_TAG_VALUE_LENGTH = 20000
MAX_DATASETS_PER_BATCH = 1000
SEARCH_MAX_RESULTS_DEFAULT = 1000
SEARCH_MAX_RESULTS_THRESHOLD = 50000
HISTORY_MAX_RESULTS = 25000
DOUBLE_MAX = 1.7976931348623157e308  # MLflow stores +-inf as +-max double

_NAME_RE = re.compile(r"^[/\w.\- :]*$")


# ---- validation (pure) ------------------------------------------------------------------------------

def validate_key(key: Any, path: str, what: str) -> str:
    if key is None or key == "":
        raise invalid_parameter(f"Missing value for required parameter '{path}'. {what} name cannot be empty")
    if not isinstance(key, str):
        raise invalid_parameter(f"Invalid value {key!r} for parameter '{path}' supplied: {what} name must be a string")
    if not _NAME_RE.match(key):
        raise invalid_parameter(f"Invalid value {key!r} for parameter '{path}' supplied: Names may only contain "
                                "alphanumerics, underscores (_), dashes (-), periods (.), spaces ( ), colon(:) and "
                                "slashes (/).")
    norm = re.sub(r"/+", "/", key)
    parts = norm.split("/")
    if norm.startswith("/") or any(p in (".", "..") for p in parts) or norm.endswith("/"):
        raise invalid_parameter(f"Invalid value {key!r} for parameter '{path}' supplied: Names may be treated as "
                                "files in certain cases, and must not resolve to other names when treated as such")
    if len(key) > MAX_KEY_LENGTH:
        raise invalid_parameter(f"'{path}' exceeds the maximum length of {MAX_KEY_LENGTH} characters")
    return key


def _as_int(value: Any, path: str, *, required: bool, default: int = 0) -> int:
    if value is None or value == "":
        if required:
            raise invalid_parameter(f"Missing value for required parameter '{path}'")
        return default
    if isinstance(value, bool):
        raise invalid_parameter(f"Invalid value {value!r} for parameter '{path}': it must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    raise invalid_parameter(f"Invalid value {value!r} for parameter '{path}': it must be an integer")


def metric_value(value: Any, path: str) -> tuple[float, bool]:
    """(stored value, is_nan) as MLflow stores them: NaN is kept as a flag, +-inf as +-max double."""
    if value is None:
        raise invalid_parameter(f"Missing value for required parameter '{path}'")
    if isinstance(value, bool):
        raise invalid_parameter(f"Invalid value {value!r} for parameter '{path}' supplied: Please specify value as "
                                "a valid double (64-bit floating point)")
    if isinstance(value, (int, float)):
        v = float(value)
    elif isinstance(value, str):
        try:
            v = float(value)
        except ValueError:
            raise invalid_parameter(f"Invalid value {value!r} for parameter '{path}' supplied: Please specify value "
                                    "as a valid double (64-bit floating point)") from None
    else:
        raise invalid_parameter(f"Invalid value {value!r} for parameter '{path}' supplied: Please specify value as "
                                "a valid double (64-bit floating point)")
    if math.isnan(v):
        return 0.0, True
    if math.isinf(v):
        return (DOUBLE_MAX if v > 0 else -DOUBLE_MAX), False
    return v, False


def json_float(value: float, is_nan: bool) -> float | str:
    """A metric value for the wire: proto3 JSON spells NaN as the string "NaN"."""
    return "NaN" if is_nan else value


@dataclass(frozen=True)
class Metric:
    key: str
    value: float
    is_nan: bool
    timestamp: int
    step: int

    def order(self) -> tuple[int, int, float]:
        return (self.step, self.timestamp, self.value if not self.is_nan else -math.inf)


def parse_metric(m: Any, path: str) -> Metric:
    if not isinstance(m, dict):
        raise invalid_parameter(f"Invalid value {m!r} for parameter '{path}': a metric is an object")
    key = validate_key(m.get("key"), f"{path}.key" if path else "key", "Metric")
    value, is_nan = metric_value(m.get("value"), f"{path}.value" if path else "value")
    ts = _as_int(m.get("timestamp"), f"{path}.timestamp" if path else "timestamp", required=True)
    if ts < 0:
        raise invalid_parameter(f"Invalid value {ts} for parameter '{path}.timestamp': it must be non-negative")
    step = _as_int(m.get("step"), f"{path}.step" if path else "step", required=False)
    return Metric(key, value, is_nan, ts, step)


def parse_kv(item: Any, path: str, what: str, max_value: int) -> tuple[str, str]:
    if not isinstance(item, dict):
        raise invalid_parameter(f"Invalid value {item!r} for parameter '{path}': a {what.lower()} is an object")
    key = validate_key(item.get("key"), f"{path}.key" if path else "key", what)
    value = item.get("value")
    if value is None:
        value = ""
    if not isinstance(value, str):
        value = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    if len(value) > max_value:
        raise invalid_parameter(f"{what} value for key {key!r} exceeds the maximum length of {max_value} characters "
                                f"(got {len(value)})")
    return key, value


def _list(body: dict[str, Any], name: str) -> list[Any]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid_parameter(f"Invalid value for parameter '{name}': expected a list")
    return value


def _str(body: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise invalid_parameter(f"Missing value for required parameter '{name}'")
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise invalid_parameter(f"Invalid value {value!r} for parameter '{name}': expected a string")
    return value


def _experiment_key(experiment_id: Any) -> int:
    try:
        return int(str(experiment_id))
    except ValueError:
        raise invalid_parameter(f"Invalid experiment ID '{experiment_id}'. Experiment ID must be a valid "
                                "integer.") from None


def run_artifact_uri(experiment_id: int | str, run_id: str) -> str:
    return f"mlflow-artifacts:/{experiment_id}/{run_id}/artifacts"


# ---- the service ------------------------------------------------------------------------------------

class TrackingService:
    def __init__(self, store: Store) -> None:
        self.db = Database(store)

    # ---- experiments --------------------------------------------------------------------------------

    def _experiment_row(self, conn: Connection, access: Access, experiment_id: Any) -> Any:
        eid = _experiment_key(experiment_id)
        row = conn.execute(select(tracking_experiments).where(tracking_experiments.c.experiment_id == eid)).first()
        missing = not_found(f"No Experiment with id={experiment_id} exists")
        if row is None:
            raise missing
        check_read(access, row.namespace, missing)
        return row

    def _experiment_json(self, conn: Connection, row: Any) -> dict[str, Any]:
        tags = conn.execute(select(tracking_experiment_tags.c.key, tracking_experiment_tags.c.value)
                            .where(tracking_experiment_tags.c.experiment_id == row.experiment_id)
                            .order_by(tracking_experiment_tags.c.key)).all()
        return {"experiment_id": str(row.experiment_id), "name": row.name,
                "artifact_location": f"mlflow-artifacts:/{row.experiment_id}",
                "lifecycle_stage": row.lifecycle_stage, "creation_time": row.creation_time,
                "last_update_time": row.last_update_time, "tags": [{"key": k, "value": v} for k, v in tags],
                "kaip_namespace": row.namespace}

    def create_experiment(self, access: Access, namespace: str, name: Any, tags: Iterable[Any] = (),
                          artifact_location: Any = None) -> str:
        if not isinstance(name, str) or not name.strip():
            raise invalid_parameter("Invalid experiment name: '': it must be a non-empty string")
        if len(name) > MAX_EXPERIMENT_NAME_LENGTH:
            raise invalid_parameter(f"Experiment name exceeds the maximum length of {MAX_EXPERIMENT_NAME_LENGTH}")
        if artifact_location:
            raise invalid_parameter("artifact_location is not supported: Kaip stores every experiment's artifacts "
                                    "in its own artifact store (mlflow-artifacts:/<experiment_id>)")
        parsed = [parse_kv(t, f"tags[{i}]", "Tag", MAX_EXPERIMENT_TAG_VALUE_LENGTH) for i, t in enumerate(tags)]
        check_write(access, namespace, "experiments", not_found(f'namespace "{namespace}" not found'))

        def fn(conn: Connection) -> str:
            existing = conn.execute(select(tracking_experiments.c.lifecycle_stage).where(
                tracking_experiments.c.namespace == namespace, tracking_experiments.c.name == name)).first()
            if existing is not None:
                extra = " (it is deleted: restore it or choose another name)" if existing[0] == DELETED else ""
                raise already_exists(f"Experiment '{name}' already exists{extra}.")
            ts = now_ms()
            try:
                eid = conn.execute(insert(tracking_experiments).values(
                    namespace=namespace, name=name, lifecycle_stage=ACTIVE, creation_time=ts,
                    last_update_time=ts).returning(tracking_experiments.c.experiment_id)).scalar_one()
            except IntegrityError:
                raise already_exists(f"Experiment '{name}' already exists.") from None
            if parsed:
                conn.execute(insert(tracking_experiment_tags),
                             [{"experiment_id": eid, "key": k, "value": v} for k, v in dict(parsed).items()])
            return str(eid)

        return self.db.write(fn)

    def _default_experiment(self, access: Access, namespace: str) -> str:
        """MLflow's experiment "0": here one `Default` experiment per namespace, made on first use."""
        found = self.db.read(lambda conn: conn.execute(select(tracking_experiments.c.experiment_id).where(
            tracking_experiments.c.namespace == namespace,
            tracking_experiments.c.name == DEFAULT_EXPERIMENT_NAME)).scalar())
        if found is not None:
            return str(found)
        try:
            return self.create_experiment(access, namespace, DEFAULT_EXPERIMENT_NAME)
        except Exception as err:
            if getattr(err, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
            return self._default_experiment(access, namespace)

    def resolve_experiment_id(self, access: Access, namespace: str, experiment_id: Any) -> str:
        if str(experiment_id) == DEFAULT_EXPERIMENT_ID:
            return self._default_experiment(access, namespace)
        return str(experiment_id)

    def get_experiment(self, access: Access, namespace: str, experiment_id: Any) -> dict[str, Any]:
        if experiment_id is None or experiment_id == "":
            raise invalid_parameter("Missing value for required parameter 'experiment_id'")
        eid = self.resolve_experiment_id(access, namespace, experiment_id)
        return self.db.read(lambda conn: self._experiment_json(conn, self._experiment_row(conn, access, eid)))

    def get_experiment_by_name(self, access: Access, namespace: str, name: Any) -> dict[str, Any]:
        if not isinstance(name, str) or not name:
            raise invalid_parameter("Missing value for required parameter 'experiment_name'")
        missing = not_found(f"Could not find experiment with name '{name}'")
        check_read(access, namespace, missing)

        def fn(conn: Connection) -> dict[str, Any]:
            row = conn.execute(select(tracking_experiments).where(
                tracking_experiments.c.namespace == namespace, tracking_experiments.c.name == name)).first()
            if row is None:
                raise missing
            return self._experiment_json(conn, row)

        return self.db.read(fn)

    def search_experiments(self, access: Access, namespaces: Sequence[str], *, view_type: str = "ACTIVE_ONLY",
                           max_results: Any = None, filter_string: str | None = None,
                           order_by: Sequence[str] | None = None, page_token: str | None = None) -> dict[str, Any]:
        stages = _view_type(view_type)
        limit = _max_results(max_results, default=1000, threshold=SEARCH_MAX_RESULTS_THRESHOLD)
        offset = filters.decode_page_token(page_token)
        t = tracking_experiments
        attrs = {"name": "name", "experiment_id": "experiment_id"}
        numbers = {"creation_time": "creation_time", "last_update_time": "last_update_time"}
        q = select(t).where(t.c.namespace.in_([n for n in namespaces if access.can_read(n)]),
                            t.c.lifecycle_stage.in_(stages))
        for c in filters.parse_filter(filter_string, string_attrs=attrs, numeric_attrs=numbers,
                                      bare_attributes=True):
            if c.type == ATTRIBUTE:
                col = t.c[c.key] if c.key != "experiment_id" else cast(t.c.experiment_id, String)
                q = q.where(self._compare(col, c))
            elif c.type == TAG:
                tt = tracking_experiment_tags
                q = q.where(self._kv_condition(t.c.experiment_id, tt.c.experiment_id, tt.c.key, tt.c.value, c))
            else:
                raise invalid_parameter(f"Invalid entity type {c.type!r} in an experiment filter: use attributes "
                                        "(name, creation_time, last_update_time) or tags")
        sort = []
        for ob in filters.parse_order_by(list(order_by or []), string_attrs=attrs, numeric_attrs=numbers):
            if ob.type != ATTRIBUTE:
                raise invalid_parameter("experiments can be ordered by name, experiment_id, creation_time or "
                                        "last_update_time")
            col = t.c[ob.key]
            sort.append(col.asc() if ob.ascending else col.desc())
        sort += [t.c.creation_time.desc(), t.c.experiment_id.desc()] if not sort else [t.c.experiment_id.asc()]
        q = q.order_by(*sort).offset(offset).limit(limit + 1)

        def fn(conn: Connection) -> dict[str, Any]:
            rows = conn.execute(q).all()
            out: dict[str, Any] = {"experiments": [self._experiment_json(conn, r) for r in rows[:limit]]}
            if len(rows) > limit:
                out["next_page_token"] = filters.encode_page_token(offset + limit)
            return out

        return self.db.read(fn)

    def _set_experiment_stage(self, access: Access, experiment_id: Any, stage: str) -> None:
        def fn(conn: Connection) -> None:
            row = self._experiment_row(conn, access, experiment_id)
            check_write(access, row.namespace, "experiments", not_found(f"No Experiment with id={experiment_id}"))
            if row.name == DEFAULT_EXPERIMENT_NAME and stage == DELETED:
                raise invalid_parameter("Cannot delete the default experiment 'Default'. This is an internal "
                                        "experiment.")
            conn.execute(update(tracking_experiments).where(
                tracking_experiments.c.experiment_id == row.experiment_id).values(
                lifecycle_stage=stage, last_update_time=now_ms()))
            conn.execute(update(tracking_runs).where(tracking_runs.c.experiment_id == row.experiment_id)
                         .values(lifecycle_stage=stage))
        self.db.write(fn)

    def delete_experiment(self, access: Access, experiment_id: Any) -> None:
        self._set_experiment_stage(access, experiment_id, DELETED)

    def restore_experiment(self, access: Access, experiment_id: Any) -> None:
        self._set_experiment_stage(access, experiment_id, ACTIVE)

    def rename_experiment(self, access: Access, experiment_id: Any, new_name: Any) -> None:
        if not isinstance(new_name, str) or not new_name.strip():
            raise invalid_parameter("Missing value for required parameter 'new_name'")

        def fn(conn: Connection) -> None:
            row = self._experiment_row(conn, access, experiment_id)
            check_write(access, row.namespace, "experiments", not_found(f"No Experiment with id={experiment_id}"))
            if row.lifecycle_stage != ACTIVE:
                raise invalid_parameter("Cannot rename a non-active experiment.")
            taken = conn.execute(select(tracking_experiments.c.experiment_id).where(
                tracking_experiments.c.namespace == row.namespace, tracking_experiments.c.name == new_name)).first()
            if taken is not None and taken[0] != row.experiment_id:
                raise already_exists(f"Experiment '{new_name}' already exists.")
            conn.execute(update(tracking_experiments).where(
                tracking_experiments.c.experiment_id == row.experiment_id).values(
                name=new_name, last_update_time=now_ms()))
        self.db.write(fn)

    def set_experiment_tag(self, access: Access, experiment_id: Any, key: Any, value: Any) -> None:
        k, v = parse_kv({"key": key, "value": value}, "", "Tag", MAX_EXPERIMENT_TAG_VALUE_LENGTH)

        def fn(conn: Connection) -> None:
            row = self._experiment_row(conn, access, experiment_id)
            check_write(access, row.namespace, "experiments", not_found(f"No Experiment with id={experiment_id}"))
            if row.lifecycle_stage != ACTIVE:
                raise invalid_parameter(f"The experiment {experiment_id} must be in the 'active' state.")
            self.db.upsert(conn, tracking_experiment_tags, [{"experiment_id": row.experiment_id, "key": k,
                                                             "value": v}], ["experiment_id", "key"], ["value"])
        self.db.write(fn)

    def delete_experiment_tag(self, access: Access, experiment_id: Any, key: Any) -> None:
        def fn(conn: Connection) -> None:
            row = self._experiment_row(conn, access, experiment_id)
            check_write(access, row.namespace, "experiments", not_found(f"No Experiment with id={experiment_id}"))
            gone = conn.execute(delete(tracking_experiment_tags).where(
                tracking_experiment_tags.c.experiment_id == row.experiment_id,
                tracking_experiment_tags.c.key == key)).rowcount
            if not gone:
                raise not_found(f"No tag with name: {key} in experiment with id {experiment_id}")
        self.db.write(fn)

    # ---- runs ---------------------------------------------------------------------------------------

    def _run_row(self, conn: Connection, access: Access, run_id: Any) -> Any:
        if not isinstance(run_id, str) or not run_id:
            raise invalid_parameter("Missing value for required parameter 'run_id'")
        row = conn.execute(select(tracking_runs).where(tracking_runs.c.run_id == run_id)).first()
        missing = not_found(f"Run with id={run_id} not found")
        if row is None:
            raise missing
        check_read(access, row.namespace, missing)
        return row

    def _writable_run(self, conn: Connection, access: Access, run_id: Any) -> Any:
        row = self._run_row(conn, access, run_id)
        check_write(access, row.namespace, "runs", not_found(f"Run with id={run_id} not found"))
        if row.lifecycle_stage != ACTIVE:
            raise invalid_parameter(f"The run {run_id} must be in the 'active' state. Current state is "
                                    f"{row.lifecycle_stage}.")
        return row

    @staticmethod
    def _run_info(row: Any) -> dict[str, Any]:
        info = {"run_id": row.run_id, "run_uuid": row.run_id, "run_name": row.name,
                "experiment_id": str(row.experiment_id), "user_id": row.user_id, "status": row.status,
                "start_time": row.start_time, "artifact_uri": run_artifact_uri(row.experiment_id, row.run_id),
                "lifecycle_stage": row.lifecycle_stage}
        if row.end_time is not None:
            info["end_time"] = row.end_time
        return info

    def _runs_json(self, conn: Connection, rows: Sequence[Any]) -> list[dict[str, Any]]:
        """Whole runs (info, latest metrics, params, tags, inputs) for a page of run rows, in four queries."""
        if not rows:
            return []
        ids = [r.run_id for r in rows]
        data: dict[str, dict[str, list[Any]]] = {i: {"metrics": [], "params": [], "tags": []} for i in ids}
        inputs: dict[str, list[Any]] = {i: [] for i in ids}
        for chunk in _chunks(ids, 900):
            lm = tracking_latest_metrics
            for run_id, key, value, is_nan, step, ts in conn.execute(select(
                    lm.c.run_id, lm.c.key, lm.c.value, lm.c.is_nan, lm.c.step, lm.c.timestamp)
                    .where(lm.c.run_id.in_(chunk))):
                data[run_id]["metrics"].append({"key": key, "value": json_float(value, is_nan), "timestamp": ts,
                                                "step": step})
            for table, field in ((tracking_params, "params"), (tracking_run_tags, "tags")):
                for run_id, key, value in conn.execute(select(table.c.run_id, table.c.key, table.c.value)
                                                       .where(table.c.run_id.in_(chunk))):
                    data[run_id][field].append({"key": key, "value": value})
            ri = tracking_run_inputs
            for r in conn.execute(select(ri).where(ri.c.run_id.in_(chunk))):
                ds = {"name": r.name, "digest": r.digest, "source_type": r.source_type, "source": r.source}
                if r.schema:
                    ds["schema"] = r.schema
                if r.profile:
                    ds["profile"] = r.profile
                tags = [{"key": "mlflow.data.context", "value": r.context}] if r.context else []
                inputs[r.run_id].append({"tags": tags, "dataset": ds})
        out = []
        for row in rows:
            d = data[row.run_id]
            for field in ("metrics", "params", "tags"):
                d[field].sort(key=lambda x: x["key"])
            out.append({"info": self._run_info(row), "data": d,
                        "inputs": {"dataset_inputs": inputs[row.run_id]}})
        return out

    def create_run(self, access: Access, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        experiment_id = self.resolve_experiment_id(access, namespace, _str(body, "experiment_id"))
        tags = [parse_kv(t, f"tags[{i}]", "Tag", MAX_TAG_VALUE_LENGTH) for i, t in enumerate(_list(body, "tags"))]
        tag_map = dict(tags)
        run_name = body.get("run_name") or tag_map.get(RUN_NAME_TAG) or ""
        if not isinstance(run_name, str):
            raise invalid_parameter("Invalid value for parameter 'run_name': expected a string")
        if tag_map.get(RUN_NAME_TAG) and body.get("run_name") and tag_map[RUN_NAME_TAG] != body["run_name"]:
            raise invalid_parameter(f"Both 'run_name' argument and 'mlflow.runName' tag are specified, but with "
                                    f"different values (run_name='{body['run_name']}', "
                                    f"mlflow.runName='{tag_map[RUN_NAME_TAG]}').")
        start_time = _as_int(body.get("start_time"), "start_time", required=False, default=now_ms())
        user_id = body.get("user_id") or access.user
        run_id = uuid.uuid4().hex
        run_name = run_name or f"run-{run_id[:8]}"
        tag_map[RUN_NAME_TAG] = run_name

        def fn(conn: Connection) -> dict[str, Any]:
            exp = self._experiment_row(conn, access, experiment_id)
            check_write(access, exp.namespace, "runs", not_found(f"No Experiment with id={experiment_id} exists"))
            if exp.lifecycle_stage != ACTIVE:
                raise invalid_parameter(f"The experiment {experiment_id} must be in the 'active' state. Current "
                                        f"state is {exp.lifecycle_stage}.")
            values = {"run_id": run_id, "experiment_id": exp.experiment_id, "namespace": exp.namespace,
                      "name": run_name, "user_id": str(user_id), "status": "RUNNING", "start_time": start_time,
                      "end_time": None, "lifecycle_stage": ACTIVE}
            conn.execute(insert(tracking_runs).values(**values))
            conn.execute(insert(tracking_run_tags), [{"run_id": run_id, "key": k, "value": v}
                                                     for k, v in tag_map.items()])
            row = conn.execute(select(tracking_runs).where(tracking_runs.c.run_id == run_id)).one()
            return self._runs_json(conn, [row])[0]

        return self.db.write(fn)

    def get_run(self, access: Access, run_id: Any) -> dict[str, Any]:
        return self.db.read(lambda conn: self._runs_json(conn, [self._run_row(conn, access, run_id)])[0])

    def update_run(self, access: Access, body: dict[str, Any]) -> dict[str, Any]:
        run_id = body.get("run_id") or body.get("run_uuid")
        status = body.get("status")
        if status is not None and status not in RUN_STATUSES:
            raise invalid_parameter(f"Invalid value {status!r} for parameter 'status': use one of {RUN_STATUSES}")
        end_time = body.get("end_time")
        end = _as_int(end_time, "end_time", required=False) if end_time not in (None, "") else None
        run_name = body.get("run_name")

        def fn(conn: Connection) -> dict[str, Any]:
            row = self._writable_run(conn, access, run_id)
            values: dict[str, Any] = {}
            if status:
                values["status"] = status
            if end is not None:
                values["end_time"] = end
            if run_name:
                values["name"] = run_name
                self.db.upsert(conn, tracking_run_tags, [{"run_id": row.run_id, "key": RUN_NAME_TAG,
                                                          "value": run_name}], ["run_id", "key"], ["value"])
            if values:
                conn.execute(update(tracking_runs).where(tracking_runs.c.run_id == row.run_id).values(**values))
            new = conn.execute(select(tracking_runs).where(tracking_runs.c.run_id == row.run_id)).one()
            return {"run_info": self._run_info(new)}

        return self.db.write(fn)

    def set_run_lifecycle(self, access: Access, run_id: Any, stage: str) -> None:
        def fn(conn: Connection) -> None:
            row = self._run_row(conn, access, run_id)
            check_write(access, row.namespace, "runs", not_found(f"Run with id={run_id} not found"))
            conn.execute(update(tracking_runs).where(tracking_runs.c.run_id == row.run_id)
                         .values(lifecycle_stage=stage))
        self.db.write(fn)

    def log_batch(self, access: Access, run_id: Any, metrics: Sequence[Any] = (), params: Sequence[Any] = (),
                  tags: Sequence[Any] = ()) -> None:
        """Validate everything first, then write params, tags and metrics in one transaction."""
        _batch_limit("metrics", MAX_METRICS_PER_BATCH, len(metrics))
        _batch_limit("params", MAX_PARAMS_TAGS_PER_BATCH, len(params))
        _batch_limit("tags", MAX_PARAMS_TAGS_PER_BATCH, len(tags))
        _batch_limit("metrics, params, and tags", MAX_ENTITIES_PER_BATCH, len(metrics) + len(params) + len(tags))
        parsed_metrics = [parse_metric(m, f"metrics[{i}]") for i, m in enumerate(metrics)]
        parsed_params = [parse_kv(p, f"params[{i}]", "Param", MAX_PARAM_VALUE_LENGTH) for i, p in enumerate(params)]
        parsed_tags = [parse_kv(t, f"tags[{i}]", "Tag", MAX_TAG_VALUE_LENGTH) for i, t in enumerate(tags)]
        seen: dict[str, str] = {}
        dupes = []
        for k, v in parsed_params:
            if k in seen and seen[k] != v:
                dupes.append(k)
            seen[k] = v
        if dupes:
            raise invalid_parameter(f"Duplicate parameter keys have been submitted: {dupes}. Please ensure the "
                                    "request contains only one param value per param key.")
        tag_map = dict(parsed_tags)

        def fn(conn: Connection) -> None:
            row = self._writable_run(conn, access, run_id)
            rid = row.run_id
            if seen:
                existing = dict(conn.execute(select(tracking_params.c.key, tracking_params.c.value).where(
                    tracking_params.c.run_id == rid, tracking_params.c.key.in_(list(seen)))).all())
                for k, v in seen.items():
                    if k in existing and existing[k] != v:
                        raise invalid_parameter(
                            f"Changing param values is not allowed. Param with key='{k}' was already logged with "
                            f"value='{existing[k]}' for run ID='{rid}'. Attempted logging new value '{v}'.")
                new = [{"run_id": rid, "key": k, "value": v} for k, v in seen.items() if k not in existing]
                if new:
                    conn.execute(insert(tracking_params), new)
            if tag_map:
                self.db.upsert(conn, tracking_run_tags, [{"run_id": rid, "key": k, "value": v}
                                                         for k, v in tag_map.items()], ["run_id", "key"], ["value"])
                if RUN_NAME_TAG in tag_map:
                    conn.execute(update(tracking_runs).where(tracking_runs.c.run_id == rid)
                                 .values(name=tag_map[RUN_NAME_TAG]))
            if parsed_metrics:
                self._insert_metrics(conn, rid, parsed_metrics)

        self.db.write(fn)
        if BASE_MODEL_TAG in tag_map:
            self._on_base_model(access, str(run_id), tag_map[BASE_MODEL_TAG])

    def _insert_metrics(self, conn: Connection, run_id: str, metrics: Sequence[Metric]) -> None:
        conn.execute(insert(tracking_metrics), [
            {"run_id": run_id, "key": m.key, "value": m.value, "is_nan": m.is_nan, "step": m.step,
             "timestamp": m.timestamp} for m in metrics])
        latest: dict[str, Metric] = {}
        for m in metrics:
            cur = latest.get(m.key)
            if cur is None or m.order() >= cur.order():
                latest[m.key] = m
        lm_rows = [{"run_id": run_id, "key": m.key, "value": m.value, "is_nan": m.is_nan, "step": m.step,
                    "timestamp": m.timestamp} for m in latest.values()]

        def newer(t: Any, ex: Any) -> Any:
            return or_(ex.step > t.step, and_(ex.step == t.step, ex.timestamp > t.timestamp),
                       and_(ex.step == t.step, ex.timestamp == t.timestamp, ex.value >= t.value))

        self.db.upsert(conn, tracking_latest_metrics, lm_rows, ["run_id", "key"],
                       ["value", "is_nan", "step", "timestamp"], where=newer)

    def log_metric(self, access: Access, body: dict[str, Any]) -> None:
        run_id = body.get("run_id") or body.get("run_uuid")
        m = parse_metric(body, "")
        self.db.write(lambda conn: self._insert_metrics(conn, self._writable_run(conn, access, run_id).run_id, [m]))

    def log_param(self, access: Access, body: dict[str, Any]) -> None:
        self.log_batch(access, body.get("run_id") or body.get("run_uuid"),
                       params=[{"key": body.get("key"), "value": body.get("value")}])

    def set_tag(self, access: Access, body: dict[str, Any]) -> None:
        self.log_batch(access, body.get("run_id") or body.get("run_uuid"),
                       tags=[{"key": body.get("key"), "value": body.get("value")}])

    def delete_tag(self, access: Access, run_id: Any, key: Any) -> None:
        def fn(conn: Connection) -> None:
            row = self._writable_run(conn, access, run_id)
            gone = conn.execute(delete(tracking_run_tags).where(tracking_run_tags.c.run_id == row.run_id,
                                                                tracking_run_tags.c.key == key)).rowcount
            if not gone:
                raise not_found(f"No tag with name: {key} in run with id {run_id}")
        self.db.write(fn)

    def log_inputs(self, access: Access, run_id: Any, datasets: Sequence[Any]) -> None:
        _batch_limit("datasets", MAX_DATASETS_PER_BATCH, len(datasets))
        rows = []
        for i, di in enumerate(datasets):
            ds = (di or {}).get("dataset") if isinstance(di, dict) else None
            if not isinstance(ds, dict):
                raise invalid_parameter(f"Invalid value for parameter 'datasets[{i}]': a dataset input needs a "
                                        "'dataset' object")
            for field in ("name", "digest", "source_type", "source"):
                if not isinstance(ds.get(field), str) or not ds.get(field):
                    raise invalid_parameter(f"Dataset {field} cannot be empty (datasets[{i}].dataset.{field})")
            if len(ds["digest"]) > 64:
                raise invalid_parameter(f"datasets[{i}].dataset.digest exceeds the maximum length of 64")
            context = next((t.get("value", "") for t in di.get("tags") or []
                            if isinstance(t, dict) and t.get("key") == "mlflow.data.context"), "")
            rows.append({"name": ds["name"][:500], "digest": ds["digest"], "source_type": ds["source_type"][:64],
                         "source": ds["source"], "context": str(context)[:500], "schema": ds.get("schema") or "",
                         "profile": ds.get("profile") or ""})

        def fn(conn: Connection) -> str:
            row = self._writable_run(conn, access, run_id)
            self.db.upsert(conn, tracking_run_inputs, [{"run_id": row.run_id, **r} for r in rows],
                           ["run_id", "name", "digest"], [])
            return row.namespace

        namespace = self.db.write(fn)
        from kaip.tracking.lineage import LineageStore, dataset_key, run_key

        lineage = LineageStore(self.db.store)
        for r in rows:
            key = dataset_key(namespace, r["digest"])
            lineage.record_node(key, "dataset", namespace, r["name"],
                                {"digest": r["digest"], "source": r["source"], "source_type": r["source_type"]})
            lineage.record_edge(key, run_key(str(run_id)), "input-to", namespace)

    def _on_base_model(self, access: Access, run_id: str, base: str) -> None:
        from kaip.tracking.lineage import LineageStore, model_node_for_uri, run_key

        ns = self.db.read(lambda conn: self._run_row(conn, access, run_id).namespace)
        lineage = LineageStore(self.db.store)
        key, kind, name = model_node_for_uri(self.db.store, base, ns)
        if kind != "modelversion":
            lineage.record_node(key, kind, ns, name, {"uri": base})
        lineage.record_edge(key, run_key(run_id), "base-model-of", ns)

    def get_metric_history(self, access: Access, run_id: Any, key: Any, *, max_results: Any = None,
                           page_token: str | None = None) -> dict[str, Any]:
        if not isinstance(key, str) or not key:
            raise invalid_parameter("Missing value for required parameter 'metric_key'")
        limit = _max_results(max_results, default=HISTORY_MAX_RESULTS, threshold=HISTORY_MAX_RESULTS * 40)
        offset = filters.decode_page_token(page_token)
        m = tracking_metrics

        def fn(conn: Connection) -> dict[str, Any]:
            row = self._run_row(conn, access, run_id)
            rows = conn.execute(select(m.c.value, m.c.is_nan, m.c.timestamp, m.c.step).where(
                m.c.run_id == row.run_id, m.c.key == key).order_by(m.c.step, m.c.timestamp, m.c.id)
                .offset(offset).limit(limit + 1)).all()
            out: dict[str, Any] = {"metrics": [{"key": key, "value": json_float(v, n), "timestamp": ts, "step": st}
                                               for v, n, ts, st in rows[:limit]]}
            if len(rows) > limit:
                out["next_page_token"] = filters.encode_page_token(offset + limit)
            return out

        return self.db.read(fn)

    # ---- search -------------------------------------------------------------------------------------

    def _compare(self, col: Any, c: Comparison) -> Any:
        return compare(self.db, col, c)

    def _kv_condition(self, owner: Any, fk: Any, key_col: Any, value_col: Any, c: Comparison) -> Any:
        sub = select(fk).where(key_col == c.key)
        if c.op == "IS NULL":
            return not_(owner.in_(sub))
        if c.op == "IS NOT NULL":
            return owner.in_(sub)
        return owner.in_(sub.where(self._compare(value_col, c)))

    def _run_condition(self, c: Comparison) -> Any:
        r = tracking_runs
        if c.type == METRIC:
            lm = tracking_latest_metrics
            return r.c.run_id.in_(select(lm.c.run_id).where(lm.c.key == c.key, lm.c.is_nan == false(),
                                                           self._compare(lm.c.value, c)))
        if c.type == PARAM:
            p = tracking_params
            return self._kv_condition(r.c.run_id, p.c.run_id, p.c.key, p.c.value, c)
        if c.type == TAG:
            t = tracking_run_tags
            return self._kv_condition(r.c.run_id, t.c.run_id, t.c.key, t.c.value, c)
        return self._compare(self._attribute_column(c.key), c)

    @staticmethod
    def _attribute_column(key: str) -> Any:
        r = tracking_runs
        if key == "artifact_uri":
            return literal("mlflow-artifacts:/") + cast(r.c.experiment_id, String) + "/" + r.c.run_id + "/artifacts"
        return {"run_id": r.c.run_id, "run_name": r.c.name, "status": r.c.status, "user_id": r.c.user_id,
                "lifecycle_stage": r.c.lifecycle_stage, "start_time": r.c.start_time, "end_time": r.c.end_time}[key]

    def search_runs(self, access: Access, experiment_ids: Sequence[Any], *, filter_string: str | None = None,
                    run_view_type: str = "ACTIVE_ONLY", max_results: Any = None, order_by: Sequence[str] | None = None,
                    page_token: str | None = None) -> dict[str, Any]:
        stages = _view_type(run_view_type)
        limit = _max_results(max_results, default=SEARCH_MAX_RESULTS_DEFAULT, threshold=SEARCH_MAX_RESULTS_THRESHOLD)
        offset = filters.decode_page_token(page_token)
        comparisons = filters.parse_filter(filter_string)
        orders = filters.parse_order_by(list(order_by or []))
        eids = [_experiment_key(e) for e in experiment_ids]
        r = tracking_runs
        q = select(r).where(r.c.experiment_id.in_(eids), r.c.lifecycle_stage.in_(stages))
        for c in comparisons:
            q = q.where(self._run_condition(c))
        sort: list[Any] = []
        for i, ob in enumerate(orders):
            if ob.type == ATTRIBUTE:
                col = self._attribute_column(ob.key)
            else:
                table = {METRIC: tracking_latest_metrics, PARAM: tracking_params, TAG: tracking_run_tags}[ob.type]
                alias = table.alias(f"ob{i}")
                q = q.outerjoin(alias, and_(alias.c.run_id == r.c.run_id, alias.c.key == ob.key))
                col = alias.c.value
            sort += [case((col.is_(None), 1), else_=0), col.asc() if ob.ascending else col.desc()]
        if not any(ob.type == ATTRIBUTE and ob.key == "start_time" for ob in orders):
            sort.append(r.c.start_time.desc())
        sort.append(r.c.run_id.asc())
        q = q.order_by(*sort).offset(offset).limit(limit + 1)

        def fn(conn: Connection) -> dict[str, Any]:
            if eids:
                found = conn.execute(select(tracking_experiments.c.experiment_id, tracking_experiments.c.namespace)
                                     .where(tracking_experiments.c.experiment_id.in_(eids))).all()
                visible = {e for e, ns in found if access.can_read(ns)}
                for e in eids:
                    if e not in visible:
                        raise not_found(f"No Experiment with id={e} exists")
            rows = conn.execute(q).all() if eids else []
            out: dict[str, Any] = {"runs": self._runs_json(conn, rows[:limit])}
            if len(rows) > limit:
                out["next_page_token"] = filters.encode_page_token(offset + limit)
            return out

        return self.db.read(fn)

    # ---- artifacts index ----------------------------------------------------------------------------

    def experiment_namespace(self, experiment_id: Any) -> str | None:
        try:
            eid = int(str(experiment_id))
        except ValueError:
            return None
        return self.db.read(lambda conn: conn.execute(select(tracking_experiments.c.namespace).where(
            tracking_experiments.c.experiment_id == eid)).scalar())

    def record_artifact(self, path: str, size: int, sha256: str) -> None:
        import time

        self.db.write(lambda conn: self.db.upsert(conn, artifact_files, [
            {"path": path, "size": size, "sha256": sha256, "created_at": time.time()}], ["path"],
            ["size", "sha256", "created_at"]))

    def forget_artifacts(self, paths: Sequence[str]) -> None:
        if paths:
            self.db.write(lambda conn: conn.execute(delete(artifact_files).where(artifact_files.c.path.in_(
                list(paths)))))

    def artifact_digests(self, prefix: str) -> dict[str, str]:
        """sha256 of every recorded file under a path prefix."""
        a = artifact_files
        like = prefix.rstrip("/").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"
        return dict(self.db.read(lambda conn: conn.execute(select(a.c.path, a.c.sha256).where(
            or_(a.c.path == prefix.rstrip("/"), a.c.path.like(like, escape="\\"))).order_by(a.c.path)).all()))


def compare(db: Database, col: Any, c: Comparison) -> Any:
    """The SQL condition for one parsed comparison on a column."""
    op, v = c.op, c.value
    if op == "=":
        return col == v
    if op == "!=":
        return col != v
    if op == "<":
        return col < v
    if op == "<=":
        return col <= v
    if op == ">":
        return col > v
    if op == ">=":
        return col >= v
    if op in ("LIKE", "ILIKE"):
        return db.like(col, v, case_insensitive=op == "ILIKE")
    if op == "IN":
        return col.in_(list(v))
    if op == "NOT IN":
        return col.not_in(list(v))
    raise invalid_parameter(f"Unsupported comparator {op!r}")


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _batch_limit(what: str, limit: int, length: int) -> None:
    if length > limit:
        raise invalid_parameter(f"A batch logging request can contain at most {limit} {what}. Got {length} {what}. "
                                f"Please split up {what} across multiple requests and try again.")


def _view_type(view_type: Any) -> tuple[str, ...]:
    if view_type in (None, ""):
        return VIEW_TYPES["ACTIVE_ONLY"]
    if isinstance(view_type, int):
        view_type = {1: "ACTIVE_ONLY", 2: "DELETED_ONLY", 3: "ALL"}.get(view_type, view_type)
    if view_type not in VIEW_TYPES:
        raise invalid_parameter(f"Invalid view type {view_type!r}: use ACTIVE_ONLY, DELETED_ONLY or ALL")
    return VIEW_TYPES[view_type]


def _max_results(value: Any, *, default: int, threshold: int) -> int:
    n = _as_int(value, "max_results", required=False, default=default)
    if n <= 0:
        raise invalid_parameter(f"Invalid value {n} for parameter 'max_results' supplied. It must be positive")
    if n > threshold:
        raise invalid_parameter(f"Invalid value {n} for parameter 'max_results' supplied. It must be at most "
                                f"{threshold}")
    return n
