"""The explainer component: its schema, Kaip's explainer runtime (the attribution maths, pure), the explainer's
container, and end to end an sklearn iris InferenceService with an explainer on a live server: `:explain` goes to
the explainer, which calls the predictor's `:predict` through the gateway; everything else goes to the predictor
(or the transformer); scale to zero and back; bad requests; removing the explainer."""

from __future__ import annotations

import itertools
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import serving_fixtures  # noqa: E402
from kaip.api import core  # noqa: F401
from kaip.api.errors import ApiError
from kaip.api.serving import INFERENCE_SERVICE
from kaip.api.validation import validate_document
from kaip.serving.render import render_explainer_container
from kaip.serving.runtimes import explainer as ex
from kaip.testing.live import LiveServer
from serving_fixtures import apply_isvc, build_iris_model, condition, get_isvc, replica_pods, wait_for, wait_ready

serving_server = serving_fixtures.serving_server  # the module's shared live server (a fixture)
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SETOSA, VERSICOLOR, VIRGINICA = [5.1, 3.5, 1.4, 0.2], [6.0, 3.4, 4.5, 1.6], [7.7, 3.0, 6.1, 2.3]
PATH = "/serving/default/iris-x/v1/models/iris-x"


def isvc(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "m", "namespace": "default"}, "spec": spec}


def invalid_message(doc: dict[str, Any]) -> str:
    with pytest.raises(ApiError) as info:
        validate_document(INFERENCE_SERVICE, doc, namespace=None)
    assert info.value.code == 422
    return info.value.message


def shapley_by_definition(f: Any, x: list[float], b: list[float]) -> list[float]:
    """Shapley values as the textbook writes them, over orderings of the features: the reference to check against."""
    d = len(x)
    phi = [0.0] * d
    orders = list(itertools.permutations(range(d)))
    for order in orders:
        z = list(b)
        before = f(z)
        for i in order:
            z[i] = x[i]
            after = f(z)
            phi[i] += (after - before) / len(orders)
            before = after
    return phi


# ---- pure ----------------------------------------------------------------------------------------------------

def test_explainer_schema_accepts_a_container_and_refuses_unsupported_fields_by_path() -> None:
    predictor = {"sklearn": {"storageUri": "/m"}}
    explainer = {"minReplicas": 0, "maxReplicas": 2, "scaleTarget": 3, "containerConcurrency": 4, "timeout": 30,
                 "logger": {"mode": "request"}, "serviceAccountName": "sa",
                 "resources": {"requests": {"cpu": "1"}},
                 "containers": [{"name": "kserve-container", "args": ["--baseline=0,0,0,0"]}]}
    ok = validate_document(INFERENCE_SERVICE, isvc({"predictor": predictor, "explainer": explainer}), namespace=None)
    assert ok["spec"]["explainer"]["containers"][0]["args"] == ["--baseline=0,0,0,0"]
    msg = invalid_message(isvc({"predictor": predictor, "explainer": {
        "containers": [{"name": "c"}], "art": {"type": "SquareAttack"}, "nodeSelector": {}, "canaryTrafficPercent": 5,
        "nope": 1}}))
    for refused in ("spec.explainer.art: not implemented", "spec.explainer.nodeSelector: not implemented",
                    "spec.explainer.canaryTrafficPercent: not implemented", "spec.explainer.nope: unknown field"):
        assert refused in msg
    assert "containers: Required value" in invalid_message(isvc({"predictor": predictor, "explainer": {}}))
    assert "maxReplicas (1) must be greater than or equal to minReplicas (2)" in invalid_message(isvc({
        "predictor": predictor, "explainer": {"minReplicas": 2, "maxReplicas": 1, "containers": [{"name": "c"}]}}))


def test_explainer_container_gets_kserves_arguments_and_the_internal_token() -> None:
    host = "127.0.0.1:1/serving/default/iris~predictor"
    container = render_explainer_container(
        {"name": "kserve-container", "args": ["--baseline=1,2", "--http_port=8080", "--predictor_host=elsewhere"]},
        name="iris", port=4321, predictor_host=host, token="kaipsvc-x")
    assert container["command"] == ["python", "-m", "kaip.serving.runtimes.explainer"]
    assert container["args"] == ["--model_name=iris", "--baseline=1,2", "--http_port=4321",
                                 f"--predictor_host={host}"]
    assert {"name": "KAIP_PREDICTOR_TOKEN", "value": "kaipsvc-x"} in container["env"]
    assert {"name": "PORT", "value": "4321"} in container["env"]
    custom = render_explainer_container({"name": "c", "command": ["my-explainer"], "args": ["--model_name=other"]},
                                        name="iris", port=1, predictor_host=host, token="t")
    assert custom["command"] == ["my-explainer"] and custom["args"][0] == "--model_name=other"
    assert ex.predictor_url(host, "iris") == f"http://{host}/v1/models/iris:predict"  # KServe's explainer contract


