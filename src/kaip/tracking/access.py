"""Who is asking, and which namespaces they may read or write: the seam between auth and the tracking services.

The services take an `Access` and check it when they load an object, so a run, experiment or model in a
namespace the caller cannot read is reported as not existing (its existence is not leaked), and one the
caller may read but not write is a PERMISSION_DENIED.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kaip.tracking.errors import MlflowError, permission_denied


class Access(Protocol):
    user: str

    def can_read(self, namespace: str) -> bool: ...

    def can_write(self, namespace: str) -> bool: ...


@dataclass(frozen=True)
class AllowAll:
    """Full access: for tests of the service layer and for in-process callers (controllers)."""

    user: str = "system"

    def can_read(self, namespace: str) -> bool:
        return True

    def can_write(self, namespace: str) -> bool:
        return True


def check_read(access: Access, namespace: str, missing: MlflowError) -> None:
    if not access.can_read(namespace):
        raise missing


def check_write(access: Access, namespace: str, what: str, missing: MlflowError) -> None:
    check_read(access, namespace, missing)
    if not access.can_write(namespace):
        raise permission_denied(f'User "{access.user}" may not modify {what} in the namespace "{namespace}" '
                                "(the edit role is needed)")
