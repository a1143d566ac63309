"""Errors in MLflow's shape: `{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": ...}` and the HTTP status
MLflow gives each code (mlflow/exceptions.py, ERROR_CODE_TO_HTTP_STATUS)."""

from __future__ import annotations

from typing import Any

HTTP_STATUS = {
    "INVALID_PARAMETER_VALUE": 400,
    "BAD_REQUEST": 400,
    "MALFORMED_REQUEST": 400,
    "RESOURCE_ALREADY_EXISTS": 400,
    "INVALID_STATE": 400,  # MLflow says 500; a client error must not look transient (the client retries 5xx)
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "RESOURCE_DOES_NOT_EXIST": 404,
    "ENDPOINT_NOT_FOUND": 404,
    "RESOURCE_CONFLICT": 409,
    "REQUEST_LIMIT_EXCEEDED": 429,
    "INTERNAL_ERROR": 500,
    "NOT_IMPLEMENTED": 501,
}


class MlflowError(Exception):
    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message

    @property
    def status(self) -> int:
        return HTTP_STATUS.get(self.error_code, 400)

    def to_json(self) -> dict[str, Any]:
        return {"error_code": self.error_code, "message": self.message}


def invalid_parameter(message: str) -> MlflowError:
    return MlflowError("INVALID_PARAMETER_VALUE", message)


def not_found(message: str) -> MlflowError:
    return MlflowError("RESOURCE_DOES_NOT_EXIST", message)


def already_exists(message: str) -> MlflowError:
    return MlflowError("RESOURCE_ALREADY_EXISTS", message)


def permission_denied(message: str) -> MlflowError:
    return MlflowError("PERMISSION_DENIED", message)


def not_implemented(message: str) -> MlflowError:
    return MlflowError("NOT_IMPLEMENTED", message)
