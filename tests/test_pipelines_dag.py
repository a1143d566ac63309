"""The pure pipeline planner, on IR compiled by the real kfp SDK: order, parameters, conditions, loops, exit
handlers, failures, cache keys, validation messages; plus the CEL subset and retry backoff.

No `from __future__ import annotations` here: kfp reads the components' annotations as real types."""

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp import compiler, dsl

from kaip.pipelines.cel import CelError, evaluate
from kaip.pipelines.dag import Plan, plan, resolve_parameters, retry_delay, validate_ir

IMAGE = "python:3.11"


@dsl.component(base_image=IMAGE)
def add(a: int, b: int) -> int:
    return a + b


@dsl.component(base_image=IMAGE)
def score(x: float) -> float:
    return x


@dsl.component(base_image=IMAGE)
def show(x: float):
    print(x)


@dsl.component(base_image=IMAGE)
def fail():
    raise SystemExit(3)


@dsl.pipeline(name="arith")
def arith(a: int = 1, b: int = 2):
    first = add(a=a, b=b)
    add(a=first.output, b=10)


@dsl.pipeline(name="branches")
def branches(x: float = 0.9, threshold: float = 0.5):
    s = score(x=x)
    with dsl.If(s.output > threshold):
        show(x=1.0)
    with dsl.Elif(s.output > 0.2):
        show(x=2.0)
    with dsl.Else():
        show(x=3.0)


@dsl.pipeline(name="loop")
def loop():
    with dsl.ParallelFor([0.1, 0.2, 0.3, 0.4], parallelism=2) as lr:
        score(x=lr)


@dsl.pipeline(name="exit-handler")
def with_exit():
    cleanup = show(x=0.0)
    with dsl.ExitHandler(cleanup):
        f = fail()
        show(x=1.0).after(f)


def compile_ir(fn: Any, tmp_path: Path) -> dict[str, Any]:
    target = tmp_path / f"{fn.name}.yaml"
    compiler.Compiler().compile(fn, str(target))
    return yaml.safe_load(target.read_text())


def run_to_end(ir: dict[str, Any], params: dict[str, Any], outputs: dict[str, Any],
               failing: tuple[str, ...] = ()) -> tuple[Plan, list[list[str]]]:
    """Drive `plan` as the controller does: each launch ends with the given outputs (by component)."""
    resolved, errs = resolve_parameters(ir, params)
    assert errs == []
    states: dict[str, dict[str, Any]] = {}
    waves = []
    for _ in range(50):
        result = plan(ir, resolved, states)
        if not result.launches:
            return result, waves
        waves.append(sorted(launch.id for launch in result.launches))
        for launch in result.launches:
            fn = launch.component.removeprefix("comp-").rsplit("-", 1)[0] if launch.component[-1].isdigit() \
                else launch.component.removeprefix("comp-")
            value = outputs.get(fn, lambda p: None)(launch.parameters)
            failed = fn in failing
            states[launch.id] = {"phase": "Failed" if failed else "Succeeded", "message": "boom" if failed else "",
                                 "outputs": {"parameters": {} if value is None else {"Output": value}}}
    raise AssertionError("the plan did not converge")


def test_parameters_flow_through_task_outputs(tmp_path: Path) -> None:
    ir = compile_ir(arith, tmp_path)
    assert validate_ir(ir) == []
    seen: list[dict[str, Any]] = []

    def do_add(p: dict[str, Any]) -> int:
        seen.append(p)
        return p["a"] + p["b"]
    result, waves = run_to_end(ir, {"a": "5"}, {"add": do_add})
    assert result.phase == "Succeeded"
    assert waves == [["add"], ["add-2"]]
    assert seen == [{"a": 5, "b": 2}, {"a": 7, "b": 10}]  # "5" coerced to int; the default for b; a task output


def test_if_elif_else_takes_exactly_one_branch(tmp_path: Path) -> None:
    ir = compile_ir(branches, tmp_path)
    for x, taken in ((0.9, "condition-2"), (0.3, "condition-3"), (0.1, "condition-4")):
        result, waves = run_to_end(ir, {"x": x}, {"score": lambda p: p["x"], "show": lambda p: None})
        assert result.phase == "Succeeded"
        shows = [w for wave in waves for w in wave if "show" in w]
        assert len(shows) == 1 and shows[0].startswith(f"condition-branches-1/{taken}/"), (x, shows)
        skipped = {k for k, n in result.nodes.items() if n.phase == "Skipped"}
        assert len(skipped) == 2 and f"condition-branches-1/{taken}" not in skipped


def test_parallel_for_honours_parallelism(tmp_path: Path) -> None:
    ir = compile_ir(loop, tmp_path)
    result, waves = run_to_end(ir, {}, {"score": lambda p: p["x"]})
    assert result.phase == "Succeeded"
    assert [len(w) for w in waves] == [2, 2]
    assert waves[0] == ["for-loop-2[0]/score", "for-loop-2[1]/score"]
    resolved, _ = resolve_parameters(ir, {})
    first = plan(ir, resolved, {})
    assert [launch.parameters for launch in first.launches] == [{"x": 0.1}, {"x": 0.2}]
    # One iteration ends: exactly one more may start, never a third at once.
    states = {"for-loop-2[0]/score": {"phase": "Succeeded", "outputs": {"parameters": {"Output": 0.1}}},
              "for-loop-2[1]/score": {"phase": "Running"}}
    nxt = plan(ir, resolved, states)
    assert [launch.id for launch in nxt.launches] == ["for-loop-2[2]/score"]


