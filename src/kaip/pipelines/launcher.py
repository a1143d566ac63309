"""Turning a planned task into a process command, and a finished one into its outputs.

A Python function component compiled by kfp carries its source as the last `command` element and runs it with
`python3 -m kfp.dsl.executor_main`. Here the source is written to the task's directory and the same entry point
runs in the project's interpreter (no `pip install` at run time: Kaip is offline). A container component runs
its own command/args with the KFP placeholders substituted, when its program exists on this machine.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaip.pipelines.dag import Launch

_PLACEHOLDER = re.compile(r"\{\{\$(?:\.(inputs|outputs)\.(parameters|artifacts)\['([^']+)'\](?:\.(\w+))?"
                          r"|\.outputs\.output_file)?\}\}")


class LaunchError(ValueError):
    """A task that cannot run on the local executor; the message says why."""


@dataclass
class Prepared:
    command: list[str]
    executor_input: dict[str, Any]
    output_file: Path
    param_files: dict[str, Path]
    env: dict[str, str]


def executor_input(launch: Launch, task_dir: Path, artifact_dir: Path) -> tuple[dict[str, Any], Path,
                                                                                dict[str, Path]]:
    """The ExecutorInput the kfp executor reads: resolved inputs, and where to put each output."""
    output_file = task_dir / "executor_output.json"
    param_files = {k: task_dir / "outputs" / k for k in (launch.outputs.get("parameters") or {})}
    out_artifacts = {}
    for name, adef in (launch.outputs.get("artifacts") or {}).items():
        schema = (adef.get("artifactType") or {}).get("schemaTitle", "system.Artifact")
        out_artifacts[name] = {"artifacts": [{"name": name, "type": {"schemaTitle": schema},
                                              "uri": str(artifact_dir / name), "metadata": {}}]}
    doc = {"inputs": {"parameterValues": launch.parameters,
                      "artifacts": {k: {"artifacts": v} for k, v in launch.artifacts.items()}},
           "outputs": {"parameters": {k: {"outputFile": str(p)} for k, p in param_files.items()},
                       "artifacts": out_artifacts, "outputFile": str(output_file)}}
    return doc, output_file, param_files


def prepare(launch: Launch, container: dict[str, Any], task_dir: Path, artifact_dir: Path) -> Prepared:
    task_dir.mkdir(parents=True, exist_ok=True)
    (task_dir / "outputs").mkdir(exist_ok=True)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    doc, output_file, param_files = executor_input(launch, task_dir, artifact_dir)
    command = [str(c) for c in container.get("command") or []]
    args = [str(a) for a in container.get("args") or []]
    env = {e["name"]: str(e.get("value", "")) for e in container.get("env") or [] if "name" in e}
    if any("kfp.dsl.executor_main" in c for c in command):
        module = task_dir / "ephemeral_component.py"
        module.write_text(command[-1])
        argv = ["python", "-m", "kfp.dsl.executor_main", "--component_module_path", str(module)]
        argv += [_substitute(a, doc, launch) for a in args]
        return Prepared(argv, doc, output_file, param_files, {**env, "_KFP_RUNTIME": "true"})
    argv = [_substitute(a, doc, launch) for a in command + args]
    if not argv:
        raise LaunchError(f"task {launch.id}: executor {launch.executor_label} has no command")
    if shutil.which(argv[0]) is None and argv[0] not in ("python", "python3"):
        raise LaunchError(f"task {launch.id}: container command {argv[0]!r} (image "
                          f"{container.get('image', '?')!r}) is not available on this machine; the local executor "
                          "runs commands, not images")
    for p in param_files.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    return Prepared(argv, doc, output_file, param_files, env)


def _substitute(text: str, doc: dict[str, Any], launch: Launch) -> str:
    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "{{$}}":
            return json.dumps(doc)
        if m.group(0) == "{{$.outputs.output_file}}":
            return doc["outputs"]["outputFile"]
        side, kind, name, attr = m.group(1), m.group(2), m.group(3), m.group(4)
        if side == "inputs" and kind == "parameters":
            value = launch.parameters.get(name)
            return value if isinstance(value, str) else json.dumps(value)
        if side == "outputs" and kind == "parameters":
            return doc["outputs"]["parameters"][name]["outputFile"]
        group = doc[side]["artifacts"].get(name)
        if not group:
            raise LaunchError(f"task {launch.id}: placeholder {m.group(0)} names no artifact")
        art = group["artifacts"][0]
        return art["uri"] if attr in ("uri", "path", None) else json.dumps(art.get("metadata", {}))
    return _PLACEHOLDER.sub(repl, text)


def _typed(ptype: str | None, text: str) -> Any:
    if ptype == "STRING":
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def collect_outputs(launch: Launch, prepared_input: dict[str, Any], output_file: Path,
                    param_files: dict[str, Path]) -> dict[str, Any]:
    """Outputs of a finished task: the ExecutorOutput the kfp executor wrote, else the parameter files."""
    written: dict[str, Any] = {}
    if output_file.is_file():
        written = json.loads(output_file.read_text() or "{}")
    params: dict[str, Any] = dict(written.get("parameterValues") or {})
    for name, path in param_files.items():
        if name not in params and path.is_file():
            ptype = ((launch.outputs.get("parameters") or {}).get(name) or {}).get("parameterType")
            params[name] = _typed(ptype, path.read_text())
    artifacts: dict[str, list[dict[str, Any]]] = {}
    for name, group in prepared_input["outputs"]["artifacts"].items():
        arts = [dict(a) for a in group["artifacts"]]
        updated = ((written.get("artifacts") or {}).get(name) or {}).get("artifacts") or []
        for a, u in zip(arts, updated, strict=False):
            a["metadata"] = u.get("metadata") or {}
            if u.get("uri"):
                a["uri"] = u["uri"]
        artifacts[name] = arts
    missing = [k for k in (launch.outputs.get("parameters") or {}) if k not in params]
    if missing:
        raise LaunchError(f"task {launch.id} did not write output parameter(s) {', '.join(missing)}")
    return {"parameters": params, "artifacts": artifacts}
