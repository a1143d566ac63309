"""Planning a Kubeflow Pipelines run: pure functions over the compiled IR and what has happened so far.

`validate_ir` checks a PipelineSpec as `kfp.compiler.Compiler().compile` writes it and names every problem by
its path (`root.dag.tasks.train.inputs.parameters.lr: ...`). `plan` takes the IR, the run's parameters and the
recorded state of each leaf execution and returns what to launch next, what is skipped and why, and the phase
of every node, so the controller only turns launches into Pods and Pod endings into records.

Node ids are paths through the nested DAGs: `prep`, `exit-handler-1/train`, `for-loop-2[1]/show`. Nothing here
does I/O; the same state always gives the same plan, which is what makes a restarted controller safe.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from kaip.pipelines.cel import CelError, check_syntax, evaluate

TERMINAL = ("Succeeded", "Failed", "Skipped")
TOP_KEYS = {"pipelineInfo", "components", "deploymentSpec", "root", "schemaVersion", "sdkVersion",
            "defaultPipelineRoot"}
TASK_KEYS = {"taskInfo", "componentRef", "inputs", "dependentTasks", "cachingOptions", "triggerPolicy",
             "parameterIterator", "artifactIterator", "iteratorPolicy", "retryPolicy"}
COMPONENT_KEYS = {"inputDefinitions", "outputDefinitions", "executorLabel", "dag", "singlePlatformSpecs",
                  "taskConfigPassthroughs"}
PARAM_SOURCES = ("componentInputParameter", "taskOutputParameter", "runtimeValue", "taskFinalStatus")
ARTIFACT_SOURCES = ("componentInputArtifact", "taskOutputArtifact")
PARAMETER_TYPES = {"NUMBER_DOUBLE", "NUMBER_INTEGER", "STRING", "BOOLEAN", "LIST", "STRUCT", "TASK_FINAL_STATUS",
                   "TASK_CONFIG"}


# ---- validation -------------------------------------------------------------------------------------------


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _producers(task: dict[str, Any]) -> list[tuple[str, str]]:
    """(producer task, field path) for every data edge of a task."""
    out = []
    inputs = _as_dict(task.get("inputs"))
    for name, src in _as_dict(inputs.get("parameters")).items():
        src = _as_dict(src)
        for key in ("taskOutputParameter", "taskFinalStatus"):
            if isinstance(src.get(key), dict) and src[key].get("producerTask"):
                out.append((src[key]["producerTask"], f"inputs.parameters.{name}.{key}.producerTask"))
    for name, src in _as_dict(inputs.get("artifacts")).items():
        src = _as_dict(src)
        if isinstance(src.get("taskOutputArtifact"), dict) and src["taskOutputArtifact"].get("producerTask"):
            out.append((src["taskOutputArtifact"]["producerTask"],
                        f"inputs.artifacts.{name}.taskOutputArtifact.producerTask"))
    return out


def dependencies(task: dict[str, Any]) -> list[str]:
    deps = list(task.get("dependentTasks") or [])
    for producer, _ in _producers(task):
        if producer not in deps:
            deps.append(producer)
    return deps


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A dependency cycle as a path `[a, b, ..., a]`, or None. `graph` maps a task to the tasks it waits for."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in graph.get(node, []):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def validate_ir(ir: Any) -> list[str]:
    """Every problem in a PipelineSpec, each as `path: message`. Empty when the IR can be run."""
    if not isinstance(ir, dict):
        return ["pipelineSpec: must be an object (the YAML that kfp.compiler.Compiler().compile writes)"]
    errs: list[str] = []
    for key in ir:
        if key not in TOP_KEYS:
            hint = " (kfp-kubernetes platform specs are not supported by the local executor)" \
                if key == "platforms" else ""
            errs.append(f"{key}: unknown field{hint}")
    if not isinstance(_as_dict(ir.get("pipelineInfo")).get("name"), str):
        errs.append("pipelineInfo.name: Required value")
    components = ir.get("components") or {}
    if not isinstance(components, dict):
        return errs + ["components: must be a map of component specs"]
    executors = _as_dict(_as_dict(ir.get("deploymentSpec")).get("executors"))
    if not isinstance(ir.get("root"), dict):
        return errs + ["root: Required value"]
    for cname, comp in components.items():
        errs += _validate_component(f"components.{cname}", comp, components, executors)
    errs += _validate_component("root", ir["root"], components, executors, root=True)
    for label, exe in executors.items():
        exe = _as_dict(exe)
        if "container" not in exe and "importer" not in exe:
            errs.append(f"deploymentSpec.executors.{label}: only container executors run locally "
                        f"(found {', '.join(sorted(exe)) or 'nothing'})")
        elif "container" in exe and not (_as_dict(exe["container"]).get("command")
                                         or _as_dict(exe["container"]).get("args")):
            errs.append(f"deploymentSpec.executors.{label}.container.command: Required value")
    return errs


def _input_defs(comp: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    defs = _as_dict(comp.get("inputDefinitions"))
    return _as_dict(defs.get("parameters")), _as_dict(defs.get("artifacts"))


def _validate_component(path: str, comp: Any, components: dict[str, Any], executors: dict[str, Any], *,
                        root: bool = False) -> list[str]:
    if not isinstance(comp, dict):
        return [f"{path}: must be an object"]
    errs = [f"{path}.{k}: unknown field" for k in comp if k not in COMPONENT_KEYS]
    for pname, pdef in _input_defs(comp)[0].items():
        ptype = _as_dict(pdef).get("parameterType")
        if ptype not in PARAMETER_TYPES:
            errs.append(f"{path}.inputDefinitions.parameters.{pname}.parameterType: Unsupported value: {ptype!r}")
    has_exec, has_dag = "executorLabel" in comp, "dag" in comp
    if has_exec == has_dag:
        return errs + [f"{path}: exactly one of executorLabel or dag is required"]
    if has_exec:
        if comp["executorLabel"] not in executors:
            errs.append(f"{path}.executorLabel: executor {comp['executorLabel']!r} is not in deploymentSpec.executors")
        return errs
    tasks = _as_dict(comp["dag"]).get("tasks") or {}
    if not isinstance(tasks, dict):
        return errs + [f"{path}.dag.tasks: must be a map of tasks"]
    my_params, my_artifacts = _input_defs(comp)
    graph: dict[str, list[str]] = {}
    for tname, task in tasks.items():
        tpath = f"{path}.dag.tasks.{tname}"
        if not isinstance(task, dict):
            errs.append(f"{tpath}: must be an object")
            continue
        errs += [f"{tpath}.{k}: unknown field" for k in task if k not in TASK_KEYS]
        ref = _as_dict(task.get("componentRef")).get("name")
        if not ref:
            errs.append(f"{tpath}.componentRef.name: Required value")
            continue
        if ref not in components:
            errs.append(f"{tpath}.componentRef.name: component {ref!r} is not defined in components")
            continue
        callee = _as_dict(components[ref])
        cparams, cartifacts = _input_defs(callee)
        inputs = _as_dict(task.get("inputs"))
        iterator = _as_dict(task.get("parameterIterator")) or _as_dict(task.get("artifactIterator"))
        supplied = set(_as_dict(inputs.get("parameters"))) | set(_as_dict(inputs.get("artifacts")))
        if iterator.get("itemInput"):
            supplied.add(iterator["itemInput"])
        for pname, src in _as_dict(inputs.get("parameters")).items():
            fpath = f"{tpath}.inputs.parameters.{pname}"
            if pname not in cparams:
                known = ", ".join(sorted(cparams)) or "none"
                errs.append(f"{fpath}: unknown input {pname!r} of component {ref!r} (its parameters: {known})")
                continue
            errs += _validate_source(fpath, _as_dict(src), PARAM_SOURCES, my_params, tasks, "componentInputParameter")
        for aname, src in _as_dict(inputs.get("artifacts")).items():
            fpath = f"{tpath}.inputs.artifacts.{aname}"
            if aname not in cartifacts:
                known = ", ".join(sorted(cartifacts)) or "none"
                errs.append(f"{fpath}: unknown input {aname!r} of component {ref!r} (its artifacts: {known})")
                continue
            errs += _validate_source(fpath, _as_dict(src), ARTIFACT_SOURCES, my_artifacts, tasks,
                                     "componentInputArtifact")
        for pname, pdef in {**cparams, **cartifacts}.items():
            pdef = _as_dict(pdef)
            if pname not in supplied and not pdef.get("isOptional") and "defaultValue" not in pdef:
                errs.append(f"{tpath}.inputs: input {pname!r} of component {ref!r} is required but not supplied")
        for i, dep in enumerate(task.get("dependentTasks") or []):
            if dep not in tasks:
                errs.append(f"{tpath}.dependentTasks[{i}]: task {dep!r} is not in the same DAG")
        cond = _as_dict(task.get("triggerPolicy")).get("condition")
        if cond:
            try:
                check_syntax(cond)
            except CelError as err:
                errs.append(f"{tpath}.triggerPolicy.condition: {err}")
        graph[tname] = dependencies(task)
    cycle = find_cycle(graph)
    if cycle:
        errs.append(f"{path}.dag.tasks: dependency cycle {' -> '.join(cycle)}")
    if root:
        for pname, pdef in my_params.items():
            if "defaultValue" in _as_dict(pdef) and not _type_ok(_as_dict(pdef).get("parameterType"),
                                                                  pdef["defaultValue"]):
                errs.append(f"root.inputDefinitions.parameters.{pname}.defaultValue: not a "
                            f"{_as_dict(pdef).get('parameterType')}")
    return errs


def _validate_source(fpath: str, src: dict[str, Any], kinds: tuple[str, ...], parent_inputs: dict[str, Any],
                     siblings: dict[str, Any], parent_key: str) -> list[str]:
    present = [k for k in src if k in kinds]
    unknown = [k for k in src if k not in kinds and k != "parameterExpressionSelector"]
    errs = [f"{fpath}.{k}: unknown field" for k in unknown]
    if len(present) != 1:
        return errs + [f"{fpath}: exactly one of {', '.join(kinds)} is required"]
    kind = present[0]
    value = src[kind]
    if kind == parent_key and value not in parent_inputs:
        errs.append(f"{fpath}.{kind}: the enclosing component has no input {value!r}")
    elif kind in ("taskOutputParameter", "taskOutputArtifact", "taskFinalStatus"):
        producer = _as_dict(value).get("producerTask")
        if producer not in siblings:
            errs.append(f"{fpath}.{kind}.producerTask: task {producer!r} is not in the same DAG")
    return errs


def _type_ok(ptype: Any, value: Any) -> bool:
    if ptype in ("NUMBER_DOUBLE", "NUMBER_INTEGER"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok and (ptype == "NUMBER_DOUBLE" or float(value).is_integer())
    return {"STRING": isinstance(value, str), "BOOLEAN": isinstance(value, bool), "LIST": isinstance(value, list),
            "STRUCT": isinstance(value, dict)}.get(str(ptype), True)


def coerce(ptype: Any, value: Any, name: str) -> Any:
    """A parameter value as the component expects it (integers are written as floats in the IR)."""
    if isinstance(value, str) and ptype not in ("STRING", None):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            if ptype == "BOOLEAN" and value.lower() in ("true", "false"):
                value = value.lower() == "true"
    if not _type_ok(ptype, value):
        raise ValueError(f"parameter {name!r}: {value!r} is not a {ptype}")
    if ptype == "NUMBER_INTEGER":
        return int(value)
    if ptype == "NUMBER_DOUBLE":
        return float(value)
    return value


def resolve_parameters(ir: dict[str, Any], given: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The root inputs of a run: given values coerced to their types, defaults for the rest; and the errors."""
    defs = _input_defs(ir["root"])[0]
    errs = [f"parameters.{k}: unknown parameter (the pipeline's parameters: {', '.join(sorted(defs)) or 'none'})"
            for k in given if k not in defs]
    out: dict[str, Any] = {}
    for name, pdef in defs.items():
        pdef = _as_dict(pdef)
        if name in given:
            try:
                out[name] = coerce(pdef.get("parameterType"), given[name], name)
            except ValueError as err:
                errs.append(f"parameters.{name}: {err}")
        elif "defaultValue" in pdef:
            out[name] = coerce(pdef.get("parameterType"), pdef["defaultValue"], name)
        elif not pdef.get("isOptional"):
            errs.append(f"parameters.{name}: Required value (the pipeline has no default for it)")
    return out, errs


