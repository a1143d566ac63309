"""Protocols against upstream's OpenAPI documents: the Open Inference v2 endpoints of a live sklearn
InferenceService (open-inference-protocol/open_inference_rest.yaml), and the error answers of the guardrails
Detectors API (fms-guardrails-orchestrator/openapi_detector_api.yaml; tests/test_guardrails_api.py validates
its success answers and the orchestrator's), and the orchestrator's streamed and generation-first routes (every
streamed object against its schema). Besides fixed requests, requests generated from upstream's request schemas
must never get a 5xx, and every answer must match the response schema for its status."""

from __future__ import annotations

import asyncio
import copy
import functools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

import serving_fixtures
from conformance.harness import OPENAPI
from kaip.testing.live import LiveServer
from serving_fixtures import iris_v2_client
from test_guardrails_api import ndjson, ndjson_lines, sse_events, stub_server

serving_server = serving_fixtures.serving_server  # a live server for this module (a fixture)
pytestmark = pytest.mark.slow

OIP = OPENAPI / "open-inference-protocol" / "open_inference_rest.yaml"
DETECTORS = OPENAPI / "fms-guardrails-orchestrator" / "openapi_detector_api.yaml"
ORCH = OPENAPI / "fms-guardrails-orchestrator" / "orchestrator_openapi_0_1_0.yaml"
BASE = "/serving/default/iris"
ROWS = [[6.8, 2.8, 4.8, 1.4], [5.1, 3.5, 1.4, 0.2]]
GENERATED = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])


@functools.cache
def _document(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def schema_of(path: Path, name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}", "components": _document(path)["components"]}


def conforms(path: Path, name: str, instance: Any) -> None:
    schema = schema_of(path, name)
    if path == ORCH and name == "GenerationDetectionResponse":
        # documented as a string; upstream's GenerationWithDetectionResult serializes a u32, as Kaip does
        schema = copy.deepcopy(schema)
        schema["components"]["schemas"][name]["properties"]["input_token_count"] = {"type": "integer"}
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(instance), key=str)
    assert not errors, f"{name}: {errors[0].message} at {list(errors[0].absolute_path)} in {instance!r}"


def response_schema(path: Path, route: str, method: str, status: int) -> str | None:
    """The component a response of `route` with `status` must match, from the document's `paths`."""
    op = _document(path)["paths"][route][method]
    ref = (((op["responses"].get(str(status)) or {}).get("content") or {}).get("application/json") or {}).get(
        "schema", {}).get("$ref", "")
    return ref.rpartition("/")[2] or None


# ---- Open Inference v2 ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(serving_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    yield from iris_v2_client(serving_server, tmp_path_factory.mktemp("models"))


INFER = "/v2/models/${MODEL_NAME}/versions/${MODEL_VERSION}/infer"


def test_health_and_metadata(client: httpx.Client) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/iris/ready"):
        assert client.get(BASE + path).status_code == 200, path
    server = client.get(BASE + "/v2")
    assert server.status_code == 200, server.text
    conforms(OIP, "metadata_server_response", server.json())
    for path in ("/v2/models/iris", "/v2/models/iris/versions/1"):
        model = client.get(BASE + path)
        assert model.status_code == 200, (path, model.text)
        conforms(OIP, "metadata_model_response", model.json())
        assert model.json()["name"] == "iris"


@pytest.mark.parametrize("request_body", [
    {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32", "data": sum(ROWS, [])}]},
    {"id": "42", "inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": ROWS}],
     "outputs": [{"name": "output-0"}]},
    {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "INT32", "data": [7, 3, 5, 2],
                 "parameters": {"content_type": "np"}}], "parameters": {"custom": "x"}},
], ids=["flat", "nested-with-id-and-outputs", "int-with-parameters"])
@pytest.mark.parametrize("path", ["/v2/models/iris/infer", "/v2/models/iris/versions/1/infer"])
def test_infer_responses_conform(client: httpx.Client, request_body: dict[str, Any], path: str) -> None:
    conforms(OIP, "inference_request", request_body)  # the request is upstream's shape too
    resp = client.post(BASE + path, json=request_body)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    conforms(OIP, "inference_response", body)
    assert body["model_name"] == "iris"
    if "id" in request_body:
        assert body["id"] == request_body["id"]
    (out,) = body["outputs"]
    assert out["shape"][0] == request_body["inputs"][0]["shape"][0]


