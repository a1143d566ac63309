"""The tracking services without HTTP: the filter grammar (pure), and search, metrics, registry, lineage and
artifacts on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kaip.artifacts import ArtifactPathError, ArtifactStore
from kaip.store import Store
from kaip.tracking.access import AllowAll
from kaip.tracking.errors import MlflowError
from kaip.tracking.filters import (
    Comparison,
    OrderBy,
    decode_page_token,
    encode_page_token,
    parse_filter,
    parse_order_by,
)
from kaip.tracking.lineage import LineageStore, model_version_key, run_key
from kaip.tracking.registry import RegistryService
from kaip.tracking.service import TrackingService
from kaip.tracking.uris import parse_model_uri, resolve_model_uri

ADMIN = AllowAll("admin")


# ---- the filter grammar ---------------------------------------------------------------------------

def test_filter_parses_every_identifier_type_and_operator() -> None:
    parsed = parse_filter("metrics.loss < 0.5 and params.lr = '0.01' AND tags.`team name` LIKE 'nlp%' "
                          "and attributes.status IN ('FINISHED', 'RUNNING') and metric.\"val acc\" >= 1e-3 "
                          "and tags.x ILIKE \"%A%\" and params.opt IS NOT NULL and run.start_time > 5 "
                          "and attr.run_name != 'x''y' and tags.t IS NULL and attributes.run_id NOT IN ('a')")
    assert parsed == [
        Comparison("metric", "loss", "<", 0.5), Comparison("param", "lr", "=", "0.01"),
        Comparison("tag", "team name", "LIKE", "nlp%"),
        Comparison("attribute", "status", "IN", ("FINISHED", "RUNNING")),
        Comparison("metric", "val acc", ">=", 0.001), Comparison("tag", "x", "ILIKE", "%A%"),
        Comparison("param", "opt", "IS NOT NULL", None), Comparison("attribute", "start_time", ">", 5),
        Comparison("attribute", "run_name", "!=", "x'y"), Comparison("tag", "t", "IS NULL", None),
        Comparison("attribute", "run_id", "NOT IN", ("a",))]
    assert parse_filter("") == [] and parse_filter(None) == []


@pytest.mark.parametrize(("text", "message"), [
    ("metrics.loss < 'a'", "Expected a numeric value for metric 'loss'"),
    ("params.lr > '1'", "Invalid comparator '>' for param 'lr'"),
    ("bogus.x = '1'", "Invalid entity type 'bogus'"),
    ("loss < 1", "Invalid identifier 'loss'"),
    ("attributes.color = 'red'", "Invalid attribute key 'color'"),
    ("metrics.a < 1 or metrics.b > 2", "OR is not supported"),
    ("metrics.a <", "ends too early"),
    ("params.a = 1", "Expected a quoted string value"),
    ("metrics.a IN ('1')", "Invalid comparator 'IN' for numeric metric"),
    ("params.a = 'x' metrics.b > 1", "expected AND"),
    ("params.a = 'x' and", "ends too early"),
    ("params.a ~ 'x'", "cannot parse"),
])
def test_filter_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(MlflowError) as exc:
        parse_filter(text)
    assert exc.value.error_code == "INVALID_PARAMETER_VALUE"
    assert message in exc.value.message


def test_order_by_and_page_tokens() -> None:
    assert parse_order_by(["metrics.loss DESC", "start_time", "params.`a b` asc", "tags.x"]) == [
        OrderBy("metric", "loss", False), OrderBy("attribute", "start_time", True),
        OrderBy("param", "a b", True), OrderBy("tag", "x", True)]
    with pytest.raises(MlflowError):
        parse_order_by(["metrics.loss sideways"])
    assert decode_page_token(encode_page_token(1234)) == 1234 and decode_page_token(None) == 0
    for bad in ("garbage", encode_page_token(-1)):
        with pytest.raises(MlflowError):
            decode_page_token(bad)


def test_model_uris() -> None:
    assert parse_model_uri("models:/chat/3").version == "3"
    assert parse_model_uri("models:/chat@champion").alias == "champion"
    assert parse_model_uri("models:/chat/latest/sub/dir").path == "sub/dir"
    for bad in ("models:/chat", "models:/chat/x", "runs:/abc/model", "models:/a@b@c"):
        with pytest.raises(MlflowError):
            parse_model_uri(bad)


# ---- services on both databases -------------------------------------------------------------------

@dataclass(frozen=True)
class Rights:
    user: str
    read: frozenset[str]
    write: frozenset[str]

    def can_read(self, namespace: str) -> bool:
        return namespace in self.read

    def can_write(self, namespace: str) -> bool:
        return namespace in self.write


def _run(svc: TrackingService, exp: str, name: str, **kw: Any) -> str:
    run = svc.create_run(ADMIN, "team-a", {"experiment_id": exp, "run_name": name, "start_time": kw.pop("start", 1)})
    rid = run["info"]["run_id"]
    svc.log_batch(ADMIN, rid, metrics=[{"key": k, "value": v, "timestamp": 1, "step": 0}
                                       for k, v in kw.get("metrics", {}).items()],
                  params=[{"key": k, "value": v} for k, v in kw.get("params", {}).items()],
                  tags=[{"key": k, "value": v} for k, v in kw.get("tags", {}).items()])
    if "status" in kw:
        svc.update_run(ADMIN, {"run_id": rid, "status": kw["status"], "end_time": 10})
    return rid


def test_search_runs_filters_orders_and_pages(store: Store) -> None:
    svc = TrackingService(store)
    exp = svc.create_experiment(ADMIN, "team-a", "search")
    a = _run(svc, exp, "alpha", start=1, metrics={"loss": 0.2, "acc": 0.9}, params={"lr": "0.01"},
             tags={"team": "NLP-core"}, status="FINISHED")
    b = _run(svc, exp, "beta", start=2, metrics={"loss": 0.7}, params={"lr": "0.1"}, tags={"team": "nlp-edge"})
    c = _run(svc, exp, "gamma", start=3, metrics={"acc": 0.5}, params={"lr": "0.01", "opt": "adam"},
             status="FAILED")

    def ids(filter_string: str = "", order_by: list[str] | None = None) -> list[str]:
        found = svc.search_runs(ADMIN, [exp], filter_string=filter_string, order_by=order_by)
        return [r["info"]["run_id"] for r in found["runs"]]

    assert ids() == [c, b, a]  # newest first by default
    assert ids("metrics.loss < 0.5") == [a]
    assert ids("metrics.loss >= 0.2 and params.lr = '0.1'") == [b]
    assert ids("params.lr != '0.1'") == [c, a]
    assert ids("tags.team LIKE 'nlp%'") == [b]  # LIKE is case-sensitive, as in MLflow
    assert ids("tags.team ILIKE 'nlp%'") == [b, a]
    assert ids("params.opt IS NULL") == [b, a] and ids("params.opt IS NOT NULL") == [c]
    assert ids("attributes.status IN ('FINISHED', 'FAILED')") == [c, a]
    assert ids("attributes.run_name = 'beta'") == [b] and ids("attributes.start_time > 1") == [c, b]
    assert ids(f"attributes.run_id IN ('{a}', '{c}')") == [c, a]
    assert ids(f"attributes.artifact_uri LIKE '%{b}%'") == [b]
    assert ids(order_by=["metrics.loss ASC"]) == [a, b, c]  # runs without the metric go last
    assert ids(order_by=["metrics.loss DESC"]) == [b, a, c]
    assert ids(order_by=["params.lr DESC", "attributes.run_name"]) == [b, a, c]

    first = svc.search_runs(ADMIN, [exp], max_results=2)
    second = svc.search_runs(ADMIN, [exp], max_results=2, page_token=first["next_page_token"])
    assert [r["info"]["run_id"] for r in first["runs"] + second["runs"]] == [c, b, a]
    assert "next_page_token" not in second
    run = next(r for r in first["runs"] if r["info"]["run_id"] == c)
    assert run["data"]["params"] == [{"key": "lr", "value": "0.01"}, {"key": "opt", "value": "adam"}]

    svc.set_run_lifecycle(ADMIN, b, "deleted")
    assert ids() == [c, a]
    assert [r["info"]["run_id"] for r in svc.search_runs(ADMIN, [exp], run_view_type="DELETED_ONLY")["runs"]] == [b]


def test_metrics_history_latest_value_nan_and_atomic_batches(store: Store) -> None:
    svc = TrackingService(store)
    exp = svc.create_experiment(ADMIN, "team-a", "metrics")
    rid = svc.create_run(ADMIN, "team-a", {"experiment_id": exp})["info"]["run_id"]
    for step, value in ((5, 0.5), (3, 0.3), (5, 0.4), (7, float("nan")), (6, float("-inf"))):
        svc.log_metric(ADMIN, {"run_id": rid, "key": "loss", "value": value, "timestamp": 100 + step, "step": step})
    latest = svc.get_run(ADMIN, rid)["data"]["metrics"]
    assert latest == [{"key": "loss", "value": "NaN", "timestamp": 107, "step": 7}]  # highest step wins
    history = svc.get_metric_history(ADMIN, rid, "loss")["metrics"]
    assert [(m["step"], m["value"]) for m in history] == [(3, 0.3), (5, 0.5), (5, 0.4), (6, -1.7976931348623157e308),
                                                          (7, "NaN")]
    page = svc.get_metric_history(ADMIN, rid, "loss", max_results=2)
    assert len(page["metrics"]) == 2 and page["next_page_token"]

    # A batch whose param conflicts with a logged one writes nothing at all.
    svc.log_param(ADMIN, {"run_id": rid, "key": "lr", "value": "0.01"})
    with pytest.raises(MlflowError, match="Changing param values is not allowed"):
        svc.log_batch(ADMIN, rid, metrics=[{"key": "acc", "value": 1, "timestamp": 1}],
                      params=[{"key": "new", "value": "1"}, {"key": "lr", "value": "0.1"}],
                      tags=[{"key": "t", "value": "v"}])
    run = svc.get_run(ADMIN, rid)
    assert [m["key"] for m in run["data"]["metrics"]] == ["loss"]
    assert [p["key"] for p in run["data"]["params"]] == ["lr"]
    assert "t" not in {t["key"] for t in run["data"]["tags"]}
    svc.log_param(ADMIN, {"run_id": rid, "key": "lr", "value": "0.01"})  # the same value again is fine

    with pytest.raises(MlflowError, match="at most 1000 metrics"):
        svc.log_batch(ADMIN, rid, metrics=[{"key": "m", "value": 1, "timestamp": 1}] * 1001)
    with pytest.raises(MlflowError, match="Duplicate parameter keys"):
        svc.log_batch(ADMIN, rid, params=[{"key": "p", "value": "1"}, {"key": "p", "value": "2"}])
    for bad in ({"key": "x", "value": "abc", "timestamp": 1}, {"key": "../x", "value": 1, "timestamp": 1},
                {"key": "x", "value": 1, "timestamp": -1}, {"key": "x" * 251, "value": 1, "timestamp": 1}):
        with pytest.raises(MlflowError) as exc:
            svc.log_metric(ADMIN, {"run_id": rid, **bad})
        assert exc.value.error_code == "INVALID_PARAMETER_VALUE"
    assert svc.get_metric_history(ADMIN, rid, "x")["metrics"] == []


def test_experiments_names_default_and_access(store: Store) -> None:
    svc = TrackingService(store)
    exp = svc.create_experiment(ADMIN, "team-a", "shared", tags=[{"key": "owner", "value": "a"}])
    other = svc.create_experiment(ADMIN, "team-b", "shared")
    assert exp != other
    with pytest.raises(MlflowError) as exc:
        svc.create_experiment(ADMIN, "team-a", "shared")
    assert exc.value.error_code == "RESOURCE_ALREADY_EXISTS"
    got = svc.get_experiment_by_name(ADMIN, "team-a", "shared")
    assert got["experiment_id"] == exp and got["tags"] == [{"key": "owner", "value": "a"}]

    # Experiment "0" is each namespace's Default experiment.
    run = svc.create_run(ADMIN, "team-a", {"experiment_id": "0"})
    default = svc.get_experiment(ADMIN, "team-a", "0")
    assert default["name"] == "Default" and run["info"]["experiment_id"] == default["experiment_id"]
    assert svc.get_experiment(ADMIN, "team-b", "0")["experiment_id"] != default["experiment_id"]

    reader = Rights("reader", frozenset({"team-a"}), frozenset())
    outsider = Rights("outsider", frozenset({"team-b"}), frozenset({"team-b"}))
    assert svc.get_experiment(reader, "team-a", exp)["name"] == "shared"
    with pytest.raises(MlflowError) as exc:
        svc.log_metric(reader, {"run_id": run["info"]["run_id"], "key": "x", "value": 1, "timestamp": 1})
    assert exc.value.error_code == "PERMISSION_DENIED"
    for call in (lambda: svc.get_experiment(outsider, "team-b", exp), lambda: svc.get_run(outsider,
                                                                                         run["info"]["run_id"]),
                 lambda: svc.search_runs(outsider, [exp])):
        with pytest.raises(MlflowError) as exc:
            call()
        assert exc.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    names = [e["name"] for e in svc.search_experiments(reader, ["team-a"])["experiments"]]
    assert sorted(names) == ["Default", "shared"]
    assert svc.search_experiments(reader, ["team-a"], filter_string="name LIKE 'sh%'")["experiments"][0]["name"] \
        == "shared"
    svc.delete_experiment(ADMIN, exp)
    assert svc.search_experiments(ADMIN, ["team-a"])["experiments"][0]["name"] == "Default"
    with pytest.raises(MlflowError, match="is deleted"):
        svc.create_experiment(ADMIN, "team-a", "shared")


def test_registry_aliases_uris_and_lineage(store: Store, tmp_path: Path) -> None:
    svc, reg = TrackingService(store), RegistryService(store)
    exp = svc.create_experiment(ADMIN, "team-a", "reg")
    rid = svc.create_run(ADMIN, "team-a", {"experiment_id": exp})["info"]["run_id"]
    svc.log_inputs(ADMIN, rid, [{"dataset": {"name": "train", "digest": "d1g3st", "source_type": "local",
                                             "source": "/data/train.csv"},
                                 "tags": [{"key": "mlflow.data.context", "value": "training"}]}])
    svc.set_tag(ADMIN, {"run_id": rid, "key": "kaip.base_model", "value": "hf://base"})
    svc.record_artifact(f"{exp}/{rid}/artifacts/model/w.bin", 3, "ab" * 32)
    reg.create_model(ADMIN, "team-a", "chat")
    with pytest.raises(MlflowError) as exc:
        reg.create_model(ADMIN, "team-a", "chat")
    assert exc.value.error_code == "RESOURCE_ALREADY_EXISTS"
    source = f"mlflow-artifacts:/{exp}/{rid}/artifacts/model"
    v1 = reg.create_version(ADMIN, "team-a", {"name": "chat", "source": source, "run_id": rid})
    v2 = reg.create_version(ADMIN, "team-a", {"name": "chat", "source": "file:///elsewhere"})
    assert (v1["version"], v2["version"]) == ("1", "2")
    reg.set_alias(ADMIN, "team-a", "chat", "champion", "1")
    reg.set_alias(ADMIN, "team-a", "chat", "champion", "2")  # moving an alias
    assert reg.version_by_alias(ADMIN, "team-a", "chat", "champion")["version"] == "2"
    reg.set_alias(ADMIN, "team-a", "chat", "champion", "1")

    resolved = resolve_model_uri(store, "models:/chat@champion", "team-a", artifacts_root=tmp_path)
    assert (resolved.version, resolved.run_id) == ("1", rid)
    assert resolved.local_path == tmp_path / f"{exp}/{rid}/artifacts/model"
    assert resolve_model_uri(store, "models:/chat/latest", "team-a").version == "2"
    assert resolve_model_uri(store, "models:/chat/2", "team-a").source == "file:///elsewhere"
    for uri, ns in (("models:/chat/9", "team-a"), ("models:/chat/1", "team-b"), ("models:/chat@nope", "team-a")):
        with pytest.raises(MlflowError) as exc:
            resolve_model_uri(store, uri, ns)
        assert exc.value.error_code == "RESOURCE_DOES_NOT_EXIST"

    lineage = LineageStore(store)
    graph = lineage.graph(ADMIN, lineage.key_for_uri("models:/chat@champion", "team-a"))
    nodes = {n["id"]: n for n in graph["nodes"]}
    mv = model_version_key("team-a", "chat", 1)
    assert graph["root"] == mv
    assert nodes["dataset:team-a/d1g3st"]["attributes"]["source"] == "/data/train.csv"
    assert nodes[mv]["attributes"]["files"] == 1 and nodes[mv]["attributes"]["aliases"] == ["champion"]
    expected_digest = hashlib.sha256(f"w.bin\t{'ab' * 32}\n".encode()).hexdigest()
    assert nodes[mv]["attributes"]["content_digest"] == f"sha256:{expected_digest}"
    assert {(e["source"], e["target"], e["relation"]) for e in graph["edges"]} == {
        ("dataset:team-a/d1g3st", run_key(rid), "input-to"), (run_key(rid), mv, "produced"),
        ("model:hf://base", run_key(rid), "base-model-of")}
    # A model version registered from a model version: base model resolves to the registry node.
    rid2 = svc.create_run(ADMIN, "team-a", {"experiment_id": exp})["info"]["run_id"]
    svc.set_tag(ADMIN, {"run_id": rid2, "key": "kaip.base_model", "value": "models:/chat@champion"})
    down = lineage.graph(ADMIN, mv)
    assert (mv, run_key(rid2), "base-model-of") in {(e["source"], e["target"], e["relation"]) for e in down["edges"]}
    with pytest.raises(MlflowError):
        lineage.graph(Rights("b", frozenset({"team-b"}), frozenset()), mv)


def test_artifact_store_writes_atomically_with_digests(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    data = os.urandom(3 * 1024 * 1024 + 5)
    written = store.write_chunks("1/run/artifacts/model/w.bin", [data[:1000], data[1000:]])
    assert written.sha256 == hashlib.sha256(data).hexdigest() and written.size == len(data)
    assert store.read_bytes("1/run/artifacts/model/w.bin") == data
    assert [(f.path, f.is_dir) for f in store.list("1/run/artifacts")] == [("1/run/artifacts/model", True)]

    def failing() -> Any:
        yield b"partial"
        raise OSError("disk gone")

    with pytest.raises(OSError):
        store.write_chunks("1/run/artifacts/model/w.bin", failing())
    assert store.read_bytes("1/run/artifacts/model/w.bin") == data  # the old file is intact
    assert store.walk("1") == ["1/run/artifacts/model/w.bin"]  # no temp file left behind
    for bad in ("../x", "/etc/passwd", "a/../../x", "a\\b", ""):
        with pytest.raises(ArtifactPathError):
            store.write_bytes(bad, b"x")
    assert store.delete("1/run") == ["1/run/artifacts/model/w.bin"] and store.walk("1") == []
    assert math.isfinite(written.size)