# ---- planning ---------------------------------------------------------------------------------------------


@dataclass
class Launch:
    """A leaf task that is ready to run, with everything resolved."""

    id: str
    task: str
    component: str
    executor_label: str
    parameters: dict[str, Any]
    artifacts: dict[str, list[dict[str, Any]]]
    outputs: dict[str, Any]  # the component's outputDefinitions
    cache_key: str | None
    retry: dict[str, Any]


@dataclass
class Node:
    id: str
    phase: str  # Pending, Running, Succeeded, Failed, Skipped
    kind: str  # task, dag, loop, iteration
    message: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    phase: str
    launches: list[Launch]
    nodes: dict[str, Node]
    outputs: dict[str, Any]
    message: str = ""


def cache_key(component: dict[str, Any], executor: dict[str, Any], parameters: dict[str, Any],
              artifacts: dict[str, list[dict[str, Any]]]) -> str:
    """Key = component spec + executor + resolved inputs (artifacts by URI), as the KFP backend keys its cache."""
    doc = {"component": component, "executor": executor, "parameters": parameters,
           "artifacts": {k: [a.get("uri") for a in v] for k, v in artifacts.items()}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(value: Any, default: float = 0.0) -> float:
    if value is None or value == "":
        return default
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"invalid duration {value!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def retry_delay(policy: dict[str, Any], failures: int) -> float:
    """Seconds before the next attempt after `failures` failed ones: duration·factor^(n-1), capped."""
    base = parse_duration(policy.get("backoffDuration"), 0.0)
    factor = float(policy.get("backoffFactor") or 2.0)
    cap = parse_duration(policy.get("backoffMaxDuration"), 3600.0)
    return min(base * factor ** max(failures - 1, 0), cap)


class _Planner:
    def __init__(self, ir: dict[str, Any], states: dict[str, dict[str, Any]], caching: bool) -> None:
        self.ir = ir
        self.components = ir.get("components") or {}
        self.executors = _as_dict(_as_dict(ir.get("deploymentSpec")).get("executors"))
        self.states = states
        self.caching = caching
        self.launches: list[Launch] = []
        self.nodes: dict[str, Node] = {}

    def started(self, prefix: str) -> bool:
        return any(k == prefix or k.startswith(prefix + "/") for k in self.states)

    def dag(self, comp: dict[str, Any], scope: str, params: dict[str, Any],
            artifacts: dict[str, list[dict[str, Any]]]) -> Node:
        tasks: dict[str, Any] = comp["dag"].get("tasks") or {}
        done: dict[str, Node] = {}
        remaining = dict(tasks)
        # Walk in dependency order; a task is looked at once all it waits for have a node this round.
        while remaining:
            progressed = False
            for name, task in list(remaining.items()):
                deps = dependencies(task)
                if any(d not in done for d in deps):
                    continue
                progressed = True
                del remaining[name]
                done[name] = self.task(name, task, scope, params, artifacts, done)
            if not progressed:  # a cycle: validation refuses these, but never loop forever
                for name in remaining:
                    done[name] = Node(_join(scope, name), "Failed", "task", "dependency cycle")
                break
        phases = [n.phase for n in done.values()]
        node_id = scope or "root"
        if any(p in ("Pending", "Running") for p in phases):
            phase = "Running"
        elif "Failed" in phases:
            phase = "Failed"
        else:
            phase = "Succeeded"
        failed = [n for n in done.values() if n.phase == "Failed"]
        message = "; ".join(f"{n.id}: {n.message}" for n in failed if n.message) if phase == "Failed" else ""
        outputs = self.dag_outputs(comp, done) if phase == "Succeeded" else {}
        return Node(node_id, phase, "dag", message, outputs)

    def dag_outputs(self, comp: dict[str, Any], done: dict[str, Node]) -> dict[str, Any]:
        outs = _as_dict(comp["dag"].get("outputs"))
        params: dict[str, Any] = {}
        arts: dict[str, list[dict[str, Any]]] = {}
        for key, spec in _as_dict(outs.get("parameters")).items():
            selectors = []
            if "valueFromParameter" in spec:
                selectors = [spec["valueFromParameter"]]
            elif "valueFromOneof" in spec:
                selectors = spec["valueFromOneof"].get("parameterSelectors") or []
            for sel in selectors:
                node = done.get(sel.get("producerSubtask"))
                if node and node.phase == "Succeeded" and sel.get("outputParameterKey") in node.outputs.get(
                        "parameters", {}):
                    params[key] = node.outputs["parameters"][sel["outputParameterKey"]]
                    break
        for key, spec in _as_dict(outs.get("artifacts")).items():
            for sel in spec.get("artifactSelectors") or []:
                node = done.get(sel.get("producerSubtask"))
                if node and node.phase == "Succeeded" and sel.get("outputArtifactKey") in node.outputs.get(
                        "artifacts", {}):
                    arts[key] = node.outputs["artifacts"][sel["outputArtifactKey"]]
                    break
        return {"parameters": params, "artifacts": arts}

    def task(self, name: str, task: dict[str, Any], scope: str, params: dict[str, Any],
             artifacts: dict[str, list[dict[str, Any]]], done: dict[str, Node]) -> Node:
        node_id = _join(scope, name)
        deps = [done[d] for d in dependencies(task)]
        comp = self.components[task["componentRef"]["name"]]
        strategy = _as_dict(task.get("triggerPolicy")).get("strategy") or "ALL_UPSTREAM_TASKS_SUCCEEDED"
        iterator = _as_dict(task.get("parameterIterator")) or _as_dict(task.get("artifactIterator"))
        kind = "loop" if iterator else ("dag" if "dag" in comp else "task")
        if any(d.phase in ("Pending", "Running") for d in deps):
            return self.record(Node(node_id, "Pending", kind, "waiting for " + ", ".join(
                d.id for d in deps if d.phase in ("Pending", "Running"))))
        if strategy != "ALL_UPSTREAM_TASKS_COMPLETED":
            bad = [d for d in deps if d.phase == "Failed" or (d.phase == "Skipped" and d.message.startswith(
                "upstream"))]
            if bad:
                return self.record(Node(node_id, "Skipped", kind, f"upstream task {bad[0].id} failed"))
        try:
            in_params, in_artifacts = self.resolve_inputs(task, comp, params, artifacts, done)
        except _NotProduced as err:
            return self.record(Node(node_id, "Skipped", kind, str(err)))
        except (ValueError, KeyError, CelError) as err:
            return self.record(Node(node_id, "Failed", kind, f"inputs: {err}"))
        cond = _as_dict(task.get("triggerPolicy")).get("condition")
        if cond:
            try:
                if not evaluate(cond, in_params):
                    return self.record(Node(node_id, "Skipped", kind, f"condition false: {cond}"))
            except CelError as err:
                return self.record(Node(node_id, "Failed", kind, f"triggerPolicy.condition: {err}"))
        if iterator:
            return self.loop(node_id, task, comp, iterator, in_params, in_artifacts)
        if "dag" in comp:
            node = self.dag(comp, node_id, in_params, in_artifacts)
            node.kind = "dag"
            node.id = node_id
            return self.record(node)
        return self.leaf(node_id, name, task, comp, in_params, in_artifacts)

    def loop(self, node_id: str, task: dict[str, Any], comp: dict[str, Any], iterator: dict[str, Any],
             params: dict[str, Any], artifacts: dict[str, list[dict[str, Any]]]) -> Node:
        items_spec = _as_dict(iterator.get("items"))
        if "raw" in items_spec:
            items = json.loads(items_spec["raw"]) if isinstance(items_spec["raw"], str) else items_spec["raw"]
        elif "inputParameter" in items_spec:
            items = params[items_spec["inputParameter"]]
            items = json.loads(items) if isinstance(items, str) else items
        elif "inputArtifact" in items_spec:
            items = artifacts.get(items_spec["inputArtifact"], [])
        else:
            return self.record(Node(node_id, "Failed", "loop", "parameterIterator.items: Required value"))
        if not isinstance(items, list):
            return self.record(Node(node_id, "Failed", "loop", f"loop items are not a list: {items!r}"))
        limit = int(_as_dict(task.get("iteratorPolicy")).get("parallelismLimit") or 0)
        active = 0
        children: list[Node] = []
        for i, item in enumerate(items):
            child_id = f"{node_id}[{i}]"
            if not self.started(child_id) and limit and active >= limit:
                children.append(self.record(Node(child_id, "Pending", "iteration", "waiting for parallelism")))
                continue
            child_params, child_artifacts = dict(params), dict(artifacts)
            if "raw" in items_spec or "inputParameter" in items_spec:
                child_params[iterator["itemInput"]] = item
            else:
                child_artifacts[iterator["itemInput"]] = [item]
            child = self.dag(comp, child_id, child_params, child_artifacts)
            child.kind = "iteration"
            self.record(child)
            children.append(child)
            if child.phase in ("Pending", "Running"):
                active += 1
        phases = [c.phase for c in children]
        if any(p in ("Pending", "Running") for p in phases):
            phase = "Running"
        else:
            phase = "Failed" if "Failed" in phases else "Succeeded"
        outputs: dict[str, Any] = {"parameters": {}, "artifacts": {}}
        if phase == "Succeeded":  # dsl.Collected: each output gathered over the iterations
            for c in children:
                for k, v in c.outputs.get("parameters", {}).items():
                    outputs["parameters"].setdefault(k, []).append(v)
                for k, v in c.outputs.get("artifacts", {}).items():
                    outputs["artifacts"].setdefault(k, []).extend(v)
        message = "; ".join(c.message for c in children if c.phase == "Failed" and c.message)
        return self.record(Node(node_id, phase, "loop", message, outputs))

    def leaf(self, node_id: str, name: str, task: dict[str, Any], comp: dict[str, Any], params: dict[str, Any],
             artifacts: dict[str, list[dict[str, Any]]]) -> Node:
        state = self.states.get(node_id)
        if state is not None:
            phase = state.get("phase", "Running")
            if phase not in TERMINAL:
                phase = "Running"
            return self.record(Node(node_id, phase, "task", state.get("message", ""), state.get("outputs") or {}))
        label = comp["executorLabel"]
        executor = _as_dict(self.executors.get(label))
        enabled = self.caching and bool(_as_dict(task.get("cachingOptions")).get("enableCache"))
        key = None
        if enabled:
            custom = _as_dict(task.get("cachingOptions")).get("cacheKey")
            key = hashlib.sha256(custom.encode()).hexdigest() if custom else cache_key(comp, executor, params,
                                                                                        artifacts)
        self.launches.append(Launch(node_id, name, task["componentRef"]["name"], label, params, artifacts,
                                    _as_dict(comp.get("outputDefinitions")), key,
                                    _as_dict(task.get("retryPolicy"))))
        return self.record(Node(node_id, "Running", "task"))

    def resolve_inputs(self, task: dict[str, Any], comp: dict[str, Any], params: dict[str, Any],
                       artifacts: dict[str, list[dict[str, Any]]], done: dict[str, Node],
                       ) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
        pdefs = _input_defs(comp)[0]
        inputs = _as_dict(task.get("inputs"))
        out_p: dict[str, Any] = {}
        out_a: dict[str, list[dict[str, Any]]] = {}
        for pname, src in _as_dict(inputs.get("parameters")).items():
            value: Any
            if "componentInputParameter" in src:
                key = src["componentInputParameter"]
                if key not in params:
                    if _as_dict(pdefs.get(pname)).get("isOptional"):
                        continue
                    raise _NotProduced(f"input {pname!r}: {key!r} was not produced")
                value = params[key]
            elif "runtimeValue" in src:
                value = _as_dict(src["runtimeValue"]).get("constant")
            elif "taskOutputParameter" in src:
                ref = src["taskOutputParameter"]
                node = done[ref["producerTask"]]
                outs = node.outputs.get("parameters", {})
                if ref["outputParameterKey"] not in outs:
                    if node.phase == "Skipped":
                        raise _NotProduced(f"input {pname!r}: producer {node.id} was skipped")
                    raise ValueError(f"input {pname!r}: task {node.id} has no output {ref['outputParameterKey']!r}")
                value = outs[ref["outputParameterKey"]]
            elif "taskFinalStatus" in src:
                node = done[src["taskFinalStatus"]["producerTask"]]
                value = {"state": "SUCCEEDED" if node.phase == "Succeeded" else "FAILED",
                         "pipelineTaskName": node.id, "pipelineJobResourceName": "",
                         "error": {"code": 0 if node.phase == "Succeeded" else 1, "message": node.message}}
            else:
                continue
            selector = src.get("parameterExpressionSelector")
            if selector:
                value = evaluate(selector.replace("string_value", "inputs.parameter_values['__v']"), {"__v": value})
            ptype = _as_dict(pdefs.get(pname)).get("parameterType")
            out_p[pname] = coerce(ptype, value, pname) if ptype in ("NUMBER_INTEGER", "NUMBER_DOUBLE") else value
        for aname, src in _as_dict(inputs.get("artifacts")).items():
            if "componentInputArtifact" in src:
                key = src["componentInputArtifact"]
                if key not in artifacts:
                    raise _NotProduced(f"input artifact {aname!r}: {key!r} was not produced")
                out_a[aname] = artifacts[key]
            elif "taskOutputArtifact" in src:
                ref = src["taskOutputArtifact"]
                node = done[ref["producerTask"]]
                arts = node.outputs.get("artifacts", {})
                if ref["outputArtifactKey"] not in arts:
                    raise _NotProduced(f"input artifact {aname!r}: producer {node.id} did not produce "
                                       f"{ref['outputArtifactKey']!r} ({node.phase.lower()})")
                out_a[aname] = arts[ref["outputArtifactKey"]]
        for pname, pdef in pdefs.items():  # defaults of the component's own optional inputs
            if pname not in out_p and "defaultValue" in _as_dict(pdef) and pname not in params:
                out_p[pname] = coerce(pdef.get("parameterType"), pdef["defaultValue"], pname)
        return out_p, out_a

    def record(self, node: Node) -> Node:
        self.nodes[node.id] = node
        return node


class _NotProduced(Exception):
    pass


def _join(scope: str, name: str) -> str:
    return f"{scope}/{name}" if scope else name


def plan(ir: dict[str, Any], parameters: dict[str, Any], states: dict[str, dict[str, Any]], *,
         caching: bool = True) -> Plan:
    """What to do next in a run.

    `parameters` are the resolved root inputs (see `resolve_parameters`); `states` maps a leaf task id to its
    record: `{"phase": Running|Succeeded|Failed|Skipped, "outputs": {"parameters": {}, "artifacts": {}},
    "message": ...}`. A leaf with no record and all it waits for done is returned as a `Launch`.
    """
    planner = _Planner(ir, states, caching)
    root = planner.dag(ir["root"], "", parameters, {})
    return Plan(root.phase, planner.launches, planner.nodes, root.outputs, root.message)
