"""Upstream's CEL rules (`x-kubernetes-validations`) evaluated on documents, the way the API server evaluates them.

A rule sits at a node of a CRD version's structural schema; `self` is the document's value at that node (for a
list's `items` or a map's `additionalProperties`, each item or entry in turn). As in the API server:

- a rule is evaluated only where the document has a (non-null) value at its node;
- the document is defaulted first (upstream's `default:`s: the API server defaults before it validates);
- a transition rule (one that names `oldSelf`) is evaluated on updates only, where the old object has a value at
  the same node (objects' properties and map entries correlate by name, items of `x-kubernetes-list-type: map`
  lists by their keys; items of other lists do not correlate). With `optionalOldSelf: true` it is evaluated on
  create as well, `oldSelf` an optional (`hasValue()`, `value()`, `orValue(x)`);
- a rule that evaluates to false, or fails to evaluate (e.g. a field it reads is absent), is a violation, reported
  with upstream's `message` (or its `messageExpression`, or `failed rule: <rule>`), at the value's path (or its
  `fieldPath`).

Rules are compiled once (cached). Kubernetes adds library functions to CEL (`isURL`, `quantity`, `format.*`, ...);
a rule that calls a function this module does not know raises `UnsupportedCelFunction` when it is compiled, so no
rule is ever silently skipped: implement the function in `_EXTENSIONS` (narrowly) when a CRD starts using one.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass
from typing import Any

import celpy
from celpy import celtypes
from celpy.evaluation import base_functions

# CEL's macros (celpy evaluates them itself) and the functions celpy implements.
_MACROS = frozenset({"has", "dyn", "all", "exists", "exists_one", "map", "filter"})


class _Optional:
    """`oldSelf` under `optionalOldSelf: true`: a value that may be absent (CEL's optional type)."""

    def __init__(self, value: Any = None, *, present: bool = False) -> None:
        self.value, self.present = value, present


def _value(opt: _Optional) -> Any:
    if not opt.present:
        raise ValueError("optional.none() dereferenced")
    return opt.value


# Kubernetes' CEL extensions that the CRDs here use, implemented narrowly (the optional type's methods, for
# optionalOldSelf).
_EXTENSIONS: dict[str, Any] = {
    "hasValue": lambda opt: celtypes.BoolType(opt.present),
    "value": _value,
    "orValue": lambda opt, default: opt.value if opt.present else default,
}
KNOWN_FUNCTIONS = _MACROS | frozenset(base_functions) | frozenset(_EXTENSIONS)


class UnsupportedCelFunction(NotImplementedError):
    """A rule calls a function (a Kubernetes CEL extension) that the evaluator does not implement."""


@dataclass(frozen=True)
class CelRule:
    path: str  # where it sits in the schema: "" (the object), `spec.tolerations`, `spec.podSets[*]`, `spec.x.*`
    rule: str
    message: str  # upstream's message, or `failed rule: <rule>` as the API server writes it
    message_expression: str | None = None
    optional_old_self: bool = False
    field_path: str | None = None

    @property
    def transition(self) -> bool:
        """Whether the rule compares with the old object (evaluated on updates only)."""
        return re.search(r"\boldSelf\b", self.rule) is not None


@dataclass(frozen=True)
class Violation:
    path: str  # the document's path of the value the rule was evaluated on: `spec.podSets[0]`, "" for the object
    rule: CelRule
    message: str

    def __str__(self) -> str:
        return f"{self.path or '<object>'}: {self.message}"


def _rules_at(node: dict[str, Any], path: str) -> list[CelRule]:
    out = []
    for raw in node.get("x-kubernetes-validations") or ():
        out.append(CelRule(path, raw["rule"], raw.get("message") or f"failed rule: {raw['rule']}",
                           raw.get("messageExpression"), bool(raw.get("optionalOldSelf")), raw.get("fieldPath")))
    return out


def collect(schema: dict[str, Any], path: str = "") -> list[CelRule]:
    """Every CEL rule in a structural schema, with the schema path where it sits (each compiled once, here, so
    that an unsupported function fails loudly)."""
    out = _rules_at(schema, path)
    for rule in out:
        program(rule.rule)
        if rule.message_expression:
            program(rule.message_expression)
    for name, sub in (schema.get("properties") or {}).items():
        out += collect(sub, f"{path}.{name}" if path else name)
    if isinstance(schema.get("items"), dict):
        out += collect(schema["items"], f"{path}[*]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += collect(schema["additionalProperties"], f"{path}.*")
    return out


_ENV = celpy.Environment()


@functools.cache
def program(expression: str) -> celpy.Runner:
    """A compiled CEL expression (cached: every rule is compiled once per process)."""
    ast = _ENV.compile(expression)
    unknown = set()
    for sub in ast.iter_subtrees():
        # `f(x)` is an ident_arg whose first child names f; `x.f(y)` a member_dot_arg whose second child does.
        name = sub.children[0] if sub.data == "ident_arg" else sub.children[1] if sub.data == "member_dot_arg" \
            else None
        if name is not None and str(name) not in KNOWN_FUNCTIONS:
            unknown.add(str(name))
    if unknown:
        raise UnsupportedCelFunction(f"{expression!r} calls {sorted(unknown)}, which the CEL evaluator does not "
                                     "implement: add them to _EXTENSIONS in tests/conformance/cel.py")
    return _ENV.program(ast, functions=_EXTENSIONS)


# ---- evaluating --------------------------------------------------------------------------------------------

def defaulted(schema: dict[str, Any], value: Any) -> Any:
    """`value` with the schema's `default:`s applied inside it (objects, list items and map entries), as the API
    server applies them when it decodes a request or reads an object."""
    if isinstance(value, dict):
        out = dict(value)
        props = schema.get("properties") or {}
        for name, sub in props.items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = defaulted(sub, out[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and not props:
            out = {k: defaulted(extra, v) for k, v in out.items()}
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [defaulted(schema["items"], v) for v in value]
    return value


_HAS_RULES: dict[int, tuple[dict[str, Any], bool]] = {}


def _has_rules(node: dict[str, Any]) -> bool:
    """Whether any rule sits at or below `node` (cached per schema node: the walk skips subtrees without)."""
    hit = _HAS_RULES.get(id(node))
    if hit is not None and hit[0] is node:
        return hit[1]
    subs = list((node.get("properties") or {}).values())
    subs += [node[k] for k in ("items", "additionalProperties") if isinstance(node.get(k), dict)]
    found = bool(node.get("x-kubernetes-validations")) or any(_has_rules(s) for s in subs)
    _HAS_RULES[id(node)] = (node, found)
    return found


def to_cel(value: Any) -> Any:
    """A JSON value as CEL's: as `celpy.json_to_cel`, but an integer past int64 is a double (the API server decodes
    such a JSON number as a float) rather than an overflow."""
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        return celtypes.IntType(value) if -(2**63) <= value < 2**63 else celtypes.DoubleType(value)
    if isinstance(value, dict):
        return celtypes.MapType({celtypes.StringType(k): to_cel(v) for k, v in value.items()})
    if isinstance(value, list):
        return celtypes.ListType([to_cel(v) for v in value])
    return celpy.json_to_cel(value)


def _evaluate(rule: CelRule, value: Any, old: Any, has_old: bool) -> str | None:
    """None when the rule holds; otherwise the message to report."""
    activation: dict[str, Any] = {"self": to_cel(value)}
    if rule.transition:
        old_cel = to_cel(old) if has_old else None
        activation["oldSelf"] = _Optional(old_cel, present=has_old) if rule.optional_old_self else old_cel
    try:
        result = program(rule.rule).evaluate(activation)
    except celpy.CELEvalError as err:
        return f"{rule.message} (the rule could not be evaluated: {err.args[0] if err.args else err})"
    if isinstance(result, celpy.CELEvalError):
        return f"{rule.message} (the rule could not be evaluated: {result.args[0] if result.args else result})"
    if result is True or (isinstance(result, celtypes.BoolType) and bool(result)):
        return None
    if rule.message_expression:
        try:
            return str(program(rule.message_expression).evaluate(activation))
        except celpy.CELEvalError:
            return rule.message  # as the API server does when the message expression fails
    return rule.message


def _correlate(schema: dict[str, Any], item: Any, old_items: Any) -> tuple[Any, bool]:
    """The old list item that corresponds to `item`: by the map keys of an `x-kubernetes-list-type: map` list;
    items of other lists do not correlate."""
    keys = schema.get("x-kubernetes-list-map-keys")
    if schema.get("x-kubernetes-list-type") != "map" or not keys or not isinstance(old_items, list) \
            or not isinstance(item, dict):
        return None, False
    for old in old_items:
        if isinstance(old, dict) and all(old.get(k) == item.get(k) for k in keys):
            return old, True
    return None, False


def _walk(node: dict[str, Any], value: Any, old: Any, has_old: bool, path: str, where: str,
          out: list[Violation]) -> None:
    """Evaluate the rules at and below `node` on `value` (`path`: the document's path, `where`: the schema's)."""
    if value is None or not _has_rules(node):
        return
    for rule in _rules_at(node, where):
        if rule.transition and not has_old and not rule.optional_old_self:
            continue  # a transition rule on create, or where the old object had no value
        message = _evaluate(rule, value, old, has_old)
        if message is not None:
            # `fieldPath` (".spec.x", relative to self) names the field the API server reports
            at = f"{path}{rule.field_path}".lstrip(".") if rule.field_path else path
            out.append(Violation(at, rule, message))
    props = node.get("properties") or {}
    if isinstance(value, dict) and props:
        for name, sub in props.items():
            if name in value:
                old_has = has_old and isinstance(old, dict) and old.get(name) is not None
                _walk(sub, value[name], old[name] if old_has else None, old_has, f"{path}.{name}" if path else name,
                      f"{where}.{name}" if where else name, out)
    elif isinstance(value, dict) and isinstance(node.get("additionalProperties"), dict):
        for key, entry in value.items():
            old_has = has_old and isinstance(old, dict) and old.get(key) is not None
            _walk(node["additionalProperties"], entry, old[key] if old_has else None, old_has,
                  f"{path}.{key}" if path else key, f"{where}.*" if where else "*", out)
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            old_item, old_has = _correlate(node, item, old if has_old else None)
            _walk(node["items"], item, old_item, old_has, f"{path}[{i}]", f"{where}[*]", out)


def violations(schema: dict[str, Any], doc: Any, old: Any = None) -> list[Violation]:
    """The CEL rules of `schema` (a CRD version's openAPIV3Schema) that `doc` breaks. `old`: the stored object
    when `doc` is an update of it (then transition rules are evaluated too), None for a create."""
    out: list[Violation] = []
    _walk(schema, defaulted(schema, doc), defaulted(schema, old) if old is not None else None, old is not None, "",
          "", out)
    return out