@pytest.mark.parametrize(("path", "request_body", "status"), [
    ("/v2/models/iris/infer", {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32",
                                           "data": [1, 2, 3]}]}, 400),
    ("/v2/models/iris/infer", {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "INT32",
                                           "data": [1.5, 2, 3, 4]}]}, 400),
    ("/v2/models/iris/infer", {"inputs": "not a list"}, 400),
    ("/v2/models/iris/infer", {}, 400),
    ("/v2/models/nope/infer", {"inputs": []}, 404),
])
def test_infer_errors_conform(client: httpx.Client, path: str, request_body: Any, status: int) -> None:
    resp = client.post(BASE + path, json=request_body)
    assert resp.status_code == status, resp.text
    conforms(OIP, "inference_error_response", resp.json())
    assert resp.json()["error"]


def _bounded_request_schema() -> dict[str, Any]:
    """inference_request with its recursive tensor_data unrolled two levels and lists kept short."""
    doc = copy.deepcopy(_document(OIP)["components"])
    scalars = [{"type": "number"}, {"type": "string", "maxLength": 4}, {"type": "boolean"}]
    doc["schemas"]["tensor_data"] = {"type": "array", "maxItems": 8, "items": {"anyOf": [
        *scalars, {"type": "array", "maxItems": 4, "items": {"anyOf": scalars}}]}}
    for name in ("request_input", "request_output"):
        doc["schemas"][name]["properties"]["name"] = {"enum": ["input-0", "output-0", "x"]}
    doc["schemas"]["request_input"]["properties"]["shape"] = {"type": "array", "maxItems": 3,
                                                              "items": {"type": "integer", "minimum": -1,
                                                                        "maximum": 8}}
    doc["schemas"]["request_input"]["properties"]["datatype"] = {
        "enum": ["BOOL", "UINT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES", "nonsense"]}
    doc["schemas"]["parameters"] = {"type": "object", "maxProperties": 2,
                                    "additionalProperties": {"type": ["string", "integer", "boolean"]}}
    for name in ("inference_request",):
        doc["schemas"][name]["properties"]["inputs"]["maxItems"] = 2
        doc["schemas"][name]["properties"]["outputs"]["maxItems"] = 2
    return {"$ref": "#/components/schemas/inference_request", "components": doc}


@GENERATED
@given(body=from_schema(_bounded_request_schema()))
def test_generated_infer_requests_never_5xx(client: httpx.Client, body: dict[str, Any]) -> None:
    conforms(OIP, "inference_request", body)
    resp = client.post(BASE + "/v2/models/iris/infer", json=body)
    assert resp.status_code < 500, (body, resp.text)
    if resp.status_code == 200:
        conforms(OIP, "inference_response", resp.json())
    else:
        assert resp.status_code in (400, 422), (body, resp.text)
        conforms(OIP, "inference_error_response", resp.json())


def test_oip_paths_are_all_served(client: httpx.Client) -> None:
    """Every path of the upstream document answers (with the model's name and a version filled in)."""
    for route, ops in _document(OIP)["paths"].items():
        path = route.replace("${MODEL_NAME}", "iris").replace("${MODEL_VERSION}", "1").rstrip("/")
        for method in ops:
            if method == "get":
                resp = client.get(BASE + path)
            elif method == "post":
                resp = client.post(BASE + path, json={"inputs": [{"name": "input-0", "shape": [1, 4],
                                                                  "datatype": "FP32", "data": ROWS[0]}]})
            else:
                continue
            assert resp.status_code == 200, (route, resp.text)
            name = response_schema(OIP, route, method, 200)
            if name:
                conforms(OIP, name, resp.json())


# ---- Detectors API: error answers and generated requests -------------------------------------------------------

DETECTOR_ROUTES = {"/api/v1/text/contents": "ContentAnalysisHttpRequest",
                   "/api/v1/text/chat": "ChatAnalysisHttpRequest",
                   "/api/v1/text/generation": "GenerationAnalysisHttpRequest",
                   "/api/v1/text/context/doc": "ContextAnalysisHttpRequest"}


