"""Patch semantics: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and the three-way merge that
`kaip apply` uses (fields dropped from the applied configuration since last time are removed)."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch

from kaip.api.errors import bad_request

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: dict[str, Any], ops: Any) -> dict[str, Any]:
    if not isinstance(ops, list):
        raise bad_request("a JSON patch must be a list of operations")
    try:
        return jsonpatch.JsonPatch(ops).apply(copy.deepcopy(target))
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
        raise bad_request(f"the JSON patch could not be applied: {err}") from err


def three_way_patch(last: Any, applied: Any) -> Any:
    """A merge patch that sets what `applied` declares and deletes what `last` declared and `applied` no
    longer does; fields nobody declared (set by other writers) are left alone."""
    if not isinstance(applied, dict) or not isinstance(last, dict):
        return copy.deepcopy(applied)
    patch: dict[str, Any] = {}
    for key in last:
        if key not in applied:
            patch[key] = None
    for key, value in applied.items():
        patch[key] = three_way_patch(last.get(key), value) if isinstance(value, dict) else copy.deepcopy(value)
    return patch


def apply_config(live: dict[str, Any], applied: dict[str, Any]) -> dict[str, Any]:
    """The object that results from applying `applied` over `live`, remembering `applied` for next time."""
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    try:
        last = json.loads(annotations.get(LAST_APPLIED, "{}"))
    except json.JSONDecodeError:
        last = {}
    remembered = copy.deepcopy(applied)
    meta = remembered.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("annotations"), dict):  # null is as good as absent
        meta["annotations"].pop(LAST_APPLIED, None)
    patch = three_way_patch(last, remembered)
    patch.pop("status", None)
    result = merge_patch({k: v for k, v in live.items() if k != "status"}, patch)
    result.setdefault("metadata", {}).setdefault("annotations", {})[LAST_APPLIED] = json.dumps(
        remembered, sort_keys=True, separators=(",", ":"))
    return result
