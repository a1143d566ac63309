"""The transformer component: its schema, Kaip's transformer runtime (pure parts), the internal token between
transformer and predictor, and end to end a user's class with preprocess/postprocess in front of the sklearn
iris predictor, through the gateway."""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

import serving_fixtures  # noqa: E402
from kaip.api import core  # noqa: F401
from kaip.api.errors import ApiError
from kaip.api.serving import INFERENCE_SERVICE
from kaip.api.validation import validate_document
from kaip.serving import internal
from kaip.serving.render import render_transformer_container
from kaip.serving.runtimes import transformer as rt
from kaip.testing.live import LiveServer
from serving_fixtures import apply_isvc, build_iris_model, condition, get_isvc, replica_pods, wait_for, wait_ready

serving_server = serving_fixtures.serving_server  # the module's shared live server (a fixture)
SPECIES = ["setosa", "versicolor", "virginica"]
USER_CODE = '''
class BadInput(Exception):
    status = 400


class IrisTransformer:
    """Named flower measurements in, species names out."""

    def __init__(self, name):
        self.name = name

    def preprocess(self, payload, headers=None):
        if "flowers" not in payload:
            raise BadInput("expected 'flowers'")
        keys = ("sepal_length", "sepal_width", "petal_length", "petal_width")
        return {"instances": [[f[k] for k in keys] for f in payload["flowers"]]}

    async def postprocess(self, response, headers=None):
        return {"species": [SPECIES[p] for p in response["predictions"]], "model": self.name,
                "request_id": (headers or {}).get("x-request-id")}


SPECIES = ["setosa", "versicolor", "virginica"]
'''
FLOWERS = [{"sepal_length": 6.8, "sepal_width": 2.8, "petal_length": 4.8, "petal_width": 1.4},
           {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
           {"sepal_length": 7.7, "sepal_width": 3.0, "petal_length": 6.1, "petal_width": 2.3}]


def isvc(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "m", "namespace": "default"}, "spec": spec}


def invalid_message(doc: dict[str, Any]) -> str:
    with pytest.raises(ApiError) as info:
        validate_document(INFERENCE_SERVICE, doc, namespace=None)
    assert info.value.code == 422
    return info.value.message


# ---- pure ----------------------------------------------------------------------------------------------------

def test_transformer_schema_accepts_a_container_and_refuses_unsupported_fields_by_path() -> None:
    predictor = {"sklearn": {"storageUri": "/m"}}
    ok = validate_document(INFERENCE_SERVICE, isvc({"predictor": predictor, "transformer": {
        "minReplicas": 1, "containers": [{"name": "kserve-container", "args": ["--transformer_module=/t.py"]}]}}),
        namespace=None)
    assert ok["spec"]["transformer"]["containers"][0]["args"] == ["--transformer_module=/t.py"]
    msg = invalid_message(isvc({"predictor": predictor, "transformer": {
        "containers": [{"name": "c"}], "nodeSelector": {}, "volumes": [], "nope": 1}}))
    assert "spec.transformer.nodeSelector: not implemented" in msg
    assert "spec.transformer.volumes: not implemented" in msg
    assert "spec.transformer.nope: unknown field" in msg
    assert "containers: Required value" in invalid_message(isvc({"predictor": predictor, "transformer": {}}))
    canary = {"containers": [{"name": "c"}], "canaryTrafficPercent": 10}
    assert "spec.transformer.canaryTrafficPercent: not implemented" in \
        invalid_message(isvc({"predictor": predictor, "transformer": canary}))
    assert "spec.explainer.art: not implemented" in invalid_message(isvc({"predictor": predictor, "explainer": {
        "containers": [{"name": "c"}], "art": {"type": "SquareAttack"}}}))


def _module(tmp_path: Path) -> ModuleType:
    path = tmp_path / "user_transformer.py"
    path.write_text(textwrap.dedent(USER_CODE))
    return rt.load_module(str(path))


