"""Upstream's CEL rules (issue 13): the evaluator (conformance/cel.py) itself; a deliberate violation of every rule
of every kind Kaip accepts (data/cel_violations.yaml), refused by Kaip where the rule reports it; and the transition
rules, on updates through the store (every writer's path), which must refuse what upstream refuses."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from conformance import cel
from conformance.harness import (
    CRDS,
    _load_yaml,
    causes,
    cel_refusal_explained,
    cel_rules,
    cel_violations,
    checked_versions,
    crd_schema,
    generated_kinds,
    kaip_validate,
    matrix_cached,
    norm_path,
    object_schema,
    registered_kinds,
    upstream_errors,
    upstream_rejects,
    with_path,
)
from kaip.api.core import NAMESPACE
from kaip.api.errors import ApiError
from kaip.api.kinds import REGISTRY, KindInfo
from kaip.store import Store

DATA = yaml.safe_load((Path(__file__).parent / "data" / "cel_violations.yaml").read_text())
registered_kinds()  # imports every kaip.api module: the kinds the data names are registered


# ---- the data ----------------------------------------------------------------------------------------------

def _parts(path: str) -> list[str | int]:
    return [int(p[1:-1]) if p.startswith("[") else p for p in re.findall(r"[^.\[\]]+|\[\d+\]", path)]


def changed(doc: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """`doc` with `change` applied: `set` (path -> value; one index past a list's end appends), then `remove`."""
    out = copy.deepcopy(doc)
    for path, value in (change.get("set") or {}).items():
        parts = _parts(path)
        node: Any = out
        for part, after in zip(parts, parts[1:], strict=False):
            if isinstance(node, dict) and part not in node:
                node[part] = [] if isinstance(after, int) else {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list) and last == len(node):
            node.append(copy.deepcopy(value))
        else:
            node[last] = copy.deepcopy(value)
    for path in change.get("remove") or ():
        *head, last = _parts(path)
        node = out
        for part in head:
            node = node[part]
        del node[last]
    return out


@dataclass(frozen=True)
class Case:
    entry: dict[str, Any]
    base: str

    @property
    def doc(self) -> dict[str, Any]:
        return copy.deepcopy(DATA["bases"][self.base])

    @property
    def info(self) -> KindInfo:
        return REGISTRY.for_api_version(self.doc["apiVersion"], self.doc["kind"])[0]

    @property
    def version(self) -> str:
        return str(self.doc["apiVersion"]).rpartition("/")[2]

    @property
    def status_subresource(self) -> bool:
        return self.entry.get("subresource") == "status"

    def hits(self, broken: list[cel.Violation]) -> list[cel.Violation]:
        return [v for v in broken if v.rule.path == self.entry["at"] and v.rule.message == self.entry["message"]]

    def __str__(self) -> str:
        return f"{self.info.kind}/{self.version}:{self.entry['at'] or '<object>'}:{self.entry['message'][:40]}"


def _cases(section: str) -> list[Case]:
    out = []
    for entry in DATA[section]:
        bases = entry["base"] if isinstance(entry["base"], list) else [entry["base"]]
        out += [Case(entry, base) for base in bases]
    return out


CREATES = _cases("creates")
UPDATES = _cases("updates")


def _refused_field(info: KindInfo, path: str) -> bool:
    """Whether `path` is (inside) a field Kaip refuses altogether (the support matrix's refused fields)."""
    refused = matrix_cached(info.key, info.version).refused
    parts = norm_path(path)
    return any(parts == r or parts.startswith((f"{r}.", f"{r}[")) for r in refused)


def _assert_refused_where_the_rule_reports(info: KindInfo, err: ApiError, hits: list[cel.Violation],
                                           entry: dict[str, Any]) -> None:
    """Kaip's refusal names a field at or under the value the broken rule was evaluated on (or a field Kaip
    refuses altogether that holds it), with upstream's message unless that field is refused altogether."""
    assert 400 <= err.code < 500, f"Kaip answered {err.code}: {err}"
    found = [c for c in causes(err) if cel_refusal_explained(info, c, hits)]
    assert found, f"refused, but not at or under {hits[0].path or 'the object'}: {causes(err)}"
    if entry.get("field"):
        assert any(c["field"] == entry["field"] for c in found), f"not at {entry['field']}: {found}"
    checked = [c for c in found if not _refused_field(info, c["field"])]
    expected = entry.get("kaip_message", entry["message"])
    assert not checked or any(expected in c["message"] for c in checked), \
        f"Kaip's message is not upstream's ({expected!r}): {checked}"


# ---- coverage --------------------------------------------------------------------------------------------------

def _under_refused_field(info: KindInfo, rule: cel.CelRule) -> str | None:
    """The field Kaip refuses altogether that holds the rule's node, if any (storage version's paths)."""
    refused = matrix_cached(info.key, info.version).refused
    return next((r for r in sorted(refused) if rule.path == r or rule.path.startswith((f"{r}.", f"{r}["))), None)


COVERED = {(c.info.key, c.version, c.entry["at"], c.entry["message"]) for c in CREATES + UPDATES}


def test_every_rule_of_every_accepted_kind_is_broken_on_purpose() -> None:
    missing, counted = [], 0
    for info in generated_kinds():
        for version in checked_versions(info):
            for rule in cel_rules(info.key, version):
                counted += 1
                if (info.key, version, rule.path, rule.message) in COVERED:
                    continue
                if rule.transition and version == info.version and _under_refused_field(info, rule):
                    continue  # test_transition_rules_under_refused_fields_never_apply
                missing.append(f"{info.kind}/{version} {rule.path or '<object>'}: {rule.message}")
    assert counted > 100
    assert not missing, "CEL rules without a deliberate violation in data/cel_violations.yaml:\n" + "\n".join(missing)


@pytest.mark.parametrize("name", sorted(DATA["bases"]))
def test_base_documents_are_valid_upstream_and_in_kaip(name: str) -> None:
    doc = DATA["bases"][name]
    info, version = REGISTRY.for_api_version(doc["apiVersion"], doc["kind"])
    assert upstream_rejects(info, version, doc) == []
    _, err = kaip_validate(info, doc)
    assert err is None, err


# ---- (i)-(iii): a deliberate violation of each rule ------------------------------------------------------------

@pytest.mark.parametrize("case", CREATES, ids=str)
def test_a_document_that_breaks_a_rule_is_refused_where_the_rule_reports_it(case: Case) -> None:
    info, version = case.info, case.version
    doc = changed(case.doc, case.entry)
    assert upstream_errors(info, version, doc) == [], "the change must break the CEL rule, not the schema"
    if case.status_subresource:
        # Evaluated as a write of the status subresource is (a create drops status, upstream and Kaip alike; Kaip's
        # status is written by its own controllers, docs/conformance.md).
        assert case.hits(cel.violations(crd_schema(info, version), doc)), "the rule is not broken"
        assert cel_violations(info, version, doc) == []
        assert kaip_validate(info, doc)[1] is None
        return
    broken = cel_violations(info, version, doc)
    hits = case.hits(broken)
    assert hits, f"the change breaks {[str(v) for v in broken]}, not the rule"
    _, err = kaip_validate(info, doc)
    assert err is not None, f"Kaip accepts a document upstream refuses: {hits[0]}"
    _assert_refused_where_the_rule_reports(info, err, hits, case.entry)


# ---- transition rules on updates -------------------------------------------------------------------------------

@pytest.fixture
def sqlite_store(tmp_path: Path) -> Any:
    store = Store(f"sqlite:///{tmp_path / 'kaip.db'}")
    store.create(NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    yield store
    store.close()


def _update_documents(case: Case) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """(the stored object, the update, the stored object's status)."""
    old = changed(case.doc, case.entry.get("old") or {})
    status = copy.deepcopy(case.entry.get("status"))
    new = changed({**old, "status": status} if status is not None else old, case.entry)
    return old, new, status


@pytest.mark.parametrize("case", UPDATES, ids=str)
def test_an_update_that_breaks_a_transition_rule_is_refused(case: Case, sqlite_store: Store) -> None:
    info, version = case.info, case.version
    old, new, status = _update_documents(case)
    assert upstream_rejects(info, version, old) == []
    assert upstream_errors(info, version, new) == []
    old_stored = {**old, "status": status} if status is not None else old
    if case.status_subresource:
        hits = case.hits(cel.violations(crd_schema(info, version), new, old_stored))
        assert hits, "the rule is not broken"
        return  # a status write: Kaip's status is its controllers' (docs/conformance.md)
    hits = case.hits(cel_violations(info, version, new, old_stored))
    assert hits, f"the update breaks {[str(v) for v in cel_violations(info, version, new, old_stored)]}, not the rule"
    stored, err = kaip_validate(info, old)
    if err is not None:  # the old state cannot exist in Kaip: it refuses a field the rule depends on
        assert all(_refused_field(info, c["field"]) for c in causes(err)), causes(err)
        return
    validated, err = kaip_validate(info, new)
    if err is not None:  # Kaip refuses the new value itself, with that value's own reason
        _assert_refused_where_the_rule_reports(info, err, hits, {**case.entry, "kaip_message": ""})
        return
    assert stored is not None and validated is not None
    stored = sqlite_store.create(info, stored)
    if status is not None:
        sqlite_store.replace_status(info, stored["metadata"].get("namespace"), stored["metadata"]["name"], status)
    validated.pop("status", None)
    with pytest.raises(ApiError) as refused:
        sqlite_store.update(info, validated)
    _assert_refused_where_the_rule_reports(info, refused.value, hits, case.entry)
    # while the same object, unchanged, can still be written
    unchanged = kaip_validate(info, old)[0]
    assert unchanged is not None
    sqlite_store.update(info, unchanged)


KINDS_WITH_RULES = [i for i in generated_kinds() if cel_rules(i.key, i.version)]


@pytest.mark.parametrize("info", KINDS_WITH_RULES, ids=lambda i: i.kind)
def test_transition_rules_under_refused_fields_never_apply(info: KindInfo) -> None:
    """A transition rule inside a field Kaip refuses altogether: that field is refused, so no stored object has it
    and no update can change it."""
    base = next(copy.deepcopy(b) for b in DATA["bases"].values()
                if b["kind"] == info.kind and b["apiVersion"] == info.api_version)
    schema = object_schema(info, info.version)
    for rule in cel_rules(info.key, info.version):
        field = _under_refused_field(info, rule)
        if not rule.transition or field is None or (info.key, info.version, rule.path, rule.message) in COVERED:
            continue
        doc = with_path(base, schema, rule.path) or with_path(base, schema, field)
        assert doc is not None, rule.path
        _, err = kaip_validate(info, doc)
        assert err is not None, f"{rule.path}: Kaip takes {field}"
        assert any(norm_path(c["field"]) == field for c in causes(err)), (rule.path, causes(err))


# ---- the evaluator -------------------------------------------------------------------------------------------

def _schema(prop: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"spec": {"type": "object", "properties": {"x": prop}}}}


IMMUTABLE = {"type": "string", "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "immutable"}]}


def test_transition_rules_are_evaluated_on_updates_where_both_have_a_value() -> None:
    schema = _schema(IMMUTABLE)
    assert cel.violations(schema, {"spec": {"x": "a"}}) == []  # a create
    assert cel.violations(schema, {"spec": {"x": "a"}}, {"spec": {"x": "a"}}) == []
    (v,) = cel.violations(schema, {"spec": {"x": "b"}}, {"spec": {"x": "a"}})
    assert (v.path, v.message) == ("spec.x", "immutable")
    assert cel.violations(schema, {"spec": {"x": "b"}}, {"spec": {}}) == []  # set: no old value
    assert cel.violations(schema, {"spec": {}}, {"spec": {"x": "a"}}) == []  # removed: no value


def test_optional_old_self_evaluates_on_create_with_an_optional() -> None:
    rule = {"rule": "!oldSelf.hasValue() || self >= oldSelf.value()", "message": "may only grow",
            "optionalOldSelf": True}
    schema = _schema({"type": "integer", "x-kubernetes-validations": [rule]})
    assert cel.violations(schema, {"spec": {"x": 1}}) == []
    assert cel.violations(schema, {"spec": {"x": 2}}, {"spec": {"x": 1}}) == []
    assert [v.message for v in cel.violations(schema, {"spec": {"x": 1}}, {"spec": {"x": 2}})] == ["may only grow"]
    strict = _schema({"type": "integer", "x-kubernetes-validations": [{"rule": "oldSelf.hasValue()",
                                                                        "optionalOldSelf": True}]})
    assert [v.message for v in cel.violations(strict, {"spec": {"x": 1}})] == ["failed rule: oldSelf.hasValue()"]


def test_items_of_map_lists_correlate_by_key_and_atomic_lists_do_not() -> None:
    item = {"type": "object", "properties": {"name": {"type": "string"}, "v": IMMUTABLE}}
    as_map = _schema({"type": "array", "items": item, "x-kubernetes-list-type": "map",
                      "x-kubernetes-list-map-keys": ["name"]})
    old = {"spec": {"x": [{"name": "a", "v": "1"}, {"name": "b", "v": "2"}]}}
    assert cel.violations(as_map, {"spec": {"x": [{"name": "b", "v": "2"}, {"name": "a", "v": "1"}]}}, old) == []
    (v,) = cel.violations(as_map, {"spec": {"x": [{"name": "b", "v": "3"}, {"name": "a", "v": "1"}]}}, old)
    assert v.path == "spec.x[0].v"
    atomic = _schema({"type": "array", "items": item})
    assert cel.violations(atomic, {"spec": {"x": [{"name": "a", "v": "9"}]}}, old) == []


def test_defaults_apply_before_the_rules_and_evaluation_errors_are_violations() -> None:
    prop = {"type": "object", "default": {},
            "properties": {"mode": {"type": "string", "default": "Never"}, "limit": {"type": "integer"}},
            "x-kubernetes-validations": [{"rule": "self.mode == 'Never' || self.limit > 0", "message": "m"}]}
    schema = _schema(prop)
    assert cel.violations(schema, {"spec": {}}) == []  # x defaulted to {mode: Never}
    (v,) = cel.violations(schema, {"spec": {"x": {"mode": "Always"}}})  # self.limit: no such key
    assert v.message.startswith("m (the rule could not be evaluated")


def test_message_expression_and_the_default_message() -> None:
    rule = {"rule": "self.size() <= 3", "messageExpression": "'too long: ' + string(self.size())"}
    (v,) = cel.violations(_schema({"type": "string", "x-kubernetes-validations": [rule]}), {"spec": {"x": "abcd"}})
    assert v.message == "too long: 4"
    (v,) = cel.violations(_schema({"type": "string", "x-kubernetes-validations": [{"rule": "self == 'a'"}]}),
                          {"spec": {"x": "b"}})
    assert (v.path, v.message) == ("spec.x", "failed rule: self == 'a'")
    at_field = {"type": "object", "properties": {"y": {"type": "integer"}},
                "x-kubernetes-validations": [{"rule": "self.y > 0", "message": "y", "fieldPath": ".y"}]}
    (v,) = cel.violations(_schema(at_field), {"spec": {"x": {"y": 0}}})
    assert v.path == "spec.x.y"


def test_a_rule_with_a_function_the_evaluator_lacks_fails_loudly() -> None:
    schema = _schema({"type": "string", "x-kubernetes-validations": [{"rule": "isURL(self)", "message": "url"}]})
    with pytest.raises(cel.UnsupportedCelFunction, match="isURL"):
        cel.collect(schema)
    with pytest.raises(cel.UnsupportedCelFunction, match="quantity"):
        cel.program("quantity(self).isGreaterThan(quantity('1'))")


def test_every_rule_of_every_upstream_crd_compiles() -> None:
    total = 0
    for path in sorted(CRDS.glob("*/*.yaml")):
        for version in _load_yaml(path)["spec"]["versions"]:
            total += len(cel.collect(version["schema"]["openAPIV3Schema"]))
    assert total >= 123
