"""Model URIs: `models:/NAME/VERSION`, `models:/NAME@ALIAS`, `models:/NAME/latest` and `runs:/RUN_ID/path`.

`resolve_model_uri` is what any part of Kaip that takes a model (a training base model, an
InferenceService `storageUri`) calls to turn such a URI into the registered version and the local
directory that holds its files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaip.store.store import Store
from kaip.tracking.access import Access, AllowAll
from kaip.tracking.errors import invalid_parameter

_MODELS = re.compile(r"^models:/(?P<name>[^/@:]+)(?:/(?P<version>[^/]+)|@(?P<alias>[\w\-]+))(?P<path>/.*)?$")
_RUNS = re.compile(r"^runs:/(?P<run>[0-9a-f]{32})(?:/(?P<path>.*))?$")
_MLFLOW_ARTIFACTS = re.compile(r"^mlflow-artifacts:/+(?P<path>.*)$")


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str | None = None  # a number or "latest"
    alias: str | None = None
    path: str = ""


def parse_model_uri(uri: str) -> ModelRef:
    m = _MODELS.match(uri or "")
    if not m:
        raise invalid_parameter(f"Invalid model URI {uri!r}: use models:/NAME/VERSION, models:/NAME@ALIAS or "
                                "models:/NAME/latest")
    version = m.group("version")
    if version is not None and version != "latest" and not version.isdigit():
        raise invalid_parameter(f"Invalid model URI {uri!r}: the version must be a number or 'latest'")
    return ModelRef(m.group("name"), version, m.group("alias"), (m.group("path") or "").lstrip("/"))


def is_model_uri(uri: str) -> bool:
    return bool(uri) and uri.startswith("models:/")


def artifact_path_for_source(source: str) -> str | None:
    """The artifact-store path of a version's source (`mlflow-artifacts:/1/<run>/artifacts/model` ->
    `1/<run>/artifacts/model`); None if the files live elsewhere."""
    m = _MLFLOW_ARTIFACTS.match(source or "")
    if m:
        return m.group("path").strip("/")
    return None


@dataclass(frozen=True)
class ResolvedModel:
    namespace: str
    name: str
    version: str
    source: str
    run_id: str | None
    artifact_path: str | None  # relative to the artifact store root, when Kaip holds the files
    local_path: Path | None  # the directory on this machine, when Kaip holds the files
    model_version: dict[str, Any]


def resolve_model_uri(store: Store, uri: str, namespace: str, *, artifacts_root: Path | None = None,
                      access: Access | None = None) -> ResolvedModel:
    """Resolve a `models:/` URI in a namespace to its registered version (RESOURCE_DOES_NOT_EXIST if missing)."""
    from kaip.tracking.registry import RegistryService

    ref = parse_model_uri(uri)
    registry = RegistryService(store)
    who = access or AllowAll()
    if ref.alias:
        mv = registry.version_by_alias(who, namespace, ref.name, ref.alias)
    elif ref.version == "latest":
        mv = registry.latest_version(who, namespace, ref.name)
    else:
        mv = registry.get_version(who, namespace, ref.name, ref.version)
    path = artifact_path_for_source(mv["source"])
    if path is not None and ref.path:
        path = f"{path}/{ref.path}"
    local = (artifacts_root / path) if (artifacts_root is not None and path is not None) else None
    return ResolvedModel(namespace, mv["name"], mv["version"], mv["source"], mv.get("run_id"), path, local, mv)


def parse_runs_uri(uri: str) -> tuple[str, str]:
    m = _RUNS.match(uri or "")
    if not m:
        raise invalid_parameter(f"Invalid run URI {uri!r}: use runs:/RUN_ID or runs:/RUN_ID/path")
    return m.group("run"), m.group("path") or ""
