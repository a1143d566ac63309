"""schemathesis against a live server, from the OpenAPI documents of the protocols Kaip speaks: upstream's Open
Inference v2 document on a live sklearn InferenceService, upstream's Detectors API and FMS orchestrator documents
on the guardrails routes at the server's root, and Kaip's own `/openapi.json` on the resource API.

Each run is schemathesis's own engine (what `st run` does): the documents' examples, the coverage phase (boundary
values, missing and malformed fields, wrong types, methods a path does not allow) and the fuzzing phase (requests
generated from the schemas), positive and negative data, with a fixed seed. Every answer is checked: no 5xx, a
status the document lists for the operation, a documented content type, and a body that validates against the
document's schema for that status. Each protocol gets at least MIN_REQUESTS requests, counted from the engine's
own record of what it sent.

Where a document is wrong or Kaip deliberately differs, the copy loaded here is changed narrowly, each change with
its reason (listed in docs/conformance.md); everything else is upstream's file as it is.
"""

from __future__ import annotations

import copy
import functools
import json
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import strategies as st
from schemathesis.engine import Status, events

import serving_fixtures
from conformance.harness import OPENAPI
from kaip.api.errors import ApiError
from kaip.server import paths
from kaip.testing.live import LiveServer
from serving_fixtures import iris_v2_client
from test_guardrails_api import stub_server  # the OpenAI-compatible model the guardrails tests use

serving_server = serving_fixtures.serving_server  # a live server for this module (a fixture)
pytestmark = pytest.mark.slow

MIN_REQUESTS = 1000  # per protocol (issue 13)
SEED = 13
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance")
WRITES = ("POST", "PUT", "PATCH", "DELETE")
OIP = OPENAPI / "open-inference-protocol" / "open_inference_rest.yaml"
GUARDRAILS = OPENAPI / "fms-guardrails-orchestrator"
DETECTORS = GUARDRAILS / "openapi_detector_api.yaml"
ORCHESTRATOR = GUARDRAILS / "orchestrator_openapi_0_1_0.yaml"
BUILT_IN_DETECTORS = ["pii", "built-in-detector", "hap", "prompt-injection"]
FIGURES: dict[str, Outcome] = {}  # printed at the end of the module (pytest -s), for docs/conformance.md


@functools.cache
def _document(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def document(path: Path) -> dict[str, Any]:
    return copy.deepcopy(_document(path))


# ---- the engine -------------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """What one schemathesis run sent and what it found."""

    name: str
    requests: int = 0
    by_operation: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    reached: int = 0  # requests whose answer came from where the test meant them to go (see `reached`)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    writes: list[tuple[str, str]] = field(default_factory=list)  # (method, URL) of every POST, PUT, PATCH, DELETE

    def summary(self) -> str:
        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(self.by_status.items()))
        return (f"{self.name}: {self.requests} requests in {self.seconds:.0f} s over {len(self.by_operation)} "
                f"operations, {self.reached} reached their target; statuses {statuses}")

    @property
    def operations(self) -> set[str]:
        return {label for label in self.by_operation if label != "Stateful tests"}

    def check(self, operations: int) -> None:
        """No failure and no error, at least MIN_REQUESTS requests, and every one of `operations` called."""
        problems = self.errors + self.failures
        assert not problems, f"{self.summary()}\n" + "\n\n".join(problems[:10])
        assert self.requests >= MIN_REQUESTS, self.summary()
        assert not any(code >= 500 for code in self.by_status), self.summary()
        assert len(self.operations) == operations, (self.summary(), sorted(self.operations))


def config(base_url: str, token: str, max_examples: int, **extra: Any) -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "base-url": base_url,
        "headers": {"Authorization": f"Bearer {token}"},
        "seed": SEED,
        "workers": 1,
        "continue-on-failure": True,  # report every failure, and always send the full number of requests
        "cache": {"enabled": False},  # no replay of earlier runs' failures: each run is the same
        # seeded, derandomized, no example database (nothing replayed from, or written to, .hypothesis/)
        "generation": {"max-examples": max_examples, "deterministic": True, "database": "none", "mode": "all",
                       "no-shrink": True},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        **extra,
    })


