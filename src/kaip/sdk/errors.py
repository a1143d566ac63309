"""Typed errors of the Kaip SDK.

Every error the server answers with becomes an `ApiError` subclass chosen by HTTP code, carrying the server's
Kubernetes `Status` (or the MLflow error document of the tracking API) unchanged, field causes included, so a
notebook can `except kaip.NotFound:` or `except PermissionError:` without parsing messages.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error the server answered with.

    Attributes:
        status: the server's `Status` object (`code`, `reason`, `message`, `details.causes`).
        code: the HTTP status code.
        reason: the `Status` reason (`NotFound`, `Forbidden`, `Invalid`, ...) or the MLflow `error_code`.
        causes: `[{"field": ..., "message": ..., "reason": ...}]`, the fields the server refused.
    """

    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status
        self.code = int(status.get("code", 0) or 0)
        self.reason = str(status.get("reason") or status.get("error_code") or "")
        self.causes: list[dict[str, Any]] = list((status.get("details") or {}).get("causes") or [])
        super().__init__(status.get("message") or self.reason or f"HTTP {self.code}")

    @property
    def fields(self) -> list[str]:
        """The field paths the server named in its causes (e.g. `spec.predictor.minReplicas`)."""
        return [str(c["field"]) for c in self.causes if c.get("field")]


class BadRequest(ApiError, ValueError):
    """400: the request itself is malformed."""


class Unauthorized(ApiError, PermissionError):
    """401: no token, or a token the server does not accept."""


class Forbidden(ApiError, PermissionError):
    """403: the token's user may not do this in this namespace (e.g. a `view` token writing)."""


class NotFound(ApiError, LookupError):
    """404: no such object (or kind)."""


class Conflict(ApiError):
    """409: a concurrent change, or the object already exists (`reason == "AlreadyExists"`)."""


class AlreadyExists(Conflict):
    """409: an object of that name already exists."""


class Invalid(ApiError, ValueError):
    """422: the object does not validate; `causes` names each refused field."""


class ServerError(ApiError):
    """5xx: the server failed."""


class Unreachable(ApiError, ConnectionError):
    """The server could not be reached (is `kaip up` running? is KAIP_SERVER right?)."""


class WaitTimeout(TimeoutError):
    """`wait()` gave up before the condition held; `last` is the object as last seen."""

    def __init__(self, message: str, last: Any = None) -> None:
        super().__init__(message)
        self.last = last


class Failed(RuntimeError):
    """A job, pipeline run or rollout ended in failure; `obj` is the object with its status."""

    def __init__(self, message: str, obj: Any = None) -> None:
        super().__init__(message)
        self.obj = obj


_BY_CODE: dict[int, type[ApiError]] = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound,
                                       409: Conflict, 422: Invalid}
# The tracking API speaks MLflow's error codes; they map onto the same classes.
_BY_MLFLOW_CODE: dict[str, int] = {"RESOURCE_DOES_NOT_EXIST": 404, "NOT_FOUND": 404, "PERMISSION_DENIED": 403,
                                   "UNAUTHENTICATED": 401, "RESOURCE_ALREADY_EXISTS": 409,
                                   "INVALID_PARAMETER_VALUE": 400, "BAD_REQUEST": 400,
                                   "INVALID_STATE": 409, "RESOURCE_CONFLICT": 409}


def from_status(status: dict[str, Any], http_code: int | None = None) -> ApiError:
    """The typed error for a server's `Status` (or MLflow error document): the class by MLflow's `error_code` when
    there is one, else by HTTP code; `code` stays the HTTP code the server answered with."""
    status = dict(status)
    code = int(status.get("code") or 0) or int(http_code or 0)
    status["code"] = code
    kind = _BY_MLFLOW_CODE.get(str(status.get("error_code"))) or code
    cls = _BY_CODE.get(kind) or (ServerError if kind >= 500 else ApiError)
    if cls is Conflict and (status.get("reason") == "AlreadyExists"
                            or status.get("error_code") == "RESOURCE_ALREADY_EXISTS"):
        cls = AlreadyExists
    return cls(status)