def _detector_request_schema(name: str) -> dict[str, Any]:
    doc = copy.deepcopy(_document(DETECTORS)["components"])
    for schema in doc["schemas"].values():
        if schema.get("type") == "array":
            schema["maxItems"] = 3
        for prop in (schema.get("properties") or {}).values():
            if prop.get("type") == "string":
                prop["maxLength"] = 40
            if prop.get("type") == "array":
                prop["maxItems"] = 3
                if (prop.get("items") or {}).get("type") == "string":
                    prop["items"]["maxLength"] = 40
            if prop.get("type") == "object" and "properties" not in prop:
                prop["maxProperties"] = 0  # detector_params: none (their values are detector-specific)
    # The chat request's messages and tools point at OpenAI's document (not kept here): a message of OpenAI's
    # shape, and no tools.
    chat = doc["schemas"]["ChatAnalysisHttpRequest"]["properties"]
    chat["messages"]["items"] = {"type": "object", "required": ["role", "content"], "additionalProperties": False,
                                 "properties": {"role": {"enum": ["system", "user", "assistant", "tool"]},
                                                "content": {"type": "string", "maxLength": 40}}}
    chat.pop("tools", None)
    return {"$ref": f"#/components/schemas/{name}", "components": doc}


@pytest.mark.parametrize(("headers", "status"), [({"detector-id": "no-such"}, 404), ({}, 422)],
                         ids=["unknown-detector", "missing-header"])
@pytest.mark.parametrize("route", list(DETECTOR_ROUTES))
def test_detector_errors_conform(serving_server: LiveServer, route: str, headers: dict[str, str],
                                 status: int) -> None:
    with serving_server.client() as c:
        resp = c.post(route, headers=headers, json={"contents": ["x"]})
    assert resp.status_code == status, resp.text
    assert response_schema(DETECTORS, route, "post", status) == "Error"
    conforms(DETECTORS, "Error", resp.json())


@pytest.mark.parametrize("route", list(DETECTOR_ROUTES))
@settings(GENERATED, max_examples=10)
@given(data=st.data())
def test_generated_detector_requests_never_5xx(serving_server: LiveServer, route: str, data: st.DataObject) -> None:
    body = data.draw(from_schema(_detector_request_schema(DETECTOR_ROUTES[route])), label="body")
    detector = data.draw(st.sampled_from(["pii", "built-in-detector", "prompt-injection"]), label="detector")
    with serving_server.client() as c:
        resp = c.post(route, headers={"detector-id": detector}, json=body)
    assert resp.status_code < 500, (body, resp.text)
    if resp.status_code == 200:
        assert isinstance(resp.json(), list)
    else:
        assert resp.status_code in (400, 404, 422), resp.text
        conforms(DETECTORS, "Error", resp.json())


# ---- Orchestrator API ---------------------------------------------------------------------------------------------

STREAM_CONTENT = "/api/v2/text/detection/stream-content"
GENERATION_DETECTION = "/api/v2/text/generation-detection"
STREAMING_CLASSIFICATION = "/api/v1/task/server-streaming-classification-with-text-generation"
NDJSON = {"content-type": "application/x-ndjson"}


@pytest.fixture(scope="module")
def model(serving_server: LiveServer) -> Iterator[LiveServer]:
    """The module's server with the guardrails tests' stub OpenAI model behind its root orchestrator."""
    from kaip.guardrails.backend import OpenAIBackend

    with stub_server() as (url, _stub):
        service = serving_server.server.guardrails
        before, service.default_backend = service.default_backend, OpenAIBackend(url + "/v1")
        try:
            yield serving_server
        finally:
            service.default_backend = before


def documented_statuses(route: str) -> set[int]:
    return {int(s) for s in _document(ORCH)["paths"][route]["post"]["responses"]}


def stream_content_conforms(lines: list[Any]) -> None:
    """Each line a DetectionContentStreamResponse (all three fields, though the document requires none); only the
    last may be an Error."""
    for n, line in enumerate(lines):
        if n == len(lines) - 1 and "code" in line:
            conforms(ORCH, "Error", line)
            continue
        assert set(line) == {"detections", "processed_index", "start_index"}, line
        conforms(ORCH, "DetectionContentStreamResponse", line)
        for detection in line["detections"]:
            conforms(ORCH, "DetectionContentResponseObject", detection)