def fuzz(schema: Any, name: str, reached: Callable[[Any], bool] = lambda _response: True) -> Outcome:
    """Run schemathesis's engine over `schema`; `reached(response)` says whether an answer came from the intended
    target (the model server, say, rather than a 404 in front of it)."""
    out = Outcome(name)
    seen: set[tuple[str, str, str]] = set()
    started = time.monotonic()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            for interaction in recorder.interactions.values():
                out.requests += 1
                if interaction.request.method in WRITES:
                    out.writes.append((interaction.request.method, interaction.request.uri))
                out.by_operation[recorder.label] += 1
                if interaction.response is not None:
                    out.by_status[interaction.response.status_code] += 1
                    out.reached += bool(reached(interaction.response))
            for case_id, checks in recorder.checks.items():
                for node in checks:
                    if node.failure_info is None:
                        if node.status == Status.ERROR:  # the check itself could not run
                            out.errors.append(f"{recorder.label}: {node.name}: the check raised an error")
                        continue
                    failure = node.failure_info.failure
                    key = (recorder.label, node.name, failure.title)
                    if key in seen:
                        continue
                    seen.add(key)
                    interaction = recorder.interactions.get(case_id)
                    answer = interaction.response if interaction is not None else None
                    got = f"{answer.status_code} {answer.content[:300]!r}" if answer is not None else "no answer"
                    out.failures.append(f"{recorder.label}: {node.name}: {failure.title}\n{failure.message[:600]}\n"
                                        f"{node.failure_info.code_sample}\n-> {got}")
        elif isinstance(event, events.NonFatalError):
            out.errors.append(f"{event.label}: {event.info}")
        elif isinstance(event, events.FatalError):
            out.errors.append(f"fatal: {event.exception!r}")
    out.seconds = time.monotonic() - started
    FIGURES[name] = out
    return out


@pytest.fixture(scope="module", autouse=True)
def _print_figures() -> Iterator[None]:
    yield
    for outcome in FIGURES.values():
        print("\n" + outcome.summary())
        for label, n in sorted(outcome.by_operation.items()):
            print(f"    {n:5d}  {label}")


# ---- Open Inference v2 --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def iris(serving_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    yield from iris_v2_client(serving_server, tmp_path_factory.mktemp("models"))


def _iris_input(template: dict[str, Any], rows: list[list[float]], datatype: str, nested: bool) -> dict[str, Any]:
    if datatype.startswith("INT"):
        rows = [[int(x) for x in row] for row in rows]
    return {**template, "shape": [len(rows), 4], "datatype": datatype, "data": rows if nested else sum(rows, [])}


def _iris_tensor(body: Any) -> Any:
    """About half of the generated inference requests get an input the deployed model can take (one numeric
    [n, 4] tensor, flat or nested); id, parameters, outputs and the input's other fields stay as generated."""
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list) or not inputs or not isinstance(inputs[0], dict):
        return st.just(body)
    rows = st.lists(st.lists(st.floats(0, 10, width=32), min_size=4, max_size=4), min_size=1, max_size=3)
    tensor = st.builds(_iris_input, st.just(inputs[0]), rows, st.sampled_from(["FP32", "FP64", "INT32", "INT64"]),
                       st.booleans())
    return st.one_of(st.just(body), tensor.map(lambda t: {**body, "inputs": [t]}))


