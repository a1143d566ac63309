"""Invalid mutations of a valid document, derived from the upstream schema: each one breaks a rule the schema states
(a required field removed, an unknown field added, a value outside an enum, a pattern, a bound or a type)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema

from conformance.harness import json_path

UNKNOWN_FIELD = "kaipConformanceUnknownField"
_SAME_TYPE: dict[str, list[Any]] = {
    "string": ["", "-", "Not A Valid Value!", "a" * 300, "kaip-invalid-\u2603"],
    "integer": [-1, 0, -(2**31) - 1, 2**31, 2**63],
    "number": [-1.5, 1e308],
    "boolean": [],
    "array": [[]],
    "object": [{}],
}
_OTHER_TYPE: list[Any] = ["x", 7, True, [], {"k": "v"}]


@dataclass(frozen=True)
class Mutant:
    what: str
    doc: dict[str, Any]


_VALIDATORS: dict[int, tuple[dict[str, Any], jsonschema.Draft7Validator]] = {}


def _rejects(schema: dict[str, Any], value: Any) -> bool:
    # Sub-schemas of the cached upstream schemas live as long as the process: a validator per object identity.
    entry = _VALIDATORS.get(id(schema))
    if entry is None or entry[0] is not schema:
        entry = _VALIDATORS[id(schema)] = (schema, jsonschema.Draft7Validator(schema))
    return not entry[1].is_valid(value)


def bad_values(schema: dict[str, Any]) -> list[Any]:
    """Values `schema` rejects: those of its own type that break a constraint, and one of another type."""
    types = schema.get("type")
    own = _SAME_TYPE.get(types, []) if isinstance(types, str) else []
    out = []
    out = [value for value in own if _rejects(schema, value)]
    for value in _OTHER_TYPE:
        if _rejects(schema, value):
            out.append(value)
            break
    return out


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node: Any = out
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return out


def _delete(doc: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node: Any = out
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]
    return out


ENVELOPE = ("apiVersion", "kind", "metadata", "status")


def mutants(doc: dict[str, Any], schema: dict[str, Any]) -> Iterator[Mutant]:
    """Every single-point invalid mutation of `doc`'s body (all but the envelope) that `schema` (a JSON Schema of
    the whole object) states a rule for. The caller keeps only those the whole schema rejects."""
    body_schema = {k: v for k, v in schema.items() if k != "properties"}
    body_schema["properties"] = {k: v for k, v in (schema.get("properties") or {}).items() if k not in ENVELOPE}
    body_schema["required"] = [r for r in schema.get("required", ()) if r not in ENVELOPE]
    yield from _walk(doc, doc, body_schema, ())


def _walk(doc: dict[str, Any], value: Any, schema: dict[str, Any], path: tuple[Any, ...]) -> Iterator[Mutant]:
    where = json_path(path) or "<body>"
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        for name in schema.get("required", ()):
            if name in value:
                yield Mutant(f"{where}.{name}: required field removed", _delete(doc, (*path, name)))
        if schema.get("additionalProperties") is False:
            yield Mutant(f"{where}.{UNKNOWN_FIELD}: unknown field added", _set(doc, (*path, UNKNOWN_FIELD), 1))
        for name, sub in props.items():
            for bad in bad_values(sub):
                yield Mutant(f"{where}.{name} = {json.dumps(bad)[:40]}", _set(doc, (*path, name), bad))
            if name in value:
                yield from _walk(doc, value[name], sub, (*path, name))
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():  # a map: each entry against the map's value schema
            yield from _walk(doc, item, schema["additionalProperties"], (*path, key))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from _walk(doc, item, schema["items"], (*path, i))