def _iris_model() -> Any:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=300).fit(x, y), x.mean(axis=0).tolist()


def test_shapley_attributions_of_class_probabilities_match_the_definition() -> None:
    model, means = _iris_model()
    settings = ex.Settings(means, FEATURES, "auto")
    plan = ex.plan(ex.read_instances({"instances": [SETOSA, VIRGINICA]}), settings)
    assert plan.method == "shapley" and len(plan.rows) == 2 * 16
    out = ex.attribute(plan, model.predict_proba(np.array(plan.rows)).tolist(), FEATURES)
    assert out["meta"] == {"explainer": "kaip", "method": "shapley", "baseline": means, "feature_names": FEATURES,
                           "predictions": 32}
    for row, expl in zip((SETOSA, VIRGINICA), out["explanations"], strict=True):
        target = int(np.argmax(model.predict_proba([row])[0]))
        assert expl["explained"] == "class_score" and expl["target"] == target
        reference = shapley_by_definition(lambda z, t=target: model.predict_proba([z])[0][t], row, means)
        assert expl["attributions"] == pytest.approx(reference, abs=1e-12)
        # Efficiency: the attributions share out exactly the difference from the baseline.
        assert sum(expl["attributions"]) == pytest.approx(expl["value"] - expl["baseline_value"], abs=1e-12)
    setosa, virginica = out["explanations"]
    assert setosa["ranking"][0] == "petal_length" and setosa["attributions"][2] > 0.5
    assert virginica["ranking"][:2] == ["petal_length", "petal_width"]
    assert all(a > 0.1 for a in virginica["attributions"][2:])


def test_occlusion_labels_and_regression_outputs() -> None:
    model, means = _iris_model()
    # Occlusion of a label: 1 where swapping the feature for the baseline's changes the class.
    plan = ex.plan([SETOSA], ex.Settings(means, None, "occlusion"))
    assert plan.method == "occlusion" and len(plan.rows) == 6 and plan.rows[0] == SETOSA and plan.rows[1] == means
    labels = ex.attribute(plan, model.predict(np.array(plan.rows)).tolist())
    (expl,) = labels["explanations"]
    assert expl["explained"] == "label" and expl["target"] == 0 and expl["prediction"] == 0
    assert expl["attributions"] == [0.0, 0.0, 1.0, 0.0] and expl["ranking"][0] == 2  # no names: indices
    # A regressor's output is explained as it is; a linear model's Shapley values are w_i (x_i - b_i).
    w, b = [2.0, -1.0, 0.5], [1.0, 1.0, 1.0]
    plan = ex.plan([[3.0, 0.0, 5.0]], ex.Settings(b, None, "shapley"))
    linear = [sum(wi * zi for wi, zi in zip(w, z, strict=True)) + 0.25 for z in plan.rows]
    (expl,) = ex.attribute(plan, linear)["explanations"]
    assert expl["explained"] == "value" and expl["target"] is None
    assert expl["attributions"] == pytest.approx([4.0, 1.0, 2.0])