def test_open_inference_v2(serving_server: LiveServer, iris: httpx.Client) -> None:
    doc = document(OIP)
    # Upstream writes its path parameters as `${MODEL_NAME}`: a placeholder of its prose, where OpenAPI's template
    # is `{MODEL_NAME}` (read literally, the `$` would be part of the URL).
    doc["paths"] = {path.replace("${", "{"): item for path, item in doc["paths"].items()}
    schema = schemathesis.openapi.from_dict(doc, config=config(
        f"{serving_server.url}/serving/default/iris", serving_server.token, max_examples=900,
        # the deployed model, so that requests reach it rather than all being 404s
        parameters={"path.MODEL_NAME": "iris", "path.MODEL_VERSION": "1"}))

    @schema.hook
    def flatmap_body(_context: Any, body: Any) -> Any:
        return _iris_tensor(body)

    # An answer from the model server carries the revision that answered (the gateway adds it to what it forwards).
    outcome = fuzz(schema, "Open Inference v2", reached=lambda r: "x-kaip-revision" in r.headers)
    outcome.check(operations=6)  # every path and method of the document
    assert outcome.reached == outcome.requests, outcome.summary()
    assert outcome.by_status[200] >= 100, outcome.summary()  # the model answered, not only refusals


def test_a_replica_redirect_points_through_the_gateway(serving_server: LiveServer, iris: httpx.Client) -> None:
    """Found on the way: `GET /v2/` (upstream's path) was redirected by the model server to `/v2`, with a Location
    naming the replica's own 127.0.0.1 port. The runtime now serves `/v2/`, and the gateway rewrites any Location
    that names the replica to the InferenceService's path."""
    assert iris.get("/serving/default/iris/v2/").status_code == 200
    resp = iris.get("/serving/default/iris/v2/models/iris/", follow_redirects=False)
    assert resp.status_code == 307, resp.text
    assert resp.headers["location"] == "/serving/default/iris/v2/models/iris"
    assert iris.get(resp.headers["location"]).json()["name"] == "iris"


# ---- guardrails ---------------------------------------------------------------------------------------------------

OPENAI_SCHEMAS = "https://raw.githubusercontent.com/openai/openai-openapi/manual_spec/openapi.yaml#/components/schemas/"
MESSAGE = {"type": "object", "required": ["role", "content"],
           "properties": {"role": {"enum": ["system", "user", "assistant"]}, "content": {"type": "string"}}}
