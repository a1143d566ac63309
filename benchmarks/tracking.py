"""Tracking throughput: the same `mlflow` client workload against Kaip and against a real `mlflow server`.

    .venv/bin/python benchmarks/tracking.py            # the full workload (several minutes, most of it MLflow)
    .venv/bin/python benchmarks/tracking.py --scale 0.1

Workloads (the client is the real `mlflow` package, sequential, as a training script logs):
  (a) 100 runs x 1,000 metric points, each run one `log_batch` of 1,000 metrics  -> metrics/s
  (b) 5,000 single `log_metric` calls on one run                                  -> ms per call
  (c) `search_runs` with a filter over an experiment of 1,000 runs                -> ms per search

Both servers run as separate processes on this machine with SQLite: Kaip via `kaip up`, MLflow via
`mlflow server --backend-store-uri sqlite:///...` from its own virtual environment
(benchmarks/.mlflow-venv, created on first use with `pip install mlflow==3.17.2`), so that the project's
own dependencies stay light.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
MLFLOW_VENV = ROOT / "benchmarks" / ".mlflow-venv"
MLFLOW_VERSION = "3.17.2"
FILTER = "metrics.loss < 0.05 and params.lr = '0.01'"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up within {timeout:.0f} s")


def ensure_mlflow_venv() -> Path:
    mlflow_bin = MLFLOW_VENV / "bin" / "mlflow"
    if not mlflow_bin.exists():
        print(f"creating {MLFLOW_VENV} with mlflow=={MLFLOW_VERSION} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(MLFLOW_VENV)], check=True)
        subprocess.run([str(MLFLOW_VENV / "bin" / "pip"), "install", "-q", f"mlflow=={MLFLOW_VERSION}"], check=True)
    return mlflow_bin


@contextmanager
def process(cmd: list[str], health: str, env: dict[str, str] | None = None, log: Path | None = None) -> Iterator[None]:
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            start_new_session=True)
    try:
        wait_http(health)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()  # type: ignore[union-attr]


@contextmanager
def kaip_server(workdir: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    home = workdir / "kaip-home"
    env = {"KAIP_HOME": str(home), "KAIP_LOG_LEVEL": "WARNING"}
    env.pop("KAIP_DATABASE_URL", None)
    with process([str(ROOT / ".venv" / "bin" / "kaip"), "up", "--port", str(port), "--home", str(home)],
                 f"http://127.0.0.1:{port}/readyz", env, workdir / "kaip.log"):
        creds = json.loads((home / "credentials").read_text())
        yield f"http://127.0.0.1:{port}", creds["token"]


@contextmanager
def mlflow_server(workdir: Path) -> Iterator[tuple[str, str]]:
    mlflow_bin = ensure_mlflow_venv()
    port = free_port()
    cmd = [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
           "--artifacts-destination", str(workdir / "mlartifacts")]
    with process(cmd, f"http://127.0.0.1:{port}/health", None, workdir / "mlflow.log"):
        yield f"http://127.0.0.1:{port}", ""


def run_workload(url: str, token: str, scale: float) -> dict[str, float]:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    if token:
        os.environ["MLFLOW_TRACKING_TOKEN"] = token
    else:
        os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
    client = MlflowClient(tracking_uri=url)
    results: dict[str, float] = {}
    stamp = int(time.time() * 1000)

    # (a) runs x 1,000 metric points via log_batch
    n_runs = max(1, int(100 * scale))
    exp = client.create_experiment("bench-batch")
    started = time.perf_counter()
    for _ in range(n_runs):
        run_id = client.create_run(exp).info.run_id
        client.log_batch(run_id, metrics=[Metric("loss", 1.0 / (s + 1), stamp + s, s) for s in range(1000)])
    elapsed = time.perf_counter() - started
    results["a_metrics_per_s"] = n_runs * 1000 / elapsed
    results["a_seconds"] = elapsed

    # (b) single log_metric calls
    n_calls = max(10, int(5000 * scale))
    run_id = client.create_run(client.create_experiment("bench-single")).info.run_id
    started = time.perf_counter()
    for s in range(n_calls):
        client.log_metric(run_id, "loss", 1.0 / (s + 1), timestamp=stamp + s, step=s)
    elapsed = time.perf_counter() - started
    results["b_ms_per_call"] = elapsed / n_calls * 1000
    results["b_seconds"] = elapsed

    # (c) search_runs with a filter over 1,000 runs (setup not timed)
    n_search_runs = max(20, int(1000 * scale))
    exp_c = client.create_experiment("bench-search")
    for i in range(n_search_runs):
        rid = client.create_run(exp_c).info.run_id
        client.log_batch(rid, metrics=[Metric("loss", (i % 100) / 100, stamp, 0), Metric("acc", 0.5, stamp, 0)],
                         params=[Param("lr", "0.01" if i % 2 == 0 else "0.1"), Param("batch", "32")])
    expected = len([i for i in range(n_search_runs) if i % 2 == 0 and (i % 100) / 100 < 0.05])
    found = client.search_runs([exp_c], FILTER, max_results=1000)
    assert len(found) == expected, (len(found), expected)
    repeats = 20
    started = time.perf_counter()
    for _ in range(repeats):
        client.search_runs([exp_c], FILTER, max_results=1000)
    elapsed = time.perf_counter() - started
    results["c_ms_per_search"] = elapsed / repeats * 1000
    results["c_matches"] = expected
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="scale every workload (1.0 = as specified)")
    parser.add_argument("--kaip-only", action="store_true", help="do not start an MLflow server")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    workdir = Path(tempfile.mkdtemp(prefix="kaip-bench-tracking-"))
    try:
        targets: list[tuple[str, Callable[[Path], object]]] = [("kaip", kaip_server)]
        if not args.kaip_only:
            targets.append(("mlflow", mlflow_server))
        results: dict[str, dict[str, float]] = {}
        for name, starter in targets:
            sub = workdir / name
            sub.mkdir()
            with starter(sub) as (url, token):  # type: ignore[attr-defined]
                print(f"[{name}] {url}: running the workload (scale {args.scale}) ...", flush=True)
                results[name] = run_workload(url, token, args.scale)
                print(f"[{name}] {json.dumps({k: round(v, 2) for k, v in results[name].items()})}", flush=True)
        rows = [("(a) log_batch, metrics/s", "a_metrics_per_s", True),
                ("(b) log_metric, ms/call", "b_ms_per_call", False),
                ("(c) search_runs over runs, ms", "c_ms_per_search", False)]
        print()
        print(f"{'workload':<34}{'kaip':>12}{'mlflow':>12}{'ratio':>10}")
        for label, key, higher_better in rows:
            k = results["kaip"][key]
            m = results.get("mlflow", {}).get(key)
            ratio = "" if m is None else f"{(k / m if higher_better else m / k):.1f}x"
            print(f"{label:<34}{k:>12.1f}{'' if m is None else f'{m:.1f}':>12}{ratio:>10}")
        print("(ratio: how many times faster Kaip is)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