def test_user_class_is_found_built_and_called(tmp_path: Path) -> None:
    import asyncio

    module = _module(tmp_path)
    cls = rt.find_class(module, None)
    assert cls.__name__ == "IrisTransformer"
    obj = rt.instantiate(cls, "iris")
    assert obj.name == "iris"
    pre = asyncio.run(rt.call_hook(obj, "preprocess", {"flowers": FLOWERS[:1]}, {}))
    assert pre == {"instances": [[6.8, 2.8, 4.8, 1.4]]}
    post = asyncio.run(rt.call_hook(obj, "postprocess", {"predictions": [2, 0]}, {"x-request-id": "r1"}))
    assert post == {"species": ["virginica", "setosa"], "model": "iris", "request_id": "r1"}
    assert asyncio.run(rt.call_hook(object(), "preprocess", {"a": 1}, {})) == {"a": 1}  # no method: unchanged
    with pytest.raises(RuntimeError, match="has no class Nope"):
        rt.find_class(module, "Nope")
    two = ModuleType("two")
    exec("class A:\n    def preprocess(self, p): return p\nclass B:\n    def postprocess(self, p): return p\n",
         two.__dict__)
    with pytest.raises(RuntimeError, match="defines 2 classes"):
        rt.find_class(two, None)
    with pytest.raises(RuntimeError, match="does not exist"):
        rt.load_module(str(tmp_path / "missing.py"))
    resp = rt.user_error(module.BadInput("expected 'flowers'"), "preprocess")
    assert resp.status_code == 400
    assert rt.user_error(KeyError("x"), "postprocess").status_code == 500


def test_transformer_container_and_internal_token() -> None:
    container = render_transformer_container(
        {"name": "kserve-container", "args": ["--transformer_module=/t.py", "--http_port=8080"]}, name="iris",
        port=4321, predictor_url="http://127.0.0.1:1/serving/default/iris~predictor", token="kaipsvc-x")
    assert container["command"] == ["python", "-m", "kaip.serving.runtimes.transformer"]
    assert container["args"] == ["--model_name=iris", "--transformer_module=/t.py", "--http_port=4321",
                                 "--predictor_url=http://127.0.0.1:1/serving/default/iris~predictor"]
    assert {"name": "KAIP_PREDICTOR_TOKEN", "value": "kaipsvc-x"} in container["env"]
    key = b"k" * 32
    token = internal.internal_token(key, "default", "iris", "uid-1")
    assert token.startswith(internal.TOKEN_PREFIX)
    assert internal.internal_token(key, "default", "iris", "uid-2") != token  # a recreated isvc

    class Inner:
        def authenticate_cached(self, header: str | None) -> None:
            return None

        def authenticate(self, header: str | None) -> Any:
            raise ApiError(401, "Unauthorized", "bad token")

        def rank(self, user: str, namespace: str | None) -> int:
            return 0

    auth = internal.ServingAuthorizer(Inner(), {token: ("default", "iris")})
    ident = auth.authenticate(f"Bearer {token}")
    assert ident.user == "system:serving:default:iris"
    assert auth.rank(ident.user, "default") == 1 and auth.rank(ident.user, "other") == 0
    with pytest.raises(ApiError):
        auth.authenticate(f"Bearer {internal.TOKEN_PREFIX}forged")


# ---- end to end ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def iris_t(serving_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = build_iris_model(tmp_path_factory.mktemp("models") / "iris")
    code = tmp_path_factory.mktemp("code") / "iris_transformer.py"
    code.write_text(textwrap.dedent(USER_CODE))
    doc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
           "metadata": {"name": "iris-t", "namespace": "default"},
           "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": str(folder)}},
                    "transformer": {"containers": [{"name": "kserve-container",
                                                    "args": [f"--transformer_module={code}"]}]}}}
    with serving_server.client() as c:
        apply_isvc(c, doc)
        wait_ready(c, "iris-t", timeout=60)
    import joblib

    return {"model": joblib.load(folder / "model.joblib")}


