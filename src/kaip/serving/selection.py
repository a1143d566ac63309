"""Runtime selection, as KServe does it: an explicitly named runtime, or the best runtime that auto-selects
the model's format. Namespaced ServingRuntimes come before ClusterServingRuntimes; within each, the higher
`priority` of the matching format wins. Pure: it sees the runtimes it is given and nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


class SelectionError(Exception):
    """No runtime can serve the model; the message says why, for the InferenceService's condition."""


@dataclass(frozen=True)
class Selected:
    kind: str  # "ServingRuntime" or "ClusterServingRuntime"
    runtime: Obj

    @property
    def name(self) -> str:
        return self.runtime["metadata"]["name"]


def version_matches(wanted: str | None, offered: str | None) -> bool:
    """A model format version "1.2" is served by a runtime declaring "1", "1.2" or "1.2.x"'s prefix; none wanted
    matches any."""
    if not wanted:
        return True
    if not offered:
        return False
    return wanted == offered or wanted.startswith(offered + ".") or offered.startswith(wanted + ".")


def _format_entry(runtime: Obj, name: str, version: str | None) -> Obj | None:
    for fmt in runtime["spec"].get("supportedModelFormats") or []:
        if fmt["name"].lower() == name.lower() and version_matches(version, fmt.get("version")):
            return fmt
    return None


def _protocol_ok(runtime: Obj, protocol: str) -> bool:
    offered = runtime["spec"].get("protocolVersions")
    return not offered or protocol in offered


def select_runtime(*, model_format: str | None, format_version: str | None, protocol: str,
                   explicit: str | None, namespaced: list[Obj], cluster: list[Obj]) -> Selected:
    if explicit:
        for kind, pool in (("ServingRuntime", namespaced), ("ClusterServingRuntime", cluster)):
            for rt in pool:
                if rt["metadata"]["name"] != explicit:
                    continue
                if rt["spec"].get("disabled"):
                    raise SelectionError(f"specified runtime {explicit} is disabled")
                if model_format and not _format_entry(rt, model_format, format_version):
                    raise SelectionError(f"specified runtime {explicit} does not support specified framework/"
                                         f"version {model_format}{'/' + format_version if format_version else ''}")
                if not _protocol_ok(rt, protocol):
                    raise SelectionError(f"specified runtime {explicit} does not support protocol {protocol}")
                return Selected(kind, rt)
        raise SelectionError(f"specified runtime {explicit} could not be found (no ServingRuntime or "
                             "ClusterServingRuntime of that name)")
    if not model_format:
        raise SelectionError("no model format given and no runtime named")
    for kind, pool in (("ServingRuntime", namespaced), ("ClusterServingRuntime", cluster)):
        ranked = []
        for rt in pool:
            if rt["spec"].get("disabled") or not _protocol_ok(rt, protocol):
                continue
            fmt = _format_entry(rt, model_format, format_version)
            if fmt and fmt.get("autoSelect"):
                ranked.append((-(fmt.get("priority") or 0), rt["metadata"]["name"], rt))
        if ranked:
            ranked.sort(key=lambda r: (r[0], r[1]))
            return Selected(kind, ranked[0][2])
    what = model_format + (f" (version {format_version})" if format_version else "")
    raise SelectionError(f"No runtime found to support predictor with model type: {what} and protocol "
                         f"{protocol}")
