"""Where a model comes from: `storageUri` resolved to a folder or file on this machine.

Kaip serves offline: local paths, `file://`, `pvc://NAME/PATH` (a volume folder under `$KAIP_HOME/volumes/
{namespace}/NAME`) and `models:/NAME/VERSION` or `models:/NAME@ALIAS` from Kaip's registry. Remote schemes are
refused with a message saying how to bring the model here instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

REMOTE_SCHEMES = ("s3://", "gs://", "hf://", "http://", "https://", "hdfs://", "webhdfs://", "oci://",
                  "oci+native://")

# `models:/` URIs are resolved by the tracking subsystem (issue 3) through `kaip.tracking.uris`, or by a resolver
# registered here (`fn(uri, home) -> local path`).
ModelsResolver = Callable[[str, Path], Path]
_models_resolver: ModelsResolver | None = None


class StorageError(Exception):
    pass


def register_models_resolver(fn: ModelsResolver) -> None:
    global _models_resolver
    _models_resolver = fn


def _tracking_resolver(store: Any, namespace: str) -> ModelsResolver | None:
    """The registry of issue 3: `kaip.tracking.uris.resolve_model_uri(store, uri, namespace, artifacts_root=)`."""
    try:
        from kaip.tracking import uris
    except ImportError:
        return None

    def resolve(uri: str, home: Path) -> Path:
        found = uris.resolve_model_uri(store, uri, namespace, artifacts_root=home / "artifacts")
        if found.local_path is None:
            raise StorageError(f"{uri}: version {found.version} of {found.name} points at {found.source}, which "
                               "is not stored by Kaip; register a version whose files Kaip holds")
        return Path(found.local_path)
    return resolve if store is not None else None


def _resolve_models_uri(uri: str, home: Path, namespace: str, store: Any) -> Path:
    resolver = _models_resolver or _tracking_resolver(store, namespace)
    if resolver is None:
        raise StorageError(f"{uri}: the model registry is not available in this server (models:/ URIs need "
                           "Kaip's tracking subsystem)")
    try:
        return Path(resolver(uri, home))
    except StorageError:
        raise
    except Exception as err:
        raise StorageError(f"{uri}: {err}") from err


def volume_root(home: Path, namespace: str) -> Path:
    return home / "volumes" / namespace


def resolve_storage_uri(uri: str, *, namespace: str, home: Path, store: Any = None) -> Path:
    """The local path of a model, which must exist; StorageError with a precise message otherwise."""
    if uri.startswith(REMOTE_SCHEMES):
        scheme = uri.split("://", 1)[0]
        raise StorageError(f"storageUri {uri!r}: {scheme}:// is a remote scheme and Kaip serves offline; copy "
                           "the model to this machine and use a local path, file://, pvc://NAME/PATH, or import "
                           "it into the registry and use models:/NAME/VERSION")
    if uri.startswith("models:/"):
        path = _resolve_models_uri(uri, home, namespace, store)
    elif uri.startswith("pvc://"):
        rest = uri.removeprefix("pvc://")
        claim, _, sub = rest.partition("/")
        if not claim:
            raise StorageError(f"storageUri {uri!r}: pvc:// needs a claim name (pvc://NAME/PATH)")
        root = volume_root(home, namespace) / claim
        path = (root / sub).resolve()
        if not str(path).startswith(str(root.resolve())):
            raise StorageError(f"storageUri {uri!r}: the path leaves the volume")
    elif uri.startswith("file://"):
        path = Path(uri.removeprefix("file://"))
    elif "://" in uri:
        raise StorageError(f"storageUri {uri!r}: unsupported scheme {uri.split('://', 1)[0]}://")
    else:
        path = Path(uri)
    if not path.is_absolute():
        raise StorageError(f"storageUri {uri!r}: a local path must be absolute")
    if not path.exists():
        raise StorageError(f"storageUri {uri!r}: {path} does not exist")
    return path
