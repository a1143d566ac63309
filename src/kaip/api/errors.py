"""API errors carried as Kubernetes `Status` objects.

Every failure a client can see is one of these, so the HTTP layer, the CLI and the SDK all
speak the same shape: `reason`, `message`, `code` and `details.causes[].field`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Cause:
    field: str
    message: str
    reason: str = "FieldValueInvalid"

    def to_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}


@dataclass
class ApiError(Exception):
    code: int
    reason: str
    message: str
    kind: str | None = None
    name: str | None = None
    group: str | None = None
    causes: list[Cause] = field(default_factory=list)

    def __str__(self) -> str:
        return self.message

    def to_status(self) -> dict[str, Any]:
        details: dict[str, Any] = {}
        if self.name:
            details["name"] = self.name
        if self.group is not None:
            details["group"] = self.group
        if self.kind:
            details["kind"] = self.kind
        if self.causes:
            details["causes"] = [c.to_dict() for c in self.causes]
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if details:
            status["details"] = details
        return status


def bad_request(message: str, causes: list[Cause] | None = None) -> ApiError:
    return ApiError(400, "BadRequest", message, causes=causes or [])


def invalid(kind: str, name: str | None, causes: list[Cause]) -> ApiError:
    summary = "; ".join(f"{c.field}: {c.message}" if c.field else c.message for c in causes)
    return ApiError(422, "Invalid", f'{kind} "{name or ""}" is invalid: {summary}', kind=kind, name=name,
                    causes=causes)


def not_found(kind: str, name: str, plural: str | None = None) -> ApiError:
    return ApiError(404, "NotFound", f'{plural or kind} "{name}" not found', kind=plural or kind, name=name)


def already_exists(kind: str, name: str, plural: str | None = None) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{plural or kind} "{name}" already exists', kind=plural or kind,
                    name=name)


def conflict(kind: str, name: str, plural: str | None = None) -> ApiError:
    return ApiError(
        409, "Conflict",
        f'Operation cannot be fulfilled on {plural or kind} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        kind=plural or kind, name=name)


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized: a valid bearer token is required")


def forbidden(user: str, verb: str, resource: str, namespace: str | None) -> ApiError:
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    return ApiError(403, "Forbidden", f'{resource} is forbidden: User "{user}" cannot {verb} resource '
                                      f'"{resource}"{where}')