def test_bad_requests_and_settings_are_refused_with_a_reason() -> None:
    def refused(doc: Any, settings: ex.Settings = ex.Settings()) -> str:
        with pytest.raises(ex.ExplainError) as info:
            ex.plan(ex.read_instances(doc), settings)
        assert info.value.status == 400
        return str(info.value)

    assert "must be a JSON object" in refused([[1, 2]])
    assert 'Expected "instances"' in refused({"instances": []})
    assert "instance 1: expected a row of numbers" in refused({"instances": [[1, 2], ["a", 2]]})
    assert "instance 0: expected a row of numbers" in refused({"inputs": [[True, 2]]})
    assert "instance 1 has 3 features, instance 0 has 2" in refused({"instances": [[1, 2], [1, 2, 3]]})
    assert "the instances have 2 features; the explainer's --baseline has 4" in \
        refused({"instances": [[1, 2]]}, ex.Settings([0.0] * 4))
    assert "up to 10 features" in refused({"instances": [[0.0] * 11]}, ex.Settings(method="shapley"))
    assert ex.plan([[0.0] * 11], ex.Settings()).method == "occlusion"  # auto: occlusion above 10 features
    assert "send fewer instances" in refused({"instances": [[0.0] * 10] * 100}, ex.Settings(method="shapley"))
    with pytest.raises(ex.ExplainError) as info:
        ex.attribute(ex.plan([[1.0]], ex.Settings()), [0, 1, 2])
    assert info.value.status == 502 and "3 predictions for 2 rows" in str(info.value)
    with pytest.raises(ex.ExplainError, match="cannot explain the prediction"):
        ex.attribute(ex.plan([[1.0]], ex.Settings()), [{"a": 1}, {"a": 2}])
    assert ex.parse_numbers("1, 2.5,3", "--baseline") == [1.0, 2.5, 3.0]
    assert ex.parse_numbers("[1, 2]", "--baseline") == [1.0, 2.0] and ex.parse_numbers("", "--baseline") is None
    for bad in ("1,x", "[1, true]", "nan"):
        with pytest.raises(ValueError, match="--baseline"):
            ex.parse_numbers(bad, "--baseline")
    with pytest.raises(ValueError, match="twice"):
        ex.parse_names("a,b,a")
    with pytest.raises(ValueError, match="--method must be one of"):
        ex.Settings(method="lime")
    with pytest.raises(ValueError, match="--baseline has 2 values but --feature_names names 3"):
        ex.Settings([0.0, 0.0], ["a", "b", "c"])
    rows = [[123456.789012345] * 50] * 5000
    parts = ex.batches(rows)
    assert sum(len(p) for p in parts) == 5000 and len(parts) > 1
    assert all(len(str({"instances": p}).encode()) < ex.BATCH_BYTES for p in parts)