def test_exit_handler_runs_after_a_failure_and_dependents_are_skipped(tmp_path: Path) -> None:
    ir = compile_ir(with_exit, tmp_path)
    result, waves = run_to_end(ir, {}, {}, failing=("fail",))
    assert waves == [["exit-handler-1/fail"], ["show"]]
    assert result.phase == "Failed"
    assert result.nodes["exit-handler-1/show-2"].phase == "Skipped"
    assert "upstream task exit-handler-1/fail failed" in result.nodes["exit-handler-1/show-2"].message
    assert "exit-handler-1/fail: boom" in result.message


def test_cache_key_is_component_and_inputs(tmp_path: Path) -> None:
    ir = compile_ir(arith, tmp_path)
    keys = [plan(ir, resolve_parameters(ir, p)[0], {}).launches[0].cache_key for p in ({}, {}, {"a": 3})]
    assert keys[0] == keys[1] and keys[0] != keys[2]
    changed = copy.deepcopy(ir)
    changed["deploymentSpec"]["executors"]["exec-add"]["container"]["command"][-1] += "\n# edited\n"
    assert plan(changed, resolve_parameters(changed, {})[0], {}).launches[0].cache_key != keys[0]
    assert plan(ir, resolve_parameters(ir, {})[0], {}, caching=False).launches[0].cache_key is None


def test_validation_names_the_task_and_field(tmp_path: Path) -> None:
    ir = compile_ir(arith, tmp_path)
    bad = copy.deepcopy(ir)
    bad["root"]["dag"]["tasks"]["add"]["inputs"]["parameters"]["c"] = {"runtimeValue": {"constant": 1}}
    bad["root"]["dag"]["tasks"]["add-2"]["componentRef"]["name"] = "comp-nope"
    bad["root"]["dag"]["tasks"]["add"]["retries"] = 3
    errs = validate_ir(bad)
    assert "root.dag.tasks.add.inputs.parameters.c: unknown input 'c' of component 'comp-add' " \
           "(its parameters: a, b)" in errs
    assert "root.dag.tasks.add-2.componentRef.name: component 'comp-nope' is not defined in components" in errs
    assert "root.dag.tasks.add.retries: unknown field" in errs


def test_cycles_are_refused_with_their_path(tmp_path: Path) -> None:
    ir = compile_ir(arith, tmp_path)
    ir["root"]["dag"]["tasks"]["add"]["dependentTasks"] = ["add-2"]
    assert validate_ir(ir) == ["root.dag.tasks: dependency cycle add -> add-2 -> add"]


def test_run_parameters_are_checked() -> None:
    ir = {"root": {"inputDefinitions": {"parameters": {
        "n": {"parameterType": "NUMBER_INTEGER"}, "lr": {"parameterType": "NUMBER_DOUBLE", "defaultValue": 0.1}}}}}
    assert resolve_parameters(ir, {"n": "3"}) == ({"n": 3, "lr": 0.1}, [])
    _, errs = resolve_parameters(ir, {"n": "x", "epochs": 2})
    assert errs == ["parameters.epochs: unknown parameter (the pipeline's parameters: lr, n)",
                    "parameters.n: parameter 'n': 'x' is not a NUMBER_INTEGER"]
    assert resolve_parameters(ir, {})[1] == ["parameters.n: Required value (the pipeline has no default for it)"]


def test_cel_subset() -> None:
    p = {"pipelinechannel--a": 0.9, "pipelinechannel--t": 0.5, "pipelinechannel--s": "heads"}
    assert evaluate("inputs.parameter_values['pipelinechannel--a'] > inputs.parameter_values['pipelinechannel--t']", p)
    assert not evaluate("!(inputs.parameter_values['pipelinechannel--a'] > 0.2) && true", p)
    assert evaluate("inputs.parameter_values['pipelinechannel--s'] == 'heads' || false", p)
    assert evaluate("int(inputs.parameter_values['pipelinechannel--a']) == 0", p)
    with pytest.raises(CelError, match="unknown input 'pipelinechannel--zz'"):
        evaluate("inputs.parameter_values['pipelinechannel--zz'] > 1", p)
    with pytest.raises(CelError):
        evaluate("size(x) > 1", p)


def test_retry_backoff() -> None:
    policy = {"maxRetryCount": 3, "backoffDuration": "2s", "backoffFactor": 2.0, "backoffMaxDuration": "5s"}
    assert [retry_delay(policy, n) for n in (1, 2, 3)] == [2.0, 4.0, 5.0]
    assert retry_delay({"backoffDuration": "0s", "backoffFactor": 2.0}, 4) == 0.0


def test_unsupported_conditions_are_refused_on_admission(tmp_path: Path) -> None:
    ir = compile_ir(branches, tmp_path)
    tasks = ir["components"]["comp-condition-branches-1"]["dag"]["tasks"]
    tasks["condition-2"]["triggerPolicy"]["condition"] = "size(inputs.parameter_values['x']) > 1"
    assert validate_ir(ir) == [
        "components.comp-condition-branches-1.dag.tasks.condition-2.triggerPolicy.condition: unsupported term "
        "'size' in condition \"size(inputs.parameter_values['x']) > 1\""]