# Both guardrails documents point at OpenAI's document by URL (not kept in shared/openapi/, and nothing here reaches
# the network): its schemas are replaced by their required core. Responses: any object (the OpenAI part of an answer
# is the model's, checked by tests/test_guardrails_api.py and the serving tests with the real openai client).
OPENAI_STAND_INS = {
    "ChatCompletionRequestMessage": MESSAGE,
    "ChatCompletionTool": {"type": "object", "required": ["type", "function"], "properties": {
        "type": {"enum": ["function"]},
        "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}},
    "CreateChatCompletionRequest": {"type": "object", "required": ["model", "messages"], "properties": {
        "model": {"type": "string"}, "messages": {"type": "array", "minItems": 1, "items": MESSAGE}}},
    "CreateCompletionRequest": {"type": "object", "required": ["model", "prompt"], "properties": {
        "model": {"type": "string"}, "prompt": {"type": "string"}}},
    "CreateChatCompletionResponse": {"type": "object"},
    "CreateCompletionResponse": {"type": "object"},
}


def _local(node: Any) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(OPENAI_SCHEMAS):
            return copy.deepcopy(OPENAI_STAND_INS[ref.removeprefix(OPENAI_SCHEMAS)])
        return {key: _local(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_local(value) for value in node]
    return node


def _detector_ids(detectors: Any) -> Any:
    """Generated detector ids, each kept or replaced by one of Kaip's built-in detectors."""
    if not isinstance(detectors, dict) or not detectors:
        return st.just(detectors)
    return st.tuples(*[st.sampled_from([*BUILT_IN_DETECTORS, key]) for key in detectors]).map(
        lambda names: dict(zip(names, detectors.values(), strict=True)))


def _built_in_detectors(body: Any) -> Any:
    """The documents' `detectors` maps have any keys; a generated id is hardly ever a detector Kaip has, and every
    such request would stop at a 404. Each id is kept or swapped for a built-in one (the `input` / `output` maps of
    the completions requests likewise), so that requests reach the detectors."""
    if not isinstance(body, dict) or not isinstance(body.get("detectors"), dict):
        return st.just(body)
    detectors = body["detectors"]
    if set(detectors) & {"input", "output"}:
        maps = st.fixed_dictionaries({key: _detector_ids(value) for key, value in detectors.items()})
    else:
        maps = _detector_ids(detectors)
    return maps.map(lambda d: {**body, "detectors": d})


# Strings upstream refuses when empty (422 "`x` is required"), with what an empty one may become.
REQUIRED_TEXT = {"model_id": "stub", "inputs": "My SSN is 123-45-6789.", "prompt": "My SSN is 123-45-6789.",
                 "content": "My SSN is 123-45-6789."}


def _some_text(body: Any) -> Any:
    """Generated strings are empty more often than not, and such a request stops at upstream's emptiness check:
    each empty `model_id`, `inputs`, `prompt` or `content` is kept or filled, so that requests reach the model and
    the detectors."""
    empty = [key for key in REQUIRED_TEXT if isinstance(body, dict) and body.get(key) == ""]
    if not empty:
        return st.just(body)
    return st.tuples(*[st.sampled_from(["", REQUIRED_TEXT[key]]) for key in empty]).map(
        lambda values: {**body, **dict(zip(empty, values, strict=True))})


@pytest.fixture(scope="module")
def guardrails_server(serving_server: LiveServer) -> Iterator[LiveServer]:
    """The module's server with a model behind the root orchestrator, so that the completions and generation
    routes get past `no chat generation service is configured` to the model and the output detectors."""
    with stub_server() as (url, _stub):
        from kaip.guardrails.backend import OpenAIBackend

        service = serving_server.server.guardrails
        before = service.default_backend
        service.default_backend = OpenAIBackend(url + "/v1")
        try:
            yield serving_server
        finally:
            service.default_backend = before


def test_detectors_api(guardrails_server: LiveServer) -> None:
    server = guardrails_server
    schema = schemathesis.openapi.from_dict(_local(document(DETECTORS)), config=config(
        server.url, server.token, max_examples=220,
        # the `detector-id` header names one of Kaip's detectors most of the time (a generated one otherwise: 404)
        dictionaries={"detector-ids": {"values": [*BUILT_IN_DETECTORS, "no-such-detector"]}},
        parameters={"header.detector-id": {"dictionary": "detector-ids", "probability": 0.9}}))
    # `GET /health` is each detector server's own probe; Kaip serves the Detectors API beside its resource API,
    # whose health endpoints are /healthz and /readyz.
    schema = schema.exclude(path="/health")
    outcome = fuzz(schema, "Detectors API", reached=lambda r: r.status_code == 200)
    outcome.check(operations=4)  # the four detection routes
    assert outcome.reached >= 200, outcome.summary()


# Upstream's orchestrator routes Kaip does not serve (docs/guardrails.md): the health router (Kaip's are /healthz
# and /readyz).
ORCHESTRATOR_NOT_SERVED = ["/health", "/info"]
STREAM_CONTENT = "/api/v2/text/detection/stream-content"
GENERATION_DETECTION = "/api/v2/text/generation-detection"
STREAMING_CLASSIFICATION = "/api/v1/task/server-streaming-classification-with-text-generation"
NDJSON = "application/x-ndjson"


@schemathesis.serializer(NDJSON)
def _ndjson_body(_context: Any, value: Any) -> bytes:
    """A generated /stream-content body: the document's request schema is one message, so a one-line stream
    (streams of many lines: test_protocols.py and test_guardrails_api.py)."""
    return (json.dumps(value) + "\n").encode()


@schemathesis.deserializer(NDJSON)
def _ndjson_answer(_context: Any, response: Any) -> list[Any]:
    return [json.loads(line) for line in response.content.splitlines() if line.strip()]


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _sse_event(name: str, event: str) -> dict[str, Any]:
    """One server-sent event whose `data` is JSON of the schema `name` (OpenAPI 3.2's way of describing events)."""
    return {"type": "object", "required": ["data"], "properties": {
        "event": {"enum": [event]},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": _ref(name)}}}


def _orchestrator_document() -> dict[str, Any]:
    doc = _local(document(ORCHESTRATOR))
    error = {"description": "Bad Request", "content": {"application/json": {"schema": _ref("Error")}}}
    for item in doc["paths"].values():
        for operation in item.values():
            # Upstream's orchestrator (axum's Json extractor) answers a body that is not JSON at all with 400 and
            # its `Error`; the document lists 400 on some routes only.
            if isinstance(operation, dict) and "requestBody" in operation:
                operation["responses"].setdefault("400", error)
    for route in (STREAM_CONTENT, STREAMING_CLASSIFICATION):
        responses = doc["paths"][route]["post"]["responses"]
        # The document lists the streaming routes' 404 and 422 as event streams. Kaip checks a request before its
        # stream starts and answers a bad one with a JSON `Error`, as upstream's own JSON extractor already does
        # (upstream sends its later checks' errors as a 200 stream holding one error).
        for status in ("404", "422"):
            responses[status]["content"] = {"application/json": {"schema": _ref("Error")}}
    stream = doc["paths"][STREAMING_CLASSIFICATION]["post"]["responses"]["200"]["content"]["text/event-stream"]
    # OpenAPI 3.0 cannot describe events: the document's schema is each event's `data`, where schemathesis reads
    # a 3.0 event-stream schema as the event itself ({data, event, ...}). The copy says it as OpenAPI 3.2 does,
    # with upstream's `event: error` events, whose data is an `Error`.
    stream["schema"] = {"anyOf": [_sse_event("ClassifiedGeneratedTextStreamResult", "message"),
                                  _sse_event("Error", "error")]}
    operation = doc["paths"][STREAM_CONTENT]["post"]
    # The first message of a stream matches both of the document's request alternatives (a DetectionContentRequest
    # is also a DetectionContentStreamEvent), so `oneOf` would refuse every valid first message.
    body = operation["requestBody"]["content"][NDJSON]["schema"]
    body["anyOf"] = body.pop("oneOf")
    # Upstream's handler writes NDJSON (an object a line, `utils::json::to_nd_string`), not the event stream the
    # document names; read here as the array of its lines. It answers any other request content type with 415.
    operation["responses"]["200"]["content"] = {NDJSON: {"schema": {"type": "array",
                                                                    "items": _ref("DetectionContentStreamResponse")}}}
    operation["responses"]["415"] = {"description": "Unsupported Media Type",
                                     "content": {"application/json": {"schema": _ref("Error")}}}
    # `input_token_count` is documented as a string; upstream's GenerationWithDetectionResult serializes a u32.
    answer = doc["components"]["schemas"]["GenerationDetectionResponse"]
    answer["properties"]["input_token_count"] = {"type": "integer"}
    return doc


def test_orchestrator_api(guardrails_server: LiveServer) -> None:
    server = guardrails_server
    schema = schemathesis.openapi.from_dict(_orchestrator_document(), config=config(
        server.url, server.token, max_examples=100))
    schema = schema.exclude(path=ORCHESTRATOR_NOT_SERVED)

    @schema.hook
    def flatmap_body(_context: Any, body: Any) -> Any:
        return _built_in_detectors(body).flatmap(_some_text)

    outcome = fuzz(schema, "FMS orchestrator API", reached=lambda r: r.status_code == 200)
    outcome.check(operations=10)  # every route of the document Kaip serves
    assert outcome.reached >= 50, outcome.summary()


# ---- the resource API, from Kaip's own /openapi.json --------------------------------------------------------------

NAMESPACE = "fuzz"  # every namespaced operation addresses this namespace
NAMES = ["fuzz-a", "fuzz-b"]  # half of the generated object names are these (objects the test creates first)
# Kinds whose objects are only data (no process starts, nothing is fetched or indexed, the machine's own Node is not
# touched): their writes are real. Every write to any other kind is sent with dryRun=All, so the server validates,
# defaults and answers in full, and persists nothing.
PASSIVE = ("configmaps", "secrets", "serviceaccounts", "events", "namespaces", "rolebindings", "clusterrolebindings",
           "resourceflavors", "clusterqueues", "cohorts", "localqueues", "workloadpriorityclasses", "servingruntimes",
           "clusterservingruntimes", "trainingruntimes", "clustertrainingruntimes", "guardrailsorchestrators",
           "pipelines")
# The coverage phase (every boundary value, missing field and wrong type of the schema, ~2,000 requests per kind)
# runs on these kinds only: all kinds share the handlers, and the full document would take ~160,000 requests.
COVERAGE_KINDS = ("configmaps", "workloadpriorityclasses")


def kinds_template(plurals: tuple[str, ...]) -> str:
    """A regex for the document's path templates of these kinds: the collection, an object, its status. (Not a
    search for the plural anywhere: `/namespaces/` is in every namespaced path.)"""
    return rf"^/apis?/(?:[^/]+/)?[^/]+/(?:namespaces/[^/]+/)?({'|'.join(plurals)})(?:/[^/]+(?:/status)?)?$"


def plural_of(url: str) -> str | None:
    """The kind (its plural) a resource API URL addresses, read as the server reads it."""
    parts = urllib.parse.unquote(urllib.parse.urlsplit(url).path).strip("/").split("/")
    if parts[0] == "api" and len(parts) >= 3:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[0] == "apis" and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    try:
        return paths.parse(group, version, "/".join(rest)).plural
    except ApiError:
        return None


def _passive_objects() -> list[tuple[str, dict[str, Any]]]:
    """One object named after NAMES[0] of some passive kinds, so that reads, updates, patches and deletes find
    something (server-side apply creates more as the run goes)."""
    ns = f"/api/v1/namespaces/{NAMESPACE}"
    kueue = "/apis/kueue.x-k8s.io/v1beta2"
    meta = {"name": NAMES[0]}
    return [
        (f"{ns}/configmaps", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"a": "b"}}),
        (f"{ns}/secrets", {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "stringData": {"a": "b"}}),
        (f"{ns}/serviceaccounts", {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}),
        ("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}),
        (f"{kueue}/workloadpriorityclasses", {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass",
                                              "metadata": meta, "value": 10}),
        (f"{kueue}/resourceflavors", {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
                                      "metadata": meta}),
        (f"{kueue}/namespaces/{NAMESPACE}/localqueues", {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
                                                         "metadata": meta, "spec": {"clusterQueue": NAMES[0]}}),
        (f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NAMESPACE}/rolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "name": "nobody"}]}),
    ]


