"""Lineage: a graph of what was made from what, across the platform.

Nodes are named by keys: `dataset:<namespace>/<digest>`, `run:<run_id>`, `modelversion:<namespace>/<name>/<version>`,
`model:<uri>` (a base model outside the registry); later subsystems add their own kinds
(`inferenceservice:<ns>/<name>/<revision>`, ...). Writers call `record_node` / `record_edge` when the
event happens (a run logs its inputs, a version is registered from a run); both are idempotent.
`graph` walks edges both ways from a node and fills in the live details of runs and model versions
from the tracking tables, so the picture never goes stale.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, or_, select

from kaip.store.store import Store
from kaip.store.tables import (
    lineage_edges,
    lineage_nodes,
    registry_aliases,
    registry_models,
    registry_versions,
    tracking_experiments,
    tracking_latest_metrics,
    tracking_params,
    tracking_run_tags,
    tracking_runs,
)
from kaip.tracking.access import Access
from kaip.tracking.db import Database
from kaip.tracking.errors import invalid_parameter, not_found

GIT_COMMIT_TAG = "mlflow.source.git.commit"
MAX_NODES = 500


def run_key(run_id: str) -> str:
    return f"run:{run_id}"


def dataset_key(namespace: str, digest: str) -> str:
    return f"dataset:{namespace}/{digest}"


def model_version_key(namespace: str, name: str, version: int | str) -> str:
    return f"modelversion:{namespace}/{name}/{version}"


def model_node_for_uri(store: Store, uri: str, namespace: str) -> tuple[str, str, str]:
    """(key, kind, name) of the node a model URI names: a registered version when it resolves, else an
    external model."""
    from kaip.tracking.uris import is_model_uri, resolve_model_uri

    if is_model_uri(uri):
        try:
            resolved = resolve_model_uri(store, uri, namespace)
            return (model_version_key(namespace, resolved.name, resolved.version), "modelversion",
                    f"{resolved.name}/{resolved.version}")
        except Exception as err:  # an unresolvable URI is still worth recording as what was said
            if getattr(err, "error_code", None) is None:
                raise
    return f"model:{uri}", "model", uri


class LineageStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = Database(store)

    def record_node(self, key: str, kind: str, namespace: str, name: str, attrs: dict[str, Any]) -> None:
        row = {"key": key, "kind": kind, "namespace": namespace, "name": name,
               "attrs": json.dumps(attrs, sort_keys=True), "created_at": time.time()}
        self.db.write(lambda conn: self.db.upsert(conn, lineage_nodes, [row], ["key"], ["kind", "name", "attrs"]))

    def record_edge(self, src: str, dst: str, relation: str, namespace: str) -> None:
        row = {"src": src, "dst": dst, "relation": relation, "namespace": namespace, "created_at": time.time()}
        self.db.write(lambda conn: self.db.upsert(conn, lineage_edges, [row], ["src", "dst", "relation"], []))

    # ---- reading ------------------------------------------------------------------------------------

    def key_for_uri(self, uri: str, namespace: str) -> str:
        """The node a user-facing URI names: models:/..., runs:/ID, dataset:DIGEST or a raw node key."""
        from kaip.tracking.uris import is_model_uri, parse_runs_uri, resolve_model_uri

        if is_model_uri(uri):
            resolved = resolve_model_uri(self.store, uri, namespace)
            return model_version_key(namespace, resolved.name, resolved.version)
        if uri.startswith("runs:/"):
            return run_key(parse_runs_uri(uri)[0])
        if ":" in uri:
            return uri
        raise invalid_parameter(f"Invalid lineage URI {uri!r}: use models:/NAME/VERSION, models:/NAME@ALIAS, "
                                "runs:/RUN_ID or a node key such as dataset:NAMESPACE/DIGEST")

    def graph(self, access: Access, root: str, *, depth: int = 10) -> dict[str, Any]:
        """Nodes and edges reachable from `root` (upstream and downstream), limited to what `access` may read."""
        def fn(conn: Connection) -> dict[str, Any]:
            edges: dict[tuple[str, str, str], None] = {}
            seen = {root: 0}
            queue = deque([root])
            while queue and len(seen) < MAX_NODES:
                key = queue.popleft()
                if seen[key] >= depth:
                    continue
                for src, dst, rel in conn.execute(select(lineage_edges.c.src, lineage_edges.c.dst,
                                                         lineage_edges.c.relation).where(
                        or_(lineage_edges.c.src == key, lineage_edges.c.dst == key))):
                    edges[(src, dst, rel)] = None
                    for other in (src, dst):
                        if other not in seen:
                            seen[other] = seen[key] + 1
                            queue.append(other)
            nodes = self._describe(conn, list(seen))
            visible = {k for k, n in nodes.items() if n is not None and access.can_read(n["namespace"])}
            if root not in visible:
                raise not_found(f"No lineage node {root!r} (or it is not visible to you)")
            return {"root": root,
                    "nodes": [nodes[k] for k in seen if k in visible],
                    "edges": [{"source": s, "target": d, "relation": r} for s, d, r in edges
                              if s in visible and d in visible]}

        return self.db.read(fn)

    def _describe(self, conn: Connection, keys: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        keys = list(keys)
        out: dict[str, dict[str, Any] | None] = {k: None for k in keys}
        for row in conn.execute(select(lineage_nodes).where(lineage_nodes.c.key.in_(keys))):
            out[row.key] = {"id": row.key, "kind": row.kind, "namespace": row.namespace, "name": row.name,
                            "attributes": json.loads(row.attrs)}
        run_ids = [k.split(":", 1)[1] for k in keys if k.startswith("run:")]
        if run_ids:
            self._describe_runs(conn, run_ids, out)
        for key in keys:
            if key.startswith("modelversion:"):
                self._describe_version(conn, key, out)
            elif out[key] is None and key.startswith("model:"):
                out[key] = {"id": key, "kind": "model", "namespace": "", "name": key[6:], "attributes": {}}
        return out

    @staticmethod
    def _describe_runs(conn: Connection, run_ids: list[str], out: dict[str, dict[str, Any] | None]) -> None:
        r, e = tracking_runs, tracking_experiments
        params: dict[str, dict[str, str]] = {i: {} for i in run_ids}
        metrics: dict[str, dict[str, Any]] = {i: {} for i in run_ids}
        commits: dict[str, str] = {}
        for rid, k, v in conn.execute(select(tracking_params.c.run_id, tracking_params.c.key,
                                             tracking_params.c.value).where(tracking_params.c.run_id.in_(run_ids))):
            params[rid][k] = v
        lm = tracking_latest_metrics
        for rid, k, v, nan in conn.execute(select(lm.c.run_id, lm.c.key, lm.c.value, lm.c.is_nan)
                                           .where(lm.c.run_id.in_(run_ids))):
            metrics[rid][k] = "NaN" if nan else v
        for rid, v in conn.execute(select(tracking_run_tags.c.run_id, tracking_run_tags.c.value).where(
                tracking_run_tags.c.run_id.in_(run_ids), tracking_run_tags.c.key == GIT_COMMIT_TAG)):
            commits[rid] = v
        for row in conn.execute(select(r, e.c.name.label("experiment")).join(
                e, e.c.experiment_id == r.c.experiment_id).where(r.c.run_id.in_(run_ids))):
            attrs: dict[str, Any] = {"experiment": row.experiment, "experiment_id": str(row.experiment_id),
                                     "status": row.status, "user": row.user_id, "start_time": row.start_time,
                                     "params": params[row.run_id], "metrics": metrics[row.run_id]}
            if row.run_id in commits:
                attrs["code_version"] = commits[row.run_id]
            out[f"run:{row.run_id}"] = {"id": f"run:{row.run_id}", "kind": "run", "namespace": row.namespace,
                                        "name": row.name, "uri": f"runs:/{row.run_id}", "attributes": attrs}

    @staticmethod
    def _describe_version(conn: Connection, key: str, out: dict[str, dict[str, Any] | None]) -> None:
        rest = key.split(":", 1)[1]
        namespace, _, tail = rest.partition("/")
        name, _, version = tail.rpartition("/")
        if not version.isdigit():
            return
        m, v = registry_models, registry_versions
        row = conn.execute(select(v, m.c.name.label("model_name")).join(m, m.c.model_id == v.c.model_id).where(
            m.c.namespace == namespace, m.c.name == name, v.c.version == int(version))).first()
        if row is None:
            return
        aliases = [a for (a,) in conn.execute(select(registry_aliases.c.alias).where(
            registry_aliases.c.model_id == row.model_id, registry_aliases.c.version == row.version))]
        recorded = (out.get(key) or {}).get("attributes", {})
        attrs = {**recorded, "source": row.source, "status": row.status, "stage": row.current_stage,
                 "aliases": sorted(aliases), "run_id": row.run_id, "created": row.creation_time}
        out[key] = {"id": key, "kind": "modelversion", "namespace": namespace, "name": f"{name}/{version}",
                    "uri": f"models:/{name}/{version}", "attributes": attrs}