def test_sklearn_runtime_answers_probabilities_with_predict_proba(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from kaip.serving.runtimes.sklearn import SKLearnModel

    folder = build_iris_model(tmp_path / "iris")
    assert SKLearnModel("iris", folder).predict([SETOSA]) == [0]  # KServe's default: labels
    monkeypatch.setenv("PREDICT_PROBA", "true")
    model = SKLearnModel("iris", folder)
    (proba,) = model.predict([SETOSA])
    assert len(proba) == 3 and proba[0] > 0.9 and sum(proba) == pytest.approx(1.0)
    assert model.metadata()["outputs"] == [{"name": "output-0", "datatype": "FP64", "shape": [-1, 3]}]


# ---- end to end ----------------------------------------------------------------------------------------------

PASSTHROUGH = '''
class Tag:
    def postprocess(self, response, headers=None):
        return {**response, "via": "transformer"}
'''


@pytest.fixture(scope="module")
def iris_x(serving_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = build_iris_model(tmp_path_factory.mktemp("models") / "iris")
    model, means = _iris_model()
    baseline = [round(m, 2) for m in means]
    doc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
           "metadata": {"name": "iris-x", "namespace": "default"},
           "spec": {"predictor": {"logger": {"mode": "all"},
                                  "model": {"modelFormat": {"name": "sklearn"}, "storageUri": str(folder),
                                            "env": [{"name": "PREDICT_PROBA", "value": "true"}]}},
                    "explainer": {"containers": [{"name": "kserve-container", "args": [
                        "--baseline=" + ",".join(map(str, baseline)), "--feature_names=" + ",".join(FEATURES)]}]}}}
    with serving_server.client() as c:
        apply_isvc(c, doc)
        wait_ready(c, "iris-x", timeout=60)
    import joblib

    return {"doc": doc, "model": joblib.load(folder / "model.joblib"), "baseline": baseline}


@pytest.mark.slow
def test_explain_goes_to_the_explainer_which_calls_the_predictor(serving_server: LiveServer,
                                                                iris_x: dict[str, Any]) -> None:
    model, baseline = iris_x["model"], iris_x["baseline"]
    with serving_server.client() as c:
        resp = c.post(f"{PATH}:explain", json={"instances": [SETOSA, VERSICOLOR, VIRGINICA]},
                      headers={"x-request-id": "explain-1"})
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-kaip-revision"] == "iris-x-explainer-00001"
        out = resp.json()
        assert out["meta"]["method"] == "shapley" and out["meta"]["predictions"] == 3 * 16
        for row, expl in zip((SETOSA, VERSICOLOR, VIRGINICA), out["explanations"], strict=True):
            proba = model.predict_proba([row])[0]
            assert expl["prediction"] == pytest.approx(proba.tolist())  # the predictor's answer, explained
            assert expl["target"] == int(np.argmax(proba))
            reference = shapley_by_definition(lambda z, t=expl["target"]: model.predict_proba([z])[0][t], row,
                                              baseline)
            assert expl["attributions"] == pytest.approx(reference, abs=1e-9)
        setosa, versicolor, virginica = out["explanations"]
        assert [e["target"] for e in (setosa, versicolor, virginica)] == [0, 1, 2]
        # Setosa is told apart by its short petals; virginica by its long, wide ones.
        assert setosa["ranking"][0] in ("petal_length", "petal_width") and setosa["attributions"][2] > 0.5
        assert virginica["ranking"][:2] == ["petal_length", "petal_width"]
        assert max(abs(a) for a in versicolor["attributions"]) < 0.3  # the baseline (the means) is a versicolor

        # Everything else goes to the predictor, which answers probabilities (KServe's PREDICT_PROBA).
        pred = c.post(f"{PATH}:predict", json={"instances": [SETOSA]})
        assert pred.status_code == 200 and pred.headers["x-kaip-revision"] == "iris-x-predictor-00001"
        assert pred.json()["predictions"][0] == pytest.approx(model.predict_proba([SETOSA])[0].tolist())
        assert c.get(PATH).json() == {"name": "iris-x", "ready": True}

        obj = get_isvc(c, "iris-x")
        assert condition(obj, "ExplainerReady")["status"] == "True" and condition(obj, "Ready")["status"] == "True"
        exp = obj["status"]["components"]["explainer"]
        assert exp["traffic"] == [{"revisionName": "iris-x-explainer-00001", "percent": 100, "latestRevision": True}]
        assert exp["latestReadyRevision"] == exp["latestCreatedRevision"] == "iris-x-explainer-00001"
        assert exp["url"] == f"{serving_server.url}/serving/default/iris-x~explainer"
        pods = replica_pods(c, "iris-x")
        assert sorted(p["metadata"]["labels"]["component"] for p in pods) == ["explainer", "predictor"]
        (exp_pod,) = [p for p in pods if p["metadata"]["labels"]["component"] == "explainer"]
        args = exp_pod["spec"]["containers"][0]["args"]
        assert args[0] == "--model_name=iris-x"
        assert f"--predictor_host={serving_server.url.removeprefix('http://')}/serving/default/iris-x~predictor" \
            in args

        # The explain request is in the InferenceService's prediction log; the explainer's own calls are not.
        records = wait_for(lambda: [r for r in c.get("/serving/-/predictions/default/iris-x", params={
            "since": "1h"}).json()["items"] if r["id"] == "explain-1"], 10, what="the explain record")
        assert [(r["revision"], r["path"]) for r in records] == [("iris-x-explainer-00001",
                                                                   "/v1/models/iris-x:explain")]
    # The predictor's internal route takes no anonymous calls.
    anonymous = httpx.post(f"{serving_server.url}/serving/default/iris-x~predictor/v1/models/iris-x:predict",
                           json={"instances": [SETOSA]})
    assert anonymous.status_code == 401


@pytest.mark.slow
def test_bad_explain_requests_get_a_clear_4xx(serving_server: LiveServer, iris_x: dict[str, Any]) -> None:
    with serving_server.client() as c:
        def err(body: Any, path: str = f"{PATH}:explain") -> tuple[int, str]:
            resp = c.post(path, content=body if isinstance(body, bytes) else None,
                          json=None if isinstance(body, bytes) else body)
            return resp.status_code, resp.json()["error"]

        status, msg = err(b"{not json")
        assert status == 400 and msg.startswith("Unrecognized request format")
        assert err({"instances": []}) == (400, 'Expected "instances" (or "inputs") to be a non-empty list of rows '
                                               'of numbers')
        status, msg = err({"instances": [SETOSA, ["a", 1, 2, 3]]})
        assert status == 400 and msg.startswith("instance 1: expected a row of numbers")
        assert err({"instances": [[1.0, 2.0, 3.0]]}) == (400, "the instances have 3 features; the explainer's "
                                                               "--baseline has 4")
        assert err({"instances": [SETOSA]}, "/serving/default/iris-x/v1/models/other:explain") == (
            404, "Model with name other does not exist.")


@pytest.mark.slow
def test_explainer_scales_to_zero_and_a_cold_explain_is_held(serving_server: LiveServer,
                                                             iris_x: dict[str, Any]) -> None:
    doc = iris_x["doc"]
    sleepy = {**doc, "metadata": {**doc["metadata"], "annotations": {"autoscaling.knative.dev/window": "6s"}},
              "spec": {**doc["spec"], "explainer": {**doc["spec"]["explainer"], "minReplicas": 0}}}

    def explainer_pods(c: httpx.Client) -> list[dict[str, Any]]:
        return [p for p in replica_pods(c, "iris-x") if p["metadata"]["labels"]["component"] == "explainer"]

    with serving_server.client() as c:
        apply_isvc(c, sleepy)
        wait_for(lambda: explainer_pods(c) == [], 40, what="the explainer to scale to zero")
        obj = get_isvc(c, "iris-x")
        assert condition(obj, "ExplainerReady")["status"] == "True"  # scaled to zero is still ready
        assert obj["status"]["components"]["explainer"]["revisions"][0]["replicas"] == 0
        assert len(replica_pods(c, "iris-x")) == 1  # the predictor (minReplicas 1) stays
        started = time.monotonic()
        resp = c.post(f"{PATH}:explain", json={"instances": [SETOSA]})
        cold = time.monotonic() - started
        assert resp.status_code == 200, resp.text
        assert resp.json()["explanations"][0]["ranking"][0] in ("petal_length", "petal_width")
        assert cold > 0.3  # it waited for an explainer replica to start
        assert len(explainer_pods(c)) == 1
        apply_isvc(c, doc)  # back to one replica for the tests after this one


@pytest.mark.slow
def test_with_a_transformer_explain_still_goes_to_the_explainer(serving_server: LiveServer, iris_x: dict[str, Any],
                                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    code = tmp_path_factory.mktemp("code") / "tag.py"
    code.write_text(textwrap.dedent(PASSTHROUGH))
    doc = iris_x["doc"]
    both = {**doc, "spec": {**doc["spec"], "transformer": {"containers": [
        {"name": "kserve-container", "args": [f"--transformer_module={code}"]}]}}}
    with serving_server.client() as c:
        apply_isvc(c, both)
        wait_for(lambda: condition(get_isvc(c, "iris-x"), "TransformerReady").get("status") == "True", 60,
                 what="the transformer to be ready")
        wait_ready(c, "iris-x")
        pred = wait_for(lambda: (lambda r: r if r.headers.get("x-kaip-revision", "").startswith(
            "iris-x-transformer") else None)(c.post(f"{PATH}:predict", json={"instances": [SETOSA]})), 20,
            what=":predict to go through the transformer")
        assert pred.status_code == 200 and pred.json()["via"] == "transformer"
        resp = c.post(f"{PATH}:explain", json={"instances": [VIRGINICA]})
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-kaip-revision"] == "iris-x-explainer-00001"
        assert resp.json()["explanations"][0]["target"] == 2


@pytest.mark.slow
def test_without_an_explainer_explain_goes_to_the_predictor_again(serving_server: LiveServer,
                                                                  iris_x: dict[str, Any]) -> None:
    doc = iris_x["doc"]
    plain = {**doc, "spec": {"predictor": doc["spec"]["predictor"]}}
    with serving_server.client() as c:
        apply_isvc(c, plain)

        def predictor_answers() -> Any:
            try:  # a request that reached the explainer just before it went waits for it until its timeout
                r = c.post(f"{PATH}:explain", json={"instances": [SETOSA]}, timeout=3)
            except httpx.ReadTimeout:
                return None
            return r if r.headers.get("x-kaip-revision") == "iris-x-predictor-00001" else None
        resp = wait_for(predictor_answers, 30, what=":explain to reach the predictor")
        # What it did before explainers: the sklearn runtime does not explain.
        assert resp.status_code == 501 and resp.json() == {"error": "explain is not implemented by this runtime"}
        wait_for(lambda: sorted(p["metadata"]["labels"]["component"] for p in replica_pods(c, "iris-x"))
                 == ["predictor"], 30, what="the explainer's and transformer's replicas to go")
        obj = get_isvc(c, "iris-x")
        assert set(obj["status"]["components"]) == {"predictor"}
        assert not condition(obj, "ExplainerReady") and not condition(obj, "TransformerReady")
        assert condition(obj, "Ready")["status"] == "True"
        gone = c.post("/serving/default/iris-x~explainer/v1/models/iris-x:explain", json={"instances": [SETOSA]})
        assert gone.status_code == 404
