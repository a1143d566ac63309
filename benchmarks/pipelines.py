"""The same 10-task pipeline of trivial Python components, run with kfp.local (SubprocessRunner) and with Kaip.

Anchor: `kfp.local` from the real kfp SDK (pinned in the dev extra), which runs each task as a subprocess of
`python -m kfp.dsl.executor_main`, one after another. Kaip runs the compiled IR on a live in-process server: a
PipelineRun whose tasks are Pods (local processes) running the same kfp executor entry point. The pipeline is a
chain (each task adds 1 to the previous output), so wall time / 10 is the per-task overhead of each system; the
components do no work. A rerun with the same inputs is then served from cache on both (kfp.local's opt-in cache).

    .venv/bin/python benchmarks/pipelines.py [--repeat 2]

(No `from __future__ import annotations`: kfp reads the component's annotations as real types.)
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from kfp import compiler, dsl, local

TASKS = 10


@dsl.component(base_image="python:3.11")
def inc(x: int) -> int:
    return x + 1


@dsl.pipeline(name="chain")
def chain(start: int = 0) -> int:
    task = inc(x=start)
    for _ in range(TASKS - 1):
        task = inc(x=task.output)
    return task.output


def run_kfp_local(root: Path, start: int, caching: bool) -> tuple[float, int]:
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), enable_caching=caching)
    t0 = time.perf_counter()
    result = chain(start=start)
    return time.perf_counter() - t0, int(result.output)


def run_kaip(client: Any, ir: dict[str, Any], name: str, start: int) -> tuple[float, int, dict[str, Any]]:
    path = "/apis/kaip.dev/v1alpha1/namespaces/default/pipelineruns"
    body = {"apiVersion": "kaip.dev/v1alpha1", "kind": "PipelineRun", "metadata": {"name": name},
            "spec": {"pipelineSpec": ir, "parameters": {"start": start}}}
    t0 = time.perf_counter()
    resp = client.post(path, json=body)
    resp.raise_for_status()
    while True:
        status = client.get(f"{path}/{name}").json().get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    if status["phase"] != "Succeeded":
        raise RuntimeError(f"kaip run {name} failed: {status.get('message')}")
    return wall, int(status["outputs"]["parameters"]["Output"]), status


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=2, help="cold runs of each system (different inputs)")
    args = parser.parse_args()
    from kaip.testing.live import live_server

    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        ir_path = tmpdir / "chain.yaml"
        compiler.Compiler().compile(chain, str(ir_path))
        ir = yaml.safe_load(ir_path.read_text())
        kfp_cold, kaip_cold = [], []
        for i in range(args.repeat):
            wall, out = run_kfp_local(tmpdir / "kfp", 100 * i, caching=False)
            assert out == 100 * i + TASKS, out
            kfp_cold.append(wall)
        # kfp.local's cache: one run to fill it, then the rerun that is measured.
        run_kfp_local(tmpdir / "kfp-cache", 7, caching=True)
        kfp_cached, out = run_kfp_local(tmpdir / "kfp-cache", 7, caching=True)
        assert out == 7 + TASKS
        with live_server(tmpdir / "home") as server, server.client() as client:
            for i in range(args.repeat):
                wall, out, _ = run_kaip(client, ir, f"cold-{i}", 100 * i)
                assert out == 100 * i + TASKS, out
                kaip_cold.append(wall)
            kaip_cached, out, status = run_kaip(client, ir, "cached", 0)
            assert out == TASKS and all(t.get("cached") for t in status["tasks"].values())
    kfp_wall, kaip_wall = statistics.median(kfp_cold), statistics.median(kaip_cold)
    rows = [
        ("wall time, cold (s, median)", kfp_wall, kaip_wall),
        ("per-task overhead (ms)", 1000 * kfp_wall / TASKS, 1000 * kaip_wall / TASKS),
        ("rerun, same inputs, cached (s)", kfp_cached, kaip_cached),
        ("cached rerun speed-up (cold / cached)", kfp_wall / kfp_cached, kaip_wall / kaip_cached),
    ]
    print(f"{TASKS}-task chain of trivial Python components; {args.repeat} cold runs each")
    print(f"{'metric':<40} {'kfp.local':>12} {'Kaip':>12} {'Kaip/kfp':>10}")
    for name, a, b in rows:
        print(f"{name:<40} {a:>12.3f} {b:>12.3f} {b / a:>10.3f}")
    print(f"cold runs: kfp.local {', '.join(f'{w:.2f}' for w in kfp_cold)} s; "
          f"Kaip {', '.join(f'{w:.2f}' for w in kaip_cold)} s")


if __name__ == "__main__":
    main()
