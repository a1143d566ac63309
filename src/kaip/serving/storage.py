"""Where a model comes from: `storageUri` resolved to a folder or file on this machine.

Kaip serves offline: local paths, `file://`, `pvc://NAME/PATH` (a volume folder under `$KAIP_HOME/volumes/
{namespace}/NAME`) and `models:/NAME/VERSION` or `models:/NAME@ALIAS` from Kaip's registry. Remote schemes are
refused with a message saying how to bring the model here instead. LoRA adapters named in a predictor's args
(`--lora_modules NAME=URI`) are resolved the same way.
"""

from __future__ import annotations

import json
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


def resolve_storage_uri(uri: str, *, namespace: str, home: Path, store: Any = None, what: str = "storageUri"
                        ) -> Path:
    """The local path of a model, which must exist; StorageError with a precise message (naming the URI as `what`)
    otherwise."""
    if uri.startswith(REMOTE_SCHEMES):
        scheme = uri.split("://", 1)[0]
        raise StorageError(f"{what} {uri!r}: {scheme}:// is a remote scheme and Kaip serves offline; copy "
                           "the model to this machine and use a local path, file://, pvc://NAME/PATH, or import "
                           "it into the registry and use models:/NAME/VERSION")
    if uri.startswith("models:/"):
        path = _resolve_models_uri(uri, home, namespace, store)
    elif uri.startswith("pvc://"):
        rest = uri.removeprefix("pvc://")
        claim, _, sub = rest.partition("/")
        if not claim:
            raise StorageError(f"{what} {uri!r}: pvc:// needs a claim name (pvc://NAME/PATH)")
        root = volume_root(home, namespace) / claim
        path = (root / sub).resolve()
        if not str(path).startswith(str(root.resolve())):
            raise StorageError(f"{what} {uri!r}: the path leaves the volume")
    elif uri.startswith("file://"):
        path = Path(uri.removeprefix("file://"))
    elif "://" in uri:
        raise StorageError(f"{what} {uri!r}: unsupported scheme {uri.split('://', 1)[0]}://")
    else:
        path = Path(uri)
    if not path.is_absolute():
        raise StorageError(f"{what} {uri!r}: a local path must be absolute")
    if not path.exists():
        raise StorageError(f"{what} {uri!r}: {path} does not exist")
    return path


# LoRA adapters named in a predictor's args (`--lora_modules faq=models:/faq-lora/1`, vLLM's spelling too) resolve
# as storageUri does, so that a replica receives local folders.
LORA_MODULES_FLAGS = ("--lora_modules", "--lora-modules")


def parse_lora_module(value: str) -> tuple[str, str]:
    """`NAME=PATH`, or vLLM's JSON form `{"name": NAME, "path": PATH}`, -> (NAME, PATH); ValueError otherwise."""
    if value.lstrip().startswith("{"):
        try:
            doc = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"--lora_modules {value!r}: not valid JSON: {err}") from err
        name, path = doc.get("name"), doc.get("path")
        if not isinstance(name, str) or not isinstance(path, str) or not name or not path:
            raise ValueError(f"--lora_modules {value!r}: the JSON form needs \"name\" and \"path\"")
        return name, path
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--lora_modules {value!r}: expected NAME=PATH")
    return name, path


def resolve_lora_module_args(args: list[str], *, namespace: str, home: Path, store: Any = None) -> list[str]:
    """`args` with the path of every `--lora_modules` value resolved to a local one; StorageError naming the adapter
    when one does not resolve."""

    def resolve(value: str) -> str:
        try:
            name, uri = parse_lora_module(value)
        except ValueError as err:
            raise StorageError(str(err)) from err
        try:
            path = str(resolve_storage_uri(uri, namespace=namespace, home=home, store=store, what="URI"))
        except StorageError as err:
            raise StorageError(f"LoRA adapter {name!r} (--lora_modules): {err}") from err
        if value.lstrip().startswith("{"):
            return json.dumps({**json.loads(value), "path": path})
        return f"{name}={path}"

    out: list[str] = []
    values = False  # inside a --lora_modules list (nargs="+": up to the next option)
    for arg in args:
        flag, eq, value = arg.partition("=")
        if arg in LORA_MODULES_FLAGS:
            values = True
            out.append(arg)
        elif eq and flag in LORA_MODULES_FLAGS:
            values = False
            out.append(f"{flag}={resolve(value)}")
        elif values and not arg.startswith("-"):
            out.append(resolve(arg))
        else:
            values = False
            out.append(arg)
    return out
