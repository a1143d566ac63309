"""Status conditions as Kubernetes writes them: type, status, reason, message, lastTransitionTime,
observedGeneration. lastTransitionTime changes only when status does."""

from __future__ import annotations

from typing import Any

from kaip.store.store import now_rfc3339


def set_condition(status: dict[str, Any], type_: str, value: bool | str, reason: str, message: str = "",
                  *, generation: int | None = None) -> bool:
    """Set a condition in `status["conditions"]`; returns True when anything changed."""
    state = value if isinstance(value, str) else ("True" if value else "False")
    conditions: list[dict[str, Any]] = status.setdefault("conditions", [])
    for cond in conditions:
        if cond.get("type") == type_:
            changed = (cond.get("status") != state or cond.get("reason") != reason
                       or cond.get("message") != message or cond.get("observedGeneration") != generation)
            if cond.get("status") != state:
                cond["lastTransitionTime"] = now_rfc3339()
            cond.update(status=state, reason=reason, message=message)
            if generation is not None:
                cond["observedGeneration"] = generation
            return changed
    cond = {"type": type_, "status": state, "reason": reason, "message": message,
            "lastTransitionTime": now_rfc3339()}
    if generation is not None:
        cond["observedGeneration"] = generation
    conditions.append(cond)
    return True


def get_condition(status: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for cond in (status or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return None


def is_true(status: dict[str, Any] | None, type_: str) -> bool:
    cond = get_condition(status, type_)
    return bool(cond and cond.get("status") == "True")