@pytest.mark.slow
def test_transformer_runs_user_code_between_gateway_and_predictor(serving_server: LiveServer,
                                                                  iris_t: dict[str, Any]) -> None:
    keys = ("sepal_length", "sepal_width", "petal_length", "petal_width")
    expected = [SPECIES[p] for p in iris_t["model"].predict([[f[k] for k in keys] for f in FLOWERS])]
    assert len(set(expected)) == 3  # the three flowers are of three species
    with serving_server.client() as c:
        resp = c.post("/serving/default/iris-t/v1/models/iris-t:predict", json={"flowers": FLOWERS},
                      headers={"x-request-id": "req-7"})
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"species": expected, "model": "iris-t", "request_id": "req-7"}
        assert resp.headers["x-kaip-revision"] == "iris-t-transformer-00001"
        # The user's code refuses bad input with a 400; the predictor's own errors come back as they are.
        bad = c.post("/serving/default/iris-t/v1/models/iris-t:predict", json={"instances": [[1, 2, 3, 4]]})
        assert bad.status_code == 400 and "expected 'flowers'" in bad.json()["error"]
        short = c.post("/serving/default/iris-t/v1/models/iris-t:predict",
                       json={"flowers": [{k: 1.0 for k in keys[:3]}]})
        assert short.status_code == 500 and "KeyError" in short.json()["error"]
        # GETs go through to the predictor.
        ready = c.get("/serving/default/iris-t/v1/models/iris-t")
        assert ready.status_code == 200 and ready.json() == {"name": "iris-t", "ready": True}

        obj = get_isvc(c, "iris-t")
        assert condition(obj, "TransformerReady")["status"] == "True"
        assert condition(obj, "PredictorReady")["status"] == "True"
        comps = obj["status"]["components"]
        assert comps["transformer"]["traffic"] == [{"revisionName": "iris-t-transformer-00001", "percent": 100,
                                                    "latestRevision": True}]
        assert comps["predictor"]["traffic"][0]["revisionName"] == "iris-t-predictor-00001"
        pods = replica_pods(c, "iris-t")
        assert sorted(p["metadata"]["labels"]["component"] for p in pods) == ["predictor", "transformer"]

    # The predictor behind the transformer takes no anonymous or forged calls.
    internal_path = f"{serving_server.url}/serving/default/iris-t~predictor/v1/models/iris-t"
    assert httpx.get(internal_path).status_code == 401
    forged = httpx.get(internal_path, headers={"authorization": f"Bearer {internal.TOKEN_PREFIX}00"})
    assert forged.status_code == 401


@pytest.mark.slow
def test_removing_the_transformer_routes_to_the_predictor_again(serving_server: LiveServer,
                                                                 iris_t: dict[str, Any]) -> None:
    with serving_server.client() as c:
        obj = get_isvc(c, "iris-t")
        spec = {k: v for k, v in obj["spec"].items() if k != "transformer"}
        apply_isvc(c, {**obj, "spec": spec, "status": None})

        def predictor_answers() -> Any:
            r = c.post("/serving/default/iris-t/v1/models/iris-t:predict", json={"instances": [[6.8, 2.8, 4.8, 1.4]]})
            return r.json() if r.status_code == 200 else None
        assert wait_for(predictor_answers, 30, what="the predictor to answer directly") == {
            "predictions": [int(iris_t["model"].predict([[6.8, 2.8, 4.8, 1.4]])[0])]}
        wait_for(lambda: [p for p in replica_pods(c, "iris-t")
                          if p["metadata"]["labels"]["component"] == "transformer"] == [], 30,
                 what="the transformer's replica to go")
        assert "transformer" not in get_isvc(c, "iris-t")["status"]["components"]


@pytest.mark.slow
def test_a_transformer_that_cannot_load_says_why(serving_server: LiveServer,
                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = build_iris_model(tmp_path_factory.mktemp("models") / "iris-bad")
    missing = tmp_path_factory.mktemp("code") / "missing.py"
    doc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
           "metadata": {"name": "iris-bad", "namespace": "default"},
           "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": str(folder)}},
                    "transformer": {"containers": [{"name": "kserve-container",
                                                    "args": [f"--transformer_module={missing}"]}]}}}
    with serving_server.client() as c:
        apply_isvc(c, doc)
        failed = wait_for(lambda: (lambda o: o if condition(o, "TransformerReady").get("reason") == "RevisionFailed"
                                   else None)(get_isvc(c, "iris-bad")), 60, what="TransformerReady to say why")
        assert f"transformer module {missing} does not exist" in condition(failed, "TransformerReady")["message"]
        assert condition(failed, "Ready")["status"] == "False"
        c.delete("/apis/serving.kserve.io/v1beta1/namespaces/default/inferenceservices/iris-bad")