def test_stream_content_lines_conform(model: LiveServer) -> None:
    with model.client() as c:
        resp = c.post(STREAM_CONTENT, headers=NDJSON, content=ndjson(
            {"detectors": {"pii": {}, "hap": {}}, "content": "Reach me at ada@example.com. You are a"},
            {"content": " fucking idiot. Bye"}))
        assert resp.status_code == 200, resp.text
        lines = ndjson_lines(resp.text)
        stream_content_conforms(lines)
        assert len(lines) == 3 and all(line["detections"] for line in lines[:2])
        resp = c.post(STREAM_CONTENT, headers=NDJSON, content=ndjson(
            {"detectors": {"pii": {}}, "content": "Hello. "}, {"content": ""}))
        assert resp.status_code == 200
        lines = ndjson_lines(resp.text)
        stream_content_conforms(lines)
        assert lines[-1] == {"code": 422, "details": "`content` cannot be empty"}
        for first, status in (({"detectors": {"no-such": {}}, "content": "x"}, 404), ({"content": "x"}, 422)):
            resp = c.post(STREAM_CONTENT, headers=NDJSON, content=ndjson(first))
            assert resp.status_code == status and status in documented_statuses(STREAM_CONTENT), resp.text
            conforms(ORCH, "Error", resp.json())


def test_generation_detection_conforms(model: LiveServer) -> None:
    with model.client() as c:
        for prompt in ("please be rude", "What is my deductible?"):
            resp = c.post(GENERATION_DETECTION, json={"model_id": "stub", "prompt": prompt,
                                                      "detectors": {"hap": {}, "bias": {}}})
            assert resp.status_code == 200, resp.text
            conforms(ORCH, "GenerationDetectionResponse", resp.json())
        assert resp.json()["detections"] == []
        for body, status in (({"model_id": "m", "prompt": "x", "detectors": {"no-such": {}}}, 404),
                             ({"model_id": "m", "prompt": "x"}, 422)):
            resp = c.post(GENERATION_DETECTION, json=body)
            assert resp.status_code == status and status in documented_statuses(GENERATION_DETECTION), resp.text
            conforms(ORCH, "Error", resp.json())


def test_streaming_classification_events_conform(model: LiveServer) -> None:
    with model.client() as c:
        for inputs, config in (("who is on file", {"output": {"models": {"pii": {}}}}),  # windows with results
                               ("who is on file", {}),  # the model's chunks forwarded
                               ("My SSN is 123-45-6789", {"input": {"models": {"pii": {}}}})):  # input detection
            resp = c.post(STREAMING_CLASSIFICATION, json={"model_id": "stub", "inputs": inputs,
                                                          "guardrail_config": config})
            assert resp.status_code == 200, resp.text
            events = sse_events(resp.text)
            assert events and all(kind == "message" for kind, _ in events)
            for _, data in events:
                conforms(ORCH, "ClassifiedGeneratedTextStreamResult", data)
        resp = c.post(STREAMING_CLASSIFICATION, json={"model_id": "stub", "inputs": "x", "guardrail_config": {
            "output": {"models": {"no-such": {}}}}})
        assert resp.status_code == 404 and 404 in documented_statuses(STREAMING_CLASSIFICATION)
        conforms(ORCH, "Error", resp.json())


def test_streaming_classification_error_event_conforms() -> None:
    """An error once the stream has started is upstream's `event: error` whose data is an `Error`."""
    from kaip.guardrails.http import _sse
    from kaip.guardrails.orchestrator import OrchestratorError

    async def results() -> AsyncIterator[dict[str, Any]]:
        yield {"input_token_count": 1, "token_classification_results": {}, "generated_text": "Hi"}
        raise OrchestratorError(503, "generate request failed for `m`: gone")

    async def body() -> str:
        return b"".join([chunk async for chunk in _sse(results(), upstream_errors=True).body_iterator]).decode()

    (_, first), (kind, error) = sse_events(asyncio.run(body()))
    conforms(ORCH, "ClassifiedGeneratedTextStreamResult", first)
    assert kind == "error" and error == {"code": 503, "details": "generate request failed for `m`: gone"}
    conforms(ORCH, "Error", error)