def test_resource_api(serving_server: LiveServer) -> None:
    server = serving_server
    with server.client() as c:
        created = c.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace",
                                                     "metadata": {"name": NAMESPACE}})
        assert created.status_code == 201, created.text
        for path, obj in _passive_objects():
            resp = c.post(path, json=obj)
            assert resp.status_code == 201, (path, resp.text)
        doc = c.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(doc, config=config(
        server.url, server.token, max_examples=2,
        parameters={"path.namespace": NAMESPACE, "path.name": {"dictionary": "names", "probability": 0.5}},
        dictionaries={"names": {"values": NAMES}},
        operations=[
            {"exclude-path-regex": kinds_template(PASSIVE), "parameters": {"query.dryRun": "All"}},
            {"exclude-path-regex": kinds_template(COVERAGE_KINDS), "phases": {"coverage": {"enabled": False}}},
        ]))
    outcome = fuzz(schema, "Resource API (Kaip's /openapi.json)", reached=lambda r: r.status_code < 400)
    for method, uri in outcome.writes:
        plural = plural_of(uri)
        assert plural is None or plural in PASSIVE or "dryRun=All" in uri, f"a real write to {plural}: {method} {uri}"
    # every operation of the document
    outcome.check(operations=sum(1 for item in doc["paths"].values() for method in item if method != "parameters"))
