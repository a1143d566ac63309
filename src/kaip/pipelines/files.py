"""Pipeline files: Kubeflow Pipelines IR YAML, Python files defining a `@dsl.pipeline`, pipeline functions, and
PipelineRun manifests, turned into the PipelineRun the API takes. Used by `kaip run` and by the SDK's
`Client.run_pipeline`; Python pipelines are compiled with the real kfp SDK."""

from __future__ import annotations

import re
import runpy
import tempfile
from pathlib import Path
from typing import Any

import yaml

API = "kaip.dev/v1alpha1"


class PipelineFileError(ValueError):
    pass


def compile_python(path: Path) -> dict[str, Any]:
    """Compile the `@dsl.pipeline` defined in a Python file (exactly one) with the kfp SDK."""
    from kfp.dsl.graph_component import GraphComponent

    try:
        namespace = runpy.run_path(str(path), run_name="__kaip_pipeline__")
    except Exception as e:  # the user's file: say where it broke, not a traceback of ours
        raise PipelineFileError(f"{path}: {e.__class__.__name__}: {e}") from e
    pipelines = {k: v for k, v in namespace.items() if isinstance(v, GraphComponent)}
    if len(pipelines) != 1:
        found = ", ".join(sorted(pipelines)) or "none"
        raise PipelineFileError(f"{path}: expected exactly one @dsl.pipeline function, found {found}")
    return compile_pipeline(next(iter(pipelines.values())))


def load_ir_text(text: str, where: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    if not docs or not isinstance(docs[0], dict):
        raise PipelineFileError(f"{where}: no pipeline found")
    ir = dict(docs[0])
    for extra in docs[1:]:  # a kfp-kubernetes platform spec: kept, so the server can refuse it by name
        if isinstance(extra, dict):
            ir.update(extra)
    return ir


def parse_params(pairs: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name:
            raise PipelineFileError(f"-p {pair!r}: expected name=value")
        params[name] = value
    return params


def run_document(path: Path, params: dict[str, str], *, caching: bool, queue: str | None = None) -> dict[str, Any]:
    """The PipelineRun to create for FILE (labelled with the LocalQueue its tasks go through, if any)."""
    doc = _run_document(path, params, caching=caching)
    if queue:
        doc["metadata"] = {**(doc.get("metadata") or {})}
        doc["metadata"]["labels"] = {**(doc["metadata"].get("labels") or {}), "kueue.x-k8s.io/queue-name": queue}
    return doc


def _run_document(path: Path, params: dict[str, str], *, caching: bool) -> dict[str, Any]:
    ir = compile_python(path) if path.suffix == ".py" else load_ir_text(path.read_text(), str(path))
    if ir.get("kind") == "PipelineRun":
        run = dict(ir)
        if params:
            run.setdefault("spec", {}).setdefault("parameters", {}).update(params)
        if not caching:
            run.setdefault("spec", {})["enableCaching"] = False
        return run
    if "pipelineInfo" not in ir and "root" not in ir:
        raise PipelineFileError(f"{path}: neither Kubeflow Pipelines IR (pipelineInfo, root, components…) nor a "
                                "PipelineRun manifest")
    return {"apiVersion": API, "kind": "PipelineRun", "metadata": {"generateName": run_name_prefix(ir)},
            "spec": {"pipelineSpec": ir, "parameters": params, "enableCaching": caching}}


def compile_pipeline(pipeline: Any) -> dict[str, Any]:
    """Compile a `@dsl.pipeline` function (a kfp GraphComponent) to IR with the kfp SDK."""
    from kfp import compiler

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(pipeline, str(target))
        return load_ir_text(target.read_text(), getattr(pipeline, "name", "pipeline"))


def run_name_prefix(ir: dict[str, Any]) -> str:
    """`generateName` for a run of this IR: the pipeline's name as a DNS label, then a dash."""
    name = re.sub(r"[^a-z0-9-]+", "-", str((ir.get("pipelineInfo") or {}).get("name", "run")).lower()).strip("-")
    return f"{name[:50] or 'run'}-"
