"""Object metadata: the part of the envelope every kind shares, and its validation rules."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


class Schema(BaseModel):
    """Base of every accepted schema: unknown fields are refused, never ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def dns1123_label_error(value: str) -> str | None:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not DNS1123_LABEL.match(value):
        return ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
                "and must start and end with an alphanumeric character")
    return None


DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def dns1035_label_error(value: str) -> str | None:
    """A name that must be an RFC 1035 label; the messages are Kubeflow Trainer's CEL rules' on a TrainJob."""
    if len(value) > 63:
        return "metadata.name must be no more than 63 characters"
    if not DNS1035_LABEL.fullmatch(value):
        return "metadata.name must match RFC 1035 DNS label format"
    return None


def dns1123_subdomain_error(value: str) -> str | None:
    if len(value) > 253:
        return "must be no more than 253 characters"
    if not DNS1123_SUBDOMAIN.match(value):
        return ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
                "'.', and must start and end with an alphanumeric character")
    return None


def qualified_name_error(key: str) -> str | None:
    """Label and annotation keys: an optional DNS subdomain prefix, then a name of at most 63 chars."""
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        return "prefix part must be non-empty"
    if prefix and dns1123_subdomain_error(prefix):
        return f"prefix part {dns1123_subdomain_error(prefix)}"
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        return ("name part must consist of alphanumeric characters, '-', '_' or '.', must start and end "
                "with an alphanumeric character, and be at most 63 characters")
    return None


def label_value_error(value: str) -> str | None:
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        return ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
                "'.', and must start and end with an alphanumeric character (at most 63 characters)")
    return None


class OwnerReference(Schema):
    apiVersion: str
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    blockOwnerDeletion: bool | None = None


class ObjectMeta(Schema):
    name: str | None = None
    generateName: str | None = None
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    uid: str | None = None
    resourceVersion: str | None = None
    generation: int | None = None
    creationTimestamp: str | None = None
    deletionTimestamp: str | None = None
    deletionGracePeriodSeconds: int | None = None
    ownerReferences: list[OwnerReference] | None = None
    finalizers: list[str] | None = None
    # Accepted so that `kubectl get -o yaml` output can be re-applied; the server keeps its own.
    managedFields: list[dict[str, Any]] | None = None
    selfLink: str | None = None

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (v or {}).items():
            if err := qualified_name_error(key):
                raise ValueError(f"label key {key!r}: {err}")
            if err := label_value_error(value):
                raise ValueError(f"label {key!r} value {value!r}: {err}")
        return v

    @field_validator("finalizers")
    @classmethod
    def _finalizers(cls, v: list[str] | None) -> list[str] | None:
        for name in v or []:
            if err := qualified_name_error(name):
                raise ValueError(f"finalizer {name!r}: {err}")
        return v

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        total = 0
        for key, value in (v or {}).items():
            if err := qualified_name_error(key):
                raise ValueError(f"annotation key {key!r}: {err}")
            total += len(key) + len(value)
        if total > 256 * 1024:
            raise ValueError("annotations may not exceed 262144 bytes in total")
        return v
