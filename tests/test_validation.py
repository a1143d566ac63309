"""Validation of incoming documents (api/validation.py, api/meta.py) and label selectors (api/selectors.py).

These are pure functions: no server, no store. Each test asserts what a user sees when their YAML is
right or wrong: the normalised object, or a 422 whose causes name the exact field.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from kaip.api.core import CONFIGMAP, NAMESPACE, POD, ROLE_BINDING, SECRET
from kaip.api.errors import ApiError
from kaip.api.kinds import KindInfo
from kaip.api.meta import dns1123_label_error, dns1123_subdomain_error, label_value_error, qualified_name_error
from kaip.api.selectors import Requirement, matches, parse_selector
from kaip.api.validation import field_path, validate_document


def pod(name: str = "p", **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "command": ["sleep", "1"]}
    body = {"containers": [container], **spec}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": body}


def invalid_causes(info: KindInfo, doc: dict[str, Any], namespace: str | None = "default") -> dict[str, str]:
    """Validate a document that must be refused; return {field: reason} of its causes."""
    with pytest.raises(ApiError) as exc:
        validate_document(info, doc, namespace=namespace)
    err = exc.value
    assert err.code == 422, err.to_status()
    status = err.to_status()
    assert status["reason"] == "Invalid"
    assert status["kind"] == "Status" and status["status"] == "Failure"
    return {c["field"]: c["reason"] for c in status["details"]["causes"]}


# ---- names ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "abc", "a-b", "a1", "1a", "x" * 63])
def test_valid_dns1123_labels(name: str) -> None:
    assert dns1123_label_error(name) is None


@pytest.mark.parametrize("name", ["", "A", "a_b", "-a", "a-", "a.b", "x" * 64, "á"])
def test_invalid_dns1123_labels(name: str) -> None:
    assert dns1123_label_error(name) is not None


@pytest.mark.parametrize("name", ["a", "a.b", "a-b.c-d", "x" * 63 + "." + "y" * 63, "1.2.3"])
def test_valid_dns1123_subdomains(name: str) -> None:
    assert dns1123_subdomain_error(name) is None


@pytest.mark.parametrize("name", ["", "A.b", "a..b", ".a", "a.", "a_b", "a." + "b" * 253])
def test_invalid_dns1123_subdomains(name: str) -> None:
    assert dns1123_subdomain_error(name) is not None


def test_namespace_names_follow_the_label_rule() -> None:
    ok = validate_document(NAMESPACE, {"metadata": {"name": "team-a"}}, namespace=None)
    assert ok["metadata"]["name"] == "team-a"
    # A dot is fine in a subdomain but not in a label: namespaces refuse it, config maps accept it.
    assert invalid_causes(NAMESPACE, {"metadata": {"name": "team.a"}}, namespace=None) == {
        "metadata.name": "FieldValueInvalid"}
    cm = validate_document(CONFIGMAP, {"metadata": {"name": "team.a"}}, namespace="default")
    assert cm["metadata"]["name"] == "team.a"


def test_namespace_is_cluster_scoped_and_drops_a_namespace_field() -> None:
    ok = validate_document(NAMESPACE, {"metadata": {"name": "x", "namespace": "default"}}, namespace=None)
    assert "namespace" not in ok["metadata"]


@pytest.mark.parametrize("name", ["Upper", "under_score", "-lead", "trail-", "a" * 254])
def test_invalid_object_names_are_refused(name: str) -> None:
    assert invalid_causes(CONFIGMAP, {"metadata": {"name": name}}) == {"metadata.name": "FieldValueInvalid"}


def test_missing_name_is_required() -> None:
    assert invalid_causes(CONFIGMAP, {"metadata": {}}) == {"metadata.name": "FieldValueRequired"}
    assert invalid_causes(CONFIGMAP, {}) == {"metadata.name": "FieldValueRequired"}


def test_generate_name_appends_a_random_suffix() -> None:
    names = set()
    for _ in range(5):
        out = validate_document(CONFIGMAP, {"metadata": {"generateName": "job-"}}, namespace="default")
        name = out["metadata"]["name"]
        assert name.startswith("job-") and len(name) == len("job-") + 5
        assert dns1123_subdomain_error(name) is None
        names.add(name)
    assert len(names) > 1


def test_an_explicit_name_wins_over_generate_name() -> None:
    out = validate_document(CONFIGMAP, {"metadata": {"name": "fixed", "generateName": "job-"}}, namespace="default")
    assert out["metadata"]["name"] == "fixed"


def test_invalid_generate_name_is_refused() -> None:
    assert invalid_causes(CONFIGMAP, {"metadata": {"generateName": "Job-"}}) == {"metadata.name": "FieldValueInvalid"}


# ---- namespaces on namespaced kinds -------------------------------------------------------------------


def test_namespace_comes_from_the_request_path() -> None:
    out = validate_document(CONFIGMAP, {"metadata": {"name": "c"}}, namespace="team-a")
    assert out["metadata"]["namespace"] == "team-a"


def test_namespace_in_the_document_must_match_the_path() -> None:
    causes = invalid_causes(CONFIGMAP, {"metadata": {"name": "c", "namespace": "team-b"}}, namespace="team-a")
    assert causes == {"metadata.namespace": "FieldValueInvalid"}


def test_namespaced_kind_without_any_namespace_is_refused() -> None:
    assert invalid_causes(CONFIGMAP, {"metadata": {"name": "c"}}, namespace=None) == {
        "metadata.namespace": "FieldValueRequired"}


# ---- labels and annotations ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["app", "app.kubernetes.io/name", "a_b", "A.b-C", "x" * 63, "kaip.dev/x"])
def test_valid_label_keys(key: str) -> None:
    assert qualified_name_error(key) is None


@pytest.mark.parametrize("key", ["", "-app", "app-", "x" * 64, "Bad_Prefix/x", "a/b/c", "/name", "pre.fix/",
                                 "has space", "ü"])
def test_invalid_label_keys(key: str) -> None:
    assert qualified_name_error(key) is not None


@pytest.mark.parametrize("value", ["", "v", "v1.2_3-x", "x" * 63])
def test_valid_label_values(value: str) -> None:
    assert label_value_error(value) is None


@pytest.mark.parametrize("value", ["-v", "v-", "has space", "x" * 64, "a/b"])
def test_invalid_label_values(value: str) -> None:
    assert label_value_error(value) is not None


def test_bad_label_key_and_value_are_reported_on_metadata_labels() -> None:
    assert invalid_causes(CONFIGMAP, {"metadata": {"name": "c", "labels": {"-k": "v"}}}) == {
        "metadata.labels": "FieldValueInvalid"}
    with pytest.raises(ApiError) as exc:
        validate_document(CONFIGMAP, {"metadata": {"name": "c", "labels": {"k": "bad value"}}}, namespace="d")
    assert "bad value" in exc.value.message


def test_annotations_allow_any_value_but_check_keys_and_size() -> None:
    free_text = {"note": "Anything at all: spaces, /slashes/, {json}", "kaip.dev/x": ""}
    out = validate_document(CONFIGMAP, {"metadata": {"name": "c", "annotations": free_text}}, namespace="d")
    assert out["metadata"]["annotations"] == free_text
    assert invalid_causes(CONFIGMAP, {"metadata": {"name": "c", "annotations": {"bad key": "v"}}}) == {
        "metadata.annotations": "FieldValueInvalid"}
    huge = {"big": "x" * (256 * 1024)}
    assert invalid_causes(CONFIGMAP, {"metadata": {"name": "c", "annotations": huge}}) == {
        "metadata.annotations": "FieldValueInvalid"}


def test_finalizer_names_must_be_qualified_names() -> None:
    ok = validate_document(CONFIGMAP, {"metadata": {"name": "c", "finalizers": ["kaip.dev/cleanup", "kubernetes"]}},
                           namespace="d")
    assert ok["metadata"]["finalizers"] == ["kaip.dev/cleanup", "kubernetes"]
    assert invalid_causes(CONFIGMAP, {"metadata": {"name": "c", "finalizers": ["Bad Finalizer!"]}}) == {
        "metadata.finalizers": "FieldValueInvalid"}


def test_labels_must_be_strings() -> None:
    assert invalid_causes(CONFIGMAP, {"metadata": {"name": "c", "labels": {"n": 1}}}) == {
        "metadata.labels.n": "FieldValueInvalid"}


# ---- unknown fields and field paths ---------------------------------------------------------------------


def test_unknown_field_in_a_container_is_named_with_its_path() -> None:
    doc = pod()
    doc["spec"]["containers"][0]["imag"] = "python:3.11"
    with pytest.raises(ApiError) as exc:
        validate_document(POD, doc, namespace="default")
    status = exc.value.to_status()
    assert status["code"] == 422
    assert status["details"]["causes"] == [
        {"field": "spec.containers[0].imag", "reason": "FieldValueUnknown", "message": "unknown field"}]
    assert status["details"]["kind"] == "Pod" and status["details"]["name"] == "p"
    assert "spec.containers[0].imag" in status["message"]


def test_unknown_fields_everywhere_are_all_reported_at_once() -> None:
    doc = pod()
    second = {"name": "second", "command": ["x"], "ports": [{"containerPort": 1, "hostIP": "x"}]}
    doc["spec"]["containers"].append(second)
    doc["spec"]["hostNetwork"] = True
    doc["metadata"]["labelz"] = {}
    doc["extra"] = 1
    causes = invalid_causes(POD, doc)
    assert causes == {
        "spec.containers[1].ports[0].hostIP": "FieldValueUnknown",
        "spec.hostNetwork": "FieldValueUnknown",
        "metadata.labelz": "FieldValueUnknown",
        "extra": "FieldValueUnknown",
    }


def test_missing_required_fields_and_unsupported_values() -> None:
    doc = pod(restartPolicy="Sometimes")
    del doc["spec"]["containers"][0]["name"]
    causes = invalid_causes(POD, doc)
    assert causes == {"spec.containers[0].name": "FieldValueRequired", "spec.restartPolicy": "FieldValueNotSupported"}
    assert invalid_causes(POD, {"metadata": {"name": "p"}}) == {"spec": "FieldValueRequired"}


def test_out_of_range_values_name_their_field() -> None:
    doc = pod(terminationGracePeriodSeconds=-1)
    doc["spec"]["containers"][0]["ports"] = [{"containerPort": 70000}]
    assert invalid_causes(POD, doc) == {
        "spec.terminationGracePeriodSeconds": "FieldValueInvalid",
        "spec.containers[0].ports[0].containerPort": "FieldValueInvalid",
    }


def test_duplicate_container_names_are_refused() -> None:
    doc = pod()
    doc["spec"]["containers"].append(dict(doc["spec"]["containers"][0]))
    assert invalid_causes(POD, doc) == {"spec.containers": "FieldValueInvalid"}


def test_role_binding_refuses_unknown_roles() -> None:
    doc = {"metadata": {"name": "rb"}, "roleRef": {"kind": "ClusterRole", "name": "cluster-admin"},
           "subjects": [{"kind": "User", "name": "alice"}]}
    assert invalid_causes(ROLE_BINDING, doc) == {"roleRef.name": "FieldValueNotSupported"}


def test_metadata_must_be_an_object() -> None:
    assert invalid_causes(CONFIGMAP, {"metadata": ["x"]}) == {"metadata": "FieldValueInvalid"}


def test_body_must_be_an_object() -> None:
    with pytest.raises(ApiError) as exc:
        validate_document(CONFIGMAP, ["not", "an", "object"], namespace="d")  # type: ignore[arg-type]
    assert exc.value.code == 400


@pytest.mark.parametrize(("loc", "path"), [
    (("spec", "containers", 0, "image"), "spec.containers[0].image"),
    (("metadata", "labels"), "metadata.labels"),
    (("a", 1, 2, "b"), "a[1][2].b"),
    ((), ""),
])
def test_field_path(loc: tuple[Any, ...], path: str) -> None:
    assert field_path(loc) == path


# ---- defaults and normalisation -------------------------------------------------------------------------


def test_pod_defaults_are_applied() -> None:
    out = validate_document(POD, pod(), namespace="default")
    assert out["spec"]["restartPolicy"] == "Always"
    assert out["spec"]["terminationGracePeriodSeconds"] == 30
    assert out["apiVersion"] == "v1" and out["kind"] == "Pod"
    assert out["metadata"] == {"name": "p", "namespace": "default"}


def test_explicit_values_are_kept_over_defaults() -> None:
    out = validate_document(POD, pod(restartPolicy="Never", terminationGracePeriodSeconds=0), namespace="default")
    assert out["spec"]["restartPolicy"] == "Never"
    assert out["spec"]["terminationGracePeriodSeconds"] == 0


def test_secret_string_data_is_merged_into_base64_data() -> None:
    doc = {"metadata": {"name": "s"}, "data": {"a": base64.b64encode(b"old").decode(),
                                             "b": base64.b64encode(b"kept").decode()},
           "stringData": {"a": "new", "c": "héllo"}}
    out = validate_document(SECRET, doc, namespace="default")
    assert "stringData" not in out
    decoded = {k: base64.b64decode(v).decode() for k, v in out["data"].items()}
    assert decoded == {"a": "new", "b": "kept", "c": "héllo"}  # stringData wins, as in Kubernetes
    assert out["type"] == "Opaque"


def test_secret_data_must_be_base64() -> None:
    causes = invalid_causes(SECRET, {"metadata": {"name": "s"}, "data": {"k": "not base64!"}})
    assert causes == {"data": "FieldValueInvalid"}


def test_status_is_carried_and_server_fields_dropped() -> None:
    doc = pod()
    doc["status"] = {"phase": "Running"}
    doc["metadata"].update(managedFields=[{"manager": "kubectl"}], selfLink="/api/v1/x")
    out = validate_document(POD, doc, namespace="default")
    assert out["status"] == {"phase": "Running"}
    assert "managedFields" not in out["metadata"] and "selfLink" not in out["metadata"]


def test_validation_does_not_modify_the_input() -> None:
    doc = {"metadata": {"name": "s"}, "stringData": {"a": "b"}}
    validate_document(SECRET, doc, namespace="default")
    assert doc == {"metadata": {"name": "s"}, "stringData": {"a": "b"}}


# ---- label selectors ---------------------------------------------------------------------------------


LABELS: dict[str, dict[str, str]] = {
    "web-prod": {"app": "web", "env": "prod"},
    "web-dev": {"app": "web", "env": "dev"},
    "db-prod": {"app": "db", "env": "prod", "tier": "data"},
    "bare": {},
}


def select(selector: str) -> set[str]:
    reqs = parse_selector(selector)
    return {name for name, labels in LABELS.items() if matches(reqs, labels)}


@pytest.mark.parametrize(("selector", "expected"), [
    ("", {"web-prod", "web-dev", "db-prod", "bare"}),
    ("app=web", {"web-prod", "web-dev"}),
    ("app==web", {"web-prod", "web-dev"}),
    ("app!=web", {"db-prod", "bare"}),  # != matches objects without the key, as in Kubernetes
    ("app=web,env=prod", {"web-prod"}),
    ("app = web , env = prod", {"web-prod"}),
    ("env in (prod, staging)", {"web-prod", "db-prod"}),
    ("env notin (prod)", {"web-dev", "bare"}),
    ("tier", {"db-prod"}),
    ("!tier", {"web-prod", "web-dev", "bare"}),
    ("app,!tier", {"web-prod", "web-dev"}),
    ("env in (prod,dev),app notin (db)", {"web-prod", "web-dev"}),
    ("app=nothing", set()),
])
def test_selector_matching(selector: str, expected: set[str]) -> None:
    assert select(selector) == expected


def test_selector_parses_to_requirements() -> None:
    assert parse_selector("a=b,c!=d,e in (x, y),f notin (z),g,!h") == [
        Requirement("a", "=", ("b",)),
        Requirement("c", "!=", ("d",)),
        Requirement("e", "in", ("x", "y")),
        Requirement("f", "notin", ("z",)),
        Requirement("g", "exists"),
        Requirement("h", "!exists"),
    ]
    assert parse_selector("app.kubernetes.io/name==web") == [Requirement("app.kubernetes.io/name", "=", ("web",))]


def test_matches_tolerates_missing_labels() -> None:
    assert matches(parse_selector("!a"), None)
    assert not matches(parse_selector("a"), None)


@pytest.mark.parametrize("selector", ["a=b=c", "a in (x", "a in x", "=b", "a b", "a=(b)", "a!b", "a=b,,=c",
                                      "a notin", "a in ()", "-a=b", "a=-b", "a/b/c=d"])
def test_bad_selector_syntax_is_a_400(selector: str) -> None:
    with pytest.raises(ApiError) as exc:
        parse_selector(selector)
    assert exc.value.code == 400
    assert exc.value.reason == "BadRequest"