# ---- Orchestrator API: generated requests --------------------------------------------------------------------------

DETECTION_ROUTES = {"/api/v2/text/detection/content": "DetectionContentRequest",
                    "/api/v2/text/detection/chat": "DetectionChatRequest",
                    "/api/v2/text/detection/generated": "GeneratedTextDetectionRequest",
                    "/api/v2/text/detection/context": "DetectionContextDocsRequest",
                    "/api/v2/text/generation-detection": "GenerationDetectionRequest"}
BUILT_IN_DETECTORS = ["pii", "built-in-detector", "hap", "prompt-injection", "no-such-detector"]


def _detection_request_schema(name: str) -> dict[str, Any]:
    """Upstream's request schema, with detectors drawn from Kaip's built-ins (and one unknown id), no parameters,
    short strings, and OpenAI's message shape in place of the remote reference."""
    doc = copy.deepcopy(_document(ORCH)["components"])
    schema = doc["schemas"][name]
    schema["type"] = "object"  # some of upstream's request schemas leave it implicit
    for prop in schema["properties"].values():
        if prop.get("type") == "string":
            prop["maxLength"] = 40
        if prop.get("type") == "array":
            prop["maxItems"] = 3
    schema["properties"]["detectors"] = {"type": "object", "maxProperties": 2, "additionalProperties": False,
                                         "properties": {d: {"type": "object", "maxProperties": 0}
                                                        for d in BUILT_IN_DETECTORS}}
    if name == "GenerationDetectionRequest":
        schema["properties"].pop("text_gen_parameters")  # the stub model ignores them (schemathesis sends them)
        # Upstream's struct refuses unknown fields (tests/test_guardrails_api.py checks that answer), and the
        # document does not say so: most generated bodies would stop there rather than reach the model.
        schema["additionalProperties"] = False
    if "messages" in schema["properties"]:
        schema["properties"]["messages"]["items"] = {
            "type": "object", "required": ["role", "content"], "additionalProperties": False,
            "properties": {"role": {"enum": ["system", "user", "assistant"]},
                           "content": {"type": "string", "maxLength": 40}}}
        schema["properties"].pop("tools", None)
    return {"$ref": f"#/components/schemas/{name}", "components": doc}


@pytest.mark.parametrize("route", list(DETECTION_ROUTES))
@settings(GENERATED, max_examples=10)
@given(data=st.data())
def test_generated_detection_requests_answer_as_documented(model: LiveServer, route: str,
                                                           data: st.DataObject) -> None:
    body = data.draw(from_schema(_detection_request_schema(DETECTION_ROUTES[route])), label="body")
    with model.client() as c:
        resp = c.post(route, json=body)
    documented = {int(s) for s in _document(ORCH)["paths"][route]["post"]["responses"]}
    assert resp.status_code in documented, (body, resp.status_code, resp.text)
    name = response_schema(ORCH, route, "post", resp.status_code)
    assert name is not None
    conforms(ORCH, name, resp.json())


def _stream_event_schema() -> dict[str, Any]:
    doc = copy.deepcopy(_document(ORCH)["components"])
    doc["schemas"]["DetectionContentStreamEvent"]["properties"]["content"]["maxLength"] = 40
    return {"$ref": "#/components/schemas/DetectionContentStreamEvent", "components": doc}


@settings(GENERATED, max_examples=15)
@given(data=st.data())
def test_generated_content_streams_answer_as_documented(model: LiveServer, data: st.DataObject) -> None:
    """A first message from DetectionContentRequest, then up to three DetectionContentStreamEvents."""
    first = data.draw(from_schema(_detection_request_schema("DetectionContentRequest")), label="first")
    rest = data.draw(st.lists(from_schema(_stream_event_schema()), max_size=3), label="rest")
    with model.client() as c:
        resp = c.post(STREAM_CONTENT, headers=NDJSON, content=ndjson(first, *rest))
    assert resp.status_code in documented_statuses(STREAM_CONTENT), (first, rest, resp.status_code, resp.text)
    if resp.status_code == 200:
        stream_content_conforms(ndjson_lines(resp.text))
    else:
        conforms(ORCH, "Error", resp.json())
