"""`kaip.sdk.display`: the notebook HTML of runs, models, endpoints and jobs — escaped, with SVG charts that cope with
one point, constant values, NaN/inf and nothing at all."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from typing import Any

from kaip.sdk.display import endpoint_html, job_html, model_html, run_html, svg_line_chart

SVG = "{http://www.w3.org/2000/svg}"


def parse_svg(svg: str) -> ET.Element:
    """The chart must be well-formed XML (it is inlined as is)."""
    return ET.fromstring(svg)


def polylines(svg: str) -> list[list[tuple[float, float]]]:
    out = []
    for line in parse_svg(svg).iter(f"{SVG}polyline"):
        out.append([tuple(map(float, p.split(","))) for p in line.get("points", "").split()])
    return out


def texts(svg: str) -> list[str]:
    return ["".join(t.itertext()) for t in parse_svg(svg).iter(f"{SVG}text")]


def run_doc(name: str = "lr-0.01", **info: Any) -> dict[str, Any]:
    return {"info": {"run_id": "abc123", "run_name": name, "status": "FINISHED", "start_time": 1_000_000,
                     "end_time": 1_000_000 + 83_000, "experiment_id": "7",
                     "artifact_uri": "mlflow-artifacts:/7/abc123/artifacts", **info},
            "data": {"metrics": [{"key": "loss", "value": 0.25, "step": 3, "timestamp": 5},
                                 {"key": "accuracy", "value": 0.9, "step": 3, "timestamp": 5}],
                     "params": [{"key": "lr", "value": "0.01"}, {"key": "epochs", "value": "3"}],
                     "tags": [{"key": "mlflow.runName", "value": name},
                              {"key": "kaip.base_model", "value": "models:/base/1"}]}}


# ---- svg_line_chart -------------------------------------------------------------------------------------------------


def test_chart_scales_each_series_into_the_plot_with_min_max_labels_and_legend() -> None:
    svg = svg_line_chart({"loss": [(1, 2.0), (2, 1.0), (3, 0.5)], "eval_loss": [(1, 2.5), (3, 0.75)]},
                         width=400, height=200, title="loss")
    lines = polylines(svg)
    assert len(lines) == 2 and [len(line) for line in lines] == [3, 2]
    xs = [x for line in lines for x, _ in line]
    ys = [y for line in lines for _, y in line]
    assert 0 < min(xs) < max(xs) <= 400 and 0 < min(ys) < max(ys) <= 200
    loss = lines[0]
    assert loss[0][0] < loss[1][0] < loss[2][0]  # steps left to right
    assert loss[0][1] < loss[1][1] < loss[2][1]  # a falling loss goes down the page (SVG y grows downwards)
    labels = texts(svg)
    assert {"loss", "eval_loss", "2.5", "0.5", "1", "3"} <= set(labels), labels  # title, legend, axis extremes


def test_chart_single_point_constant_nonfinite_and_empty() -> None:
    one = svg_line_chart({"loss": [(5, 1.5)]})
    assert len(polylines(one)) == 1 and len(list(parse_svg(one).iter(f"{SVG}circle"))) == 1  # a dot, not nothing
    flat = polylines(svg_line_chart({"lr": [(1, 0.1), (2, 0.1), (3, 0.1)]}))[0]
    assert len({y for _, y in flat}) == 1 and all(math.isfinite(y) for _, y in flat)  # no division by zero
    mixed = polylines(svg_line_chart({"loss": [(1, 1.0), (2, math.nan), (3, math.inf), (4, -math.inf), (5, 0.5)]}))
    assert len(mixed[0]) == 2  # NaN and ±inf are left out
    for empty in ({}, {"loss": []}, {"loss": [(1, math.nan)]}):
        svg = svg_line_chart(empty)
        assert polylines(svg) == [] and "no data" in texts(svg)


def test_chart_escapes_keys_and_title_and_thins_long_series() -> None:
    svg = svg_line_chart({"<b>x</b>": [(i, float(i)) for i in range(5000)]}, title="a & b")
    parse_svg(svg)  # still well-formed
    assert "<b>" not in svg and "&lt;b&gt;" in svg and "a &amp; b" in svg
    [line] = polylines(svg)
    assert len(line) <= 1000 and line[-1][0] > line[0][0]


# ---- runs and models ---------------------------------------------------------------------------------------------


def test_run_html_header_latest_metrics_params_and_loss_curve() -> None:
    doc = run_doc()
    doc["data"]["metrics"].append({"key": "loss", "value": 0.9, "step": 1, "timestamp": 9})  # older step
    out = run_html(doc, {"loss": [(1, 0.9), (2, 0.5), (3, 0.25)], "accuracy": [(3, 0.9)]})
    assert "Run lr-0.01" in out and "abc123" in out and "FINISHED" in out and "1m 23s" in out
    rows = dict(re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td><td>\d+</td></tr>", out))
    assert rows == {"accuracy": "0.9", "loss": "0.25"}  # the latest point per key
    assert "<td>lr</td><td>0.01</td>" in out and "params</summary>" not in out  # few params: shown open
    svg = out[out.index("<svg"):out.index("</svg>") + 6]
    assert len(polylines(svg)) == 1  # loss only, not accuracy
    assert "<summary>1 tag</summary>" in out and "models:/base/1" in out  # Kaip's tags, collapsed
    assert "mlflow.runName" not in out


def test_run_html_escapes_everything_and_collapses_long_params() -> None:
    evil = "<script>alert(1)</script>"
    doc = run_doc(name=evil, status="RUNNING", end_time=None)
    doc["data"]["params"] = [{"key": f"p{i}", "value": evil} for i in range(30)]
    doc["data"]["metrics"] = [{"key": evil, "value": 1, "step": 0, "timestamp": 0}]
    out = run_html(doc, {evil + "loss": [(0, 1.0), (1, 0.5)]})
    assert "<script>" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "<details><summary>30 params</summary>" in out
    assert "running for" in out


def test_run_html_without_metrics_or_history() -> None:
    out = run_html({"info": {"run_id": "r1", "status": "FAILED"}, "data": {}}, {})
    assert "Run r1" in out and "FAILED" in out and "<svg" not in out and "<table" not in out


def test_model_html_versions_aliases_and_lineage() -> None:
    model = {"name": "support-bot", "description": "answers <questions>",
             "aliases": [{"alias": "champion", "version": "2"}], "tags": [{"key": "team", "value": "a"}]}
    versions = [{"version": "1", "status": "READY", "source": "mlflow-artifacts:/1/r1/artifacts/model",
                 "run_id": "r1", "tags": []},
                {"version": "2", "status": "READY", "source": "mlflow-artifacts:/1/r2/artifacts/model",
                 "run_id": "r2", "aliases": ["candidate"], "tags": [{"key": "metric.loss", "value": "0.25"}]}]
    lineage = {"root": "modelversion:ns/support-bot/2",
               "nodes": [{"id": "modelversion:ns/support-bot/2", "kind": "modelversion", "name": "support-bot/2",
                          "uri": "models:/support-bot/2", "attributes": {"status": "READY"}},
                         {"id": "run:r2", "kind": "run", "name": "lr-<0.01>", "uri": "runs:/r2",
                          "attributes": {"status": "FINISHED"}},
                         {"id": "dataset:ns/5eed", "kind": "dataset", "name": "chats",
                          "attributes": {"digest": "5eed5eed5eed5eed"}}],
               "edges": [{"source": "run:r2", "target": "modelversion:ns/support-bot/2", "relation": "produced"},
                         {"source": "dataset:ns/5eed", "target": "run:r2", "relation": "input-to"}]}
    out = model_html(model, versions, lineage)
    assert "Model support-bot" in out and "answers &lt;questions&gt;" in out
    assert out.index("<td>2</td>") < out.index("<td>1</td>")  # newest version first
    row2 = out[out.index("<td>2</td>"):out.index("<td>1</td>")]
    assert "@candidate" in row2 and "@champion" in row2 and "metric.loss=0.25" in row2
    assert "—produced→" in out and "—input-to→" in out and "lr-&lt;0.01&gt;" in out and "5eed5eed5eed" in out
    assert "no versions" in model_html({"name": "empty"}, [])


# ---- resources ---------------------------------------------------------------------------------------------------


def test_endpoint_html_url_readiness_traffic_and_storage() -> None:
    isvc = {"metadata": {"name": "chatbot", "namespace": "team-a"},
            "spec": {"predictor": {"canaryTrafficPercent": 10,
                                   "model": {"modelFormat": {"name": "huggingface"},
                                             "storageUri": "models:/chatbot/2"}}},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}],
                       "components": {"predictor": {
                           "latestReadyRevision": "chatbot-predictor-00002",
                           "latestCreatedRevision": "chatbot-predictor-00002",
                           "traffic": [{"revisionName": "chatbot-predictor-00002", "percent": 10,
                                        "latestRevision": True},
                                       {"revisionName": "chatbot-predictor-00001", "percent": 90,
                                        "latestRevision": False, "tag": "prev"}]}}}}
    out = endpoint_html(isvc, "http://127.0.0.1:8740/serving/team-a/chatbot")
    assert 'href="http://127.0.0.1:8740/serving/team-a/chatbot"' in out
    assert "InferenceService team-a/chatbot" in out and "models:/chatbot/2" in out and "canary traffic 10%" in out
    assert re.search(r"chatbot-predictor-00001</code></td><td>90%", out)
    assert re.search(r"chatbot-predictor-00002</code></td><td>10%", out)
    assert "latest ready <code>chatbot-predictor-00002</code>" in out


def test_endpoint_html_old_style_predictor_not_ready_and_no_script_urls() -> None:
    isvc = {"metadata": {"name": "iris"}, "spec": {"predictor": {"sklearn": {"storageUri": "file:///m"}}},
            "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "RevisionMissing",
                                       "message": "<b>no</b> replicas"}]}}
    out = endpoint_html(isvc, "javascript:alert(1)")
    assert "file:///m" in out and "RevisionMissing" in out and "&lt;b&gt;no&lt;/b&gt;" in out
    assert "href" not in out  # only http(s) URLs become links


def test_job_html_trainjob_progress_and_conditions() -> None:
    job = {"kind": "TrainJob", "metadata": {"name": "faq-lora", "namespace": "default"},
           "status": {"conditions": [{"type": "Created", "status": "True", "reason": "JobSetCreated"}],
                      "trainerStatus": {"progressPercentage": 40, "estimatedRemainingSeconds": 90,
                                        "metrics": [{"name": "step", "value": "12"}, {"name": "loss", "value": "1.5"}]},
                      "kaip": {"published": {"runId": "r9", "modelVersion": "faq/3"}}}}
    out = job_html(job)
    assert "TrainJob default/faq-lora" in out
    assert '<progress value="40" max="100"></progress> 40%' in out and "1m 30s left" in out
    assert "step=<b>12</b>" in out and "loss=<b>1.5</b>" in out
    assert "JobSetCreated" in out and "models:/faq/3" in out and "r9" in out


def test_job_html_pipelinerun_tasks() -> None:
    run = {"kind": "PipelineRun", "metadata": {"name": "nightly"},
           "status": {"phase": "Failed", "message": "task <train> failed",
                      "conditions": [{"type": "Succeeded", "status": "False", "reason": "TaskFailed"}],
                      "tasks": {"prepare": {"phase": "Succeeded"}, "train": {"phase": "Failed", "message": "exit 1"}}}}
    out = job_html(run)
    assert "PipelineRun nightly" in out and "task &lt;train&gt; failed" in out
    assert re.search(r"<td>train</td><td><span[^>]*>Failed</span></td><td>exit 1</td>", out)
    assert "<progress" not in out
