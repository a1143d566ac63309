"""Validation of incoming documents against a kind's strict schema.

Errors name the field path the way Kubernetes does (`spec.containers[0].image`), so that a user
can find the mistake in their YAML; every problem in the document is reported at once.
"""

from __future__ import annotations

import copy
import secrets
from typing import Any

from pydantic import ValidationError

from kaip.api.errors import Cause, bad_request, invalid
from kaip.api.kinds import KindInfo, UpdateCheck
from kaip.api.meta import ObjectMeta, dns1035_label_error, dns1123_label_error, dns1123_subdomain_error

ENVELOPE = ("apiVersion", "kind", "metadata", "status")


def field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def causes_from(err: ValidationError, prefix: tuple[Any, ...] = ()) -> list[Cause]:
    causes = []
    for e in err.errors():
        loc = prefix + tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        etype = e["type"]
        if etype == "extra_forbidden":
            causes.append(Cause(field_path(loc), "unknown field", "FieldValueUnknown"))
        elif etype == "missing":
            causes.append(Cause(field_path(loc), "Required value", "FieldValueRequired"))
        elif etype in ("literal_error", "enum"):
            causes.append(Cause(field_path(loc), f"Unsupported value: {e.get('input')!r}: {e['msg']}",
                                "FieldValueNotSupported"))
        else:
            msg = e["msg"].removeprefix("Value error, ")
            causes.append(Cause(field_path(loc), msg, "FieldValueInvalid"))
    return causes


def _random_suffix(n: int = 5) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' alphabet: no vowels, no look-alikes
    return "".join(secrets.choice(alphabet) for _ in range(n))


def validate_name(info: KindInfo, name: str | None) -> list[Cause]:
    if not name:
        return [Cause("metadata.name", "name or generateName is required", "FieldValueRequired")]
    check = {"label": dns1123_label_error, "rfc1035": dns1035_label_error}.get(info.name_rule,
                                                                              dns1123_subdomain_error)
    err = check(name)
    return [Cause("metadata.name", f"Invalid value: {name!r}: {err}")] if err else []


def validate_document(info: KindInfo, doc: dict[str, Any], *, namespace: str | None) -> dict[str, Any]:
    """Return the normalised document (defaults applied, status dropped) or raise a 422 naming each field.

    `namespace` is the namespace from the request path; a document naming another one is refused.
    """
    if not isinstance(doc, dict):
        raise bad_request("the request body must be a JSON or YAML object")
    causes: list[Cause] = []
    raw_meta = doc.get("metadata") or {}
    if not isinstance(raw_meta, dict):
        raise invalid(info.kind, None, [Cause("metadata", "must be an object")])
    meta: dict[str, Any] = {}
    try:
        meta = ObjectMeta.model_validate(raw_meta).model_dump(exclude_none=True)
    except ValidationError as err:
        causes += causes_from(err, ("metadata",))
        meta = {k: raw_meta[k] for k in ("name", "generateName", "namespace") if isinstance(raw_meta.get(k), str)}
    name = meta.get("name")
    if not name and meta.get("generateName"):
        name = meta["generateName"] + _random_suffix()
        meta["name"] = name
    causes += validate_name(info, name)
    if info.namespaced:
        ns = meta.get("namespace") or namespace
        if namespace and meta.get("namespace") and meta["namespace"] != namespace:
            causes.append(Cause("metadata.namespace",
                                f"the namespace of the object ({meta['namespace']}) does not match the "
                                f"namespace on the request ({namespace})"))
        if not ns:
            causes.append(Cause("metadata.namespace", "Required value", "FieldValueRequired"))
        meta["namespace"] = ns
    else:
        meta.pop("namespace", None)
    meta.pop("managedFields", None)
    meta.pop("selfLink", None)

    body = {k: v for k, v in doc.items() if k not in ENVELOPE}
    normalised: dict[str, Any] = {}
    try:
        model = info.schema.model_validate(body)
        normalised = model.model_dump(mode="json", exclude_none=True, by_alias=True)
    except ValidationError as err:
        causes += causes_from(err)
    if causes:
        raise invalid(info.kind, name, causes)
    out = {"apiVersion": info.api_version, "kind": info.kind, "metadata": meta, **normalised}
    if isinstance(doc.get("status"), dict):
        out["status"] = copy.deepcopy(doc["status"])
    return out


def validate_update(info: KindInfo, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Raise a 422 naming each field when an update of the main resource breaks one of the kind's update checks
    (upstream's transition rules); `old` is the stored object, `new` the validated one, status as stored."""
    causes = [cause for check in info.update_checks for cause in check(old, new)]
    if causes:
        raise invalid(info.kind, (new.get("metadata") or {}).get("name"), causes)


_ABSENT = object()


def _at(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, dict) or obj.get(part) is None:
            return _ABSENT
        obj = obj[part]
    return obj


def immutable(*paths: str, message: str = "field is immutable") -> UpdateCheck:
    """Upstream's `self == oldSelf` CEL rule on each dotted path: where the stored and the new object both have a
    value there, it may not change (setting or removing it is allowed, as the API server evaluates such a rule only
    where both have a value)."""
    def check(old: dict[str, Any], new: dict[str, Any]) -> list[Cause]:
        out = []
        for path in paths:
            before, after = _at(old, path), _at(new, path)
            if before is not _ABSENT and after is not _ABSENT and before != after:
                out.append(Cause(path, f"Invalid value: {_shown(after)}: {message}"))
        return out
    return check


def _shown(value: Any) -> str:
    """A value as the API server shows it in a CEL rule's error: scalars as they are, objects and lists by type."""
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    return f'"{value}"' if isinstance(value, str) else str(value)


def spec_of(obj: dict[str, Any]) -> dict[str, Any]:
    """Everything the user declares: a change here bumps `metadata.generation`."""
    return {k: v for k, v in obj.items() if k not in ENVELOPE}


