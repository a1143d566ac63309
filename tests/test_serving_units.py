"""Pure serving decisions: kinds' validation, runtime selection, storage URIs, traffic, autoscaling, balancing,
Open Inference v2 tensors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from kaip.api import core  # noqa: F401
from kaip.api.errors import ApiError
from kaip.api.serving import INFERENCE_SERVICE, SERVING_RUNTIME
from kaip.api.validation import validate_document
from kaip.serving.autoscaler import Autoscaler, ConcurrencyMeter, Policy, policy_for
from kaip.serving.balancer import Endpoint, pick
from kaip.serving.render import BUILTIN_RUNTIMES, render_container, revision_hash
from kaip.serving.runtimes import oip
from kaip.serving.selection import SelectionError, select_runtime
from kaip.serving.storage import StorageError, resolve_storage_uri
from kaip.serving.traffic import Rollout, WeightedPicker, plan


def isvc(predictor: dict) -> dict:
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "m", "namespace": "default"}, "spec": {"predictor": predictor}}


def invalid_message(doc: dict) -> str:
    with pytest.raises(ApiError) as info:
        validate_document(INFERENCE_SERVICE, doc, namespace=None)
    assert info.value.code == 422
    return info.value.message


def test_isvc_accepts_upstream_shapes_and_refuses_unimplemented_fields_by_path() -> None:
    ok = validate_document(INFERENCE_SERVICE, isvc({
        "minReplicas": 0, "maxReplicas": 3, "scaleMetric": "concurrency", "scaleTarget": 5,
        "containerConcurrency": 10, "timeout": 60, "canaryTrafficPercent": 20,
        "logger": {"mode": "all", "url": "http://sink/"},
        "model": {"modelFormat": {"name": "sklearn", "version": "1"}, "protocolVersion": "v2",
                  "storageUri": "/m", "args": ["--x=1"], "env": [{"name": "A", "value": "b"}],
                  "resources": {"requests": {"cpu": "1"}}}}), namespace=None)
    assert ok["spec"]["predictor"]["canaryTrafficPercent"] == 20
    msg = invalid_message(isvc({"sklearn": {"storageUri": "/m", "livenessProbe": {}}, "tolerations": [],
                                "nope": 1}))
    assert "spec.predictor.sklearn.livenessProbe: not implemented" in msg
    assert "spec.predictor.tolerations: not implemented" in msg
    assert "spec.predictor.nope: unknown field" in msg
    assert "exactly one of" in invalid_message(isvc({"sklearn": {}, "huggingface": {}}))
    assert "scales on 'concurrency' or 'rps'" in invalid_message(isvc({"sklearn": {}, "scaleMetric": "cpu"}))
    assert "spec.predictor.canaryTrafficPercent" in invalid_message(isvc({"sklearn": {}, "canaryTrafficPercent": 101}))
    assert "spec.predictor.minReplicas" in invalid_message(isvc({"sklearn": {}, "minReplicas": -1}))


def test_serving_runtime_schema() -> None:
    doc = {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime",
           "metadata": {"name": "rt", "namespace": "default"},
           "spec": {"supportedModelFormats": [{"name": "sklearn", "autoSelect": True, "priority": 0}],
                    "containers": [{"name": "kserve-container", "image": "x"}], "grpcEndpoint": "port:8085"}}
    with pytest.raises(ApiError) as info:
        validate_document(SERVING_RUNTIME, doc, namespace=None)
    assert "spec.supportedModelFormats[0].priority" in info.value.message
    assert "spec.grpcEndpoint: not implemented" in info.value.message


def rt(name: str, formats: list[dict], protocols: list[str] | None = None, disabled: bool = False) -> dict:
    spec: dict = {"supportedModelFormats": formats, "containers": [{"name": "kserve-container"}]}
    if protocols:
        spec["protocolVersions"] = protocols
    if disabled:
        spec["disabled"] = True
    return {"metadata": {"name": name}, "spec": spec}


def test_runtime_selection_follows_kserve() -> None:
    low = rt("low", [{"name": "sklearn", "autoSelect": True, "priority": 1}])
    high = rt("high", [{"name": "sklearn", "autoSelect": True, "priority": 5}])
    manual = rt("manual", [{"name": "sklearn"}])
    sel = select_runtime(model_format="sklearn", format_version=None, protocol="v1", explicit=None,
                         namespaced=[], cluster=[low, high, manual])
    assert sel.name == "high" and sel.kind == "ClusterServingRuntime"
    ns_rt = rt("mine", [{"name": "SKLearn", "autoSelect": True}])
    assert select_runtime(model_format="sklearn", format_version=None, protocol="v1", explicit=None,
                          namespaced=[ns_rt], cluster=[high]).name == "mine"
    assert select_runtime(model_format="sklearn", format_version=None, protocol="v1", explicit="manual",
                          namespaced=[], cluster=[manual]).name == "manual"
    v2only = rt("v2only", [{"name": "onnx", "autoSelect": True}], ["v2"])
    with pytest.raises(SelectionError, match="model type: onnx and protocol v1"):
        select_runtime(model_format="onnx", format_version=None, protocol="v1", explicit=None, namespaced=[],
                       cluster=[v2only])
    with pytest.raises(SelectionError, match="does not support specified framework"):
        select_runtime(model_format="onnx", format_version=None, protocol="v1", explicit="high", namespaced=[],
                       cluster=[high])
    with pytest.raises(SelectionError, match="disabled"):
        select_runtime(model_format="sklearn", format_version=None, protocol="v1", explicit="off", namespaced=[],
                       cluster=[rt("off", [{"name": "sklearn"}], disabled=True)])
    versioned = rt("v1rt", [{"name": "sklearn", "version": "1", "autoSelect": True}])
    assert select_runtime(model_format="sklearn", format_version="1.3", protocol="v1", explicit=None,
                          namespaced=[], cluster=[versioned]).name == "v1rt"
    with pytest.raises(SelectionError):
        select_runtime(model_format="sklearn", format_version="2", protocol="v1", explicit=None, namespaced=[],
                       cluster=[versioned])


def test_storage_uris(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    assert resolve_storage_uri(str(model), namespace="ns", home=tmp_path) == model
    assert resolve_storage_uri(f"file://{model}", namespace="ns", home=tmp_path) == model
    vol = tmp_path / "volumes" / "ns" / "claim" / "iris"
    vol.mkdir(parents=True)
    assert resolve_storage_uri("pvc://claim/iris", namespace="ns", home=tmp_path) == vol.resolve()
    for uri, text in (("s3://bucket/m", "remote scheme"), ("hf://org/model", "import it into the registry"),
                      ("pvc://claim/../../../etc", "leaves the volume"), ("relative/path", "must be absolute"),
                      (str(tmp_path / "missing"), "does not exist"), ("ftp://x/y", "unsupported scheme")):
        with pytest.raises(StorageError, match=text):
            resolve_storage_uri(uri, namespace="ns", home=tmp_path)


def test_render_merges_runtime_and_model_container() -> None:
    runtime = BUILTIN_RUNTIMES[0]["spec"]["containers"][0]
    c = render_container(runtime, {"args": ["--extra=1"], "env": [{"name": "A", "value": "1"}]}, name="iris",
                         model_dir="/data/iris", port=40001)
    assert c["args"] == ["--model_name=iris", "--model_dir=/data/iris", "--http_port=40001", "--extra=1"]
    assert {"name": "PORT", "value": "40001"} in c["env"] and {"name": "A", "value": "1"} in c["env"]
    a = {"model": {"modelFormat": {"name": "sklearn"}}, "minReplicas": 1, "canaryTrafficPercent": 10}
    b = {**a, "minReplicas": 3, "canaryTrafficPercent": 50}
    assert revision_hash(a) == revision_hash(b)  # scaling and traffic don't make revisions
    assert revision_hash(a) != revision_hash({**a, "model": {"modelFormat": {"name": "sklearn"}, "args": ["x"]}})


def test_rollout_plan() -> None:
    first = plan("r1", False, Rollout(), None)
    assert [(t.revision, t.percent) for t in first.targets] == [("r1", 100)] and first.rollout.rolled_out is None
    assert plan("r1", True, Rollout(), None).rollout.rolled_out == "r1"
    # A new revision that is not ready yet: the old one keeps all traffic.
    waiting = plan("r2", False, Rollout("r1"), None)
    assert waiting.percent("r1") == 100 and waiting.percent("r2") == 0
    done = plan("r2", True, Rollout("r1"), None)
    assert done.rollout == Rollout("r2", "r1") and done.percent("r2") == 100
    canary = plan("r2", True, Rollout("r1"), 20)
    assert canary.percent("r2") == 20 and canary.percent("r1") == 80 and canary.rollout == Rollout("r1")
    assert plan("r2", False, Rollout("r1"), 20).percent("r2") == 0
    assert plan("r2", True, Rollout("r1"), 100).rollout == Rollout("r2", "r1")


def test_weighted_picker_is_exact_and_interleaved() -> None:
    picker = WeightedPicker({"a": 80, "b": 20})
    picks = [picker.pick() for _ in range(1000)]
    assert picks.count("b") == 200
    assert max(len(run) for run in "".join(picks).split("a") if run) == 1  # b never twice in a row
    assert WeightedPicker({"a": 0}).pick() is None


def test_autoscaler_scales_on_concurrency_panics_and_goes_to_zero() -> None:
    policy = Policy(min_replicas=0, max_replicas=4, target=1.0, stable_window=6.0)
    scaler = Autoscaler(policy)
    t = 0.0
    scaler.record(t, 0.0)
    assert scaler.desired(t, 1) == 1  # idle, but not for a whole window yet
    for i in range(1, 4):
        scaler.record(t + i, 3.0)
    assert scaler.desired(t + 3, 1) == 3  # panic: 3 in flight on 1 replica of target 1
    assert scaler.panicking
    scaler.record(t + 3.5, 1.0)
    assert scaler.desired(t + 3.5, 3) == 3  # while panicking it never scales down
    for i in range(4, 20):
        scaler.record(t + i, 0.5)
    assert scaler.desired(t + 19, 3) == 2 and not scaler.panicking  # calm again: down by at most half
    later = Autoscaler(policy)
    later.record(0, 2.0)
    for i in range(1, 10):
        later.record(i, 0.0)
    assert later.desired(9.0, 1) == 0  # a whole stable window without traffic
    assert Autoscaler(Policy(min_replicas=2, max_replicas=4, target=1)).desired(0, 0) == 2
    assert Autoscaler(policy).desired(0, 0, inflight=1) == 1  # held requests wake a revision at zero


def test_a_replica_woken_for_a_held_request_is_not_scaled_away_before_it_is_served() -> None:
    # The tick's averages still say "idle for a whole window" when the replica started for a held request becomes
    # ready; the request in flight is what keeps it (this raced: the replica was deleted and another started).
    scaler = Autoscaler(Policy(min_replicas=0, max_replicas=2, target=70.0, stable_window=6.0))
    for i in range(10):
        scaler.record(float(i), 0.0)
    assert scaler.desired(9.5, 0) == 0
    assert scaler.desired(10.0, 0, inflight=1) == 1  # cold start
    scaler.record(10.5, 0.0)
    assert scaler.desired(11.0, 1, inflight=1) == 1  # ready, the held request not yet answered
    for i in range(12, 17):
        scaler.record(float(i), 0.0)
    assert scaler.desired(16.5, 1) == 1  # answered: a whole window must pass idle first
    assert scaler.desired(17.5, 1) == 0


def test_a_new_autoscaler_waits_a_whole_window_before_scaling_to_zero() -> None:
    # No tick has recorded anything yet (the gateway has not metered the revision): that is not "idle for a window".
    scaler = Autoscaler(Policy(min_replicas=0, max_replicas=2, target=70.0, stable_window=6.0))
    assert scaler.desired(100.0, 1) == 1
    assert scaler.desired(105.0, 1) == 1
    assert scaler.desired(106.5, 1) == 0


def test_autoscaler_scales_down_gradually() -> None:
    scaler = Autoscaler(Policy(min_replicas=1, max_replicas=8, target=1.0, stable_window=6.0))
    scaler.record(0, 0.5)
    assert scaler.desired(0, 8) == 4  # max scale-down rate 2: 8 -> 4, not 8 -> 1


def test_policy_from_spec_and_knative_annotations() -> None:
    p = policy_for({"minReplicas": 0, "maxReplicas": 3, "containerConcurrency": 10},
                   {"autoscaling.knative.dev/window": "6s",
                    "autoscaling.knative.dev/target-utilization-percentage": "50"})
    assert (p.min_replicas, p.max_replicas, p.target, p.stable_window) == (0, 3, 5.0, 6.0)
    assert policy_for({"scaleTarget": 2}, {}).target == 2.0
    assert policy_for({}, {}).min_replicas == 1


def test_meter_is_time_weighted() -> None:
    meter = ConcurrencyMeter(0.0)
    meter.start(0.0)
    meter.start(0.5)
    meter.end(1.0)
    concurrency, rps = meter.sample(2.0)
    assert concurrency == pytest.approx((0.5 * 1 + 0.5 * 2 + 1.0 * 1) / 2.0)
    assert rps == pytest.approx(1.0)


def test_least_outstanding_with_concurrency_limit() -> None:
    a, b, c = (Endpoint(n, 1, "r", ready=True) for n in "abc")
    a.inflight, b.inflight, c.inflight = 2, 1, 1
    assert pick([a, b, c], 0, turn=0) is b and pick([a, b, c], 0, turn=2) is c
    assert pick([a, b, c], 1) is None  # every replica is at containerConcurrency
    c.ready = False
    assert pick([a, b, c], 0, exclude=frozenset({"b"})) is a


def test_oip_decode_checks_shape_and_datatype() -> None:
    t = oip.decode_tensor({"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4.5]]})
    assert t.array.dtype == np.float32 and t.array.shape == (2, 2)
    for tensor, text in (({"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}, "needs 4"),
                         ({"name": "x", "shape": [1], "datatype": "INT64", "data": [1.5]}, "not valid for"),
                         ({"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}, "not valid for"),
                         ({"name": "x", "shape": [1], "datatype": "FLOAT", "data": [1]}, "unsupported datatype"),
                         ({"name": "x", "shape": [1], "datatype": {"a": 1}, "data": [1]}, "unsupported datatype"),
                         ({"name": "x", "shape": [1], "datatype": ["FP32"], "data": [1]}, "unsupported datatype"),
                         ({"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}, "non-negative"),
                         ({"shape": [1], "datatype": "FP32", "data": [1]}, "'name' is required")):
        with pytest.raises(oip.ProtocolError, match=text):
            oip.decode_tensor(tensor)
    with pytest.raises(oip.ProtocolError, match="Unrecognized request format"):
        oip.parse_request(b"{not json", None)


def test_oip_binary_extension_round_trip() -> None:
    raw = np.array([1.0, 2.0, 3.0, 4.0], dtype="<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    req = oip.parse_request(header + raw, str(len(header)))
    assert req.inputs[0].array.tolist() == [[1.0, 2.0, 3.0, 4.0]] and req.binary_output
    body, headers = oip.encode_response("m", None, req, {"y": np.array([7, 8], dtype=np.int64)})
    n = int(headers[oip.HEADER_LENGTH])
    doc = json.loads(body[:n])
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == 16
    assert struct.unpack("<2q", body[n:]) == (7, 8)
    strings = oip.decode_tensor({"name": "s", "shape": [2], "datatype": "BYTES"},
                                struct.pack("<I", 2) + b"hi" + struct.pack("<I", 1) + b"!")
    assert strings.array.tolist() == [b"hi", b"!"]
