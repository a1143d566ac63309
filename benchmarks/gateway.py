"""Gateway overhead: the same requests direct to a runtime process and through the Kaip gateway, at fixed
concurrency, in one run. Prints p50/p99 latency of each path, the added latency and the throughput ratio, and the
CPU time each process spent per request (gateway, runtime, load generator) — on a small machine the three share
the cores, so the ratio is bounded by their sum. With `--repeat N` each pair runs N times, alternating, and the
medians are printed.

The load generator is `wrk` (C, Debian's `wrk` package; one thread, one connection per concurrent request, a
closed loop), as proxies are usually measured: a Python load generator spends ~100 µs of CPU a request, which on
two cores takes the time the gateway and the runtime need. `--client aiohttp` uses aiohttp instead (fixed request
count, no extra package).

    .venv/bin/python benchmarks/gateway.py [--client wrk|aiohttp] [--seconds 5] [--requests 10000]
        [--concurrency 16 64] [--repeat 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from kaip.testing.process import kaip_server_process  # noqa: E402
from serving_fixtures import apply_isvc, build_iris_model, delete_all, isvc_doc, wait_ready  # noqa: E402

IRIS = {"instances": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}


async def run(url: str, body: dict, n: int, concurrency: int, headers: dict[str, str]) -> tuple[list[float], float]:
    """Closed-loop load at fixed concurrency. The generator is aiohttp: httpx's own per-request cost (about 1 ms
    here) would otherwise dominate both paths."""
    latencies: list[float] = []
    data = json.dumps(body).encode()
    headers = {**headers, "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as client:
        for _ in range(20):  # warm connections
            async with client.post(url, data=data) as r:
                r.raise_for_status()
                await r.read()
        queue = iter(range(n))

        async def worker() -> None:
            for _ in queue:
                t = time.perf_counter()
                async with client.post(url, data=data) as r:
                    await r.read()
                    latencies.append(time.perf_counter() - t)
                    r.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, n / elapsed


WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
"""
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def run_wrk(url: str, body: dict, seconds: int, concurrency: int, headers: dict[str, str]) -> dict[str, float]:
    """One closed-loop `wrk` run: p50/p99 in ms, requests/s, requests, and wrk's own CPU µs a request."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(WRK_SCRIPT.format(body=json.dumps(body)))
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", fh.name]
    for key, value in headers.items():
        cmd += ["-H", f"{key}: {value}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(fh.name)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw failed requests:\n{out}")
    latency = {q: float(v) * UNITS[u] for q, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)$", out, re.M)}
    n = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"p50": latency["50"], "p99": latency["99"], "rps": rps, "n": n, "client": cpu / n * 1e6}


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far, from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measured(args: argparse.Namespace, url: str, conc: int, headers: dict[str, str],
             pids: dict[str, int]) -> dict[str, float]:
    """One closed-loop run: latency percentiles, throughput and microseconds of CPU per request per process."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    if args.client == "wrk":
        out = run_wrk(url, IRIS, args.seconds, conc, headers)
    else:
        client = own_cpu()
        lat, rps = asyncio.run(run(url, IRIS, args.requests, conc, headers))
        out = {"p50": pct(lat, 50), "p99": pct(lat, 99), "rps": rps, "n": args.requests,
               "client": (own_cpu() - client) / args.requests * 1e6}
    out.update({name: (cpu_seconds(pid) - before[name]) / out["n"] * 1e6 for name, pid in pids.items()})
    return out


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", choices=["wrk", "aiohttp"], default="wrk")
    parser.add_argument("--seconds", type=int, default=5, help="length of a wrk run (whole seconds, as wrk takes it)")
    parser.add_argument("--requests", type=int, default=10000, help="requests in an aiohttp run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each pair; medians are printed")
    args = parser.parse_args()
    if args.client == "wrk" and shutil.which("wrk") is None:
        parser.error("wrk is not installed: 'apt-get install wrk' (Debian), or --client aiohttp")
    tmp = Path(tempfile.mkdtemp())
    model = build_iris_model(tmp / "iris")
    # The server runs in its own process, as in production: the load generator must not share its interpreter.
    with kaip_server_process(home=tmp / "home") as (url, token), \
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        try:
            apply_isvc(c, isvc_doc("iris", {"sklearn": {"storageUri": str(model)}}))
            apply_isvc(c, isvc_doc("echo", {"containers": [{"name": "kserve-container", "command": [
                "python", "-m", "kaip.serving.runtimes.echo"]}]}))
            for name in ("iris", "echo"):
                wait_ready(c, name)
            pods = c.get("/api/v1/namespaces/default/pods").json()["items"]
            port, pid = {}, {}
            for p in pods:
                isvc = p["metadata"]["labels"]["serving.kserve.io/inferenceservice"]
                port[isvc] = p["metadata"]["annotations"]["serving.kaip.dev/port"]
                container_id = p["status"]["containerStatuses"][0]["containerID"]  # process://PID@ticks
                shim = int(container_id.removeprefix("process://").partition("@")[0])  # the executor's shim
                with open(f"/proc/{shim}/task/{shim}/children") as fh:
                    pid[isvc] = int(fh.read().split()[0])  # the runtime itself
                with open(f"/proc/{shim}/stat") as fh:
                    server_pid = int(fh.read().rsplit(")", 1)[1].split()[1])  # the shim's parent: the Kaip server
            auth = {"Authorization": f"Bearer {token}"}
            print(f"{'model':<6} {'conc':>4} {'direct p50':>10} {'p99':>7} {'gateway p50':>11} {'p99':>7} "
                  f"{'added p50':>9} {'added p99':>9} {'direct rps':>10} {'gw rps':>7} {'ratio':>6}   "
                  "CPU µs/request: gateway, runtime (direct/via), client (direct/via)")
            for name, path in (("iris", "/v1/models/iris:predict"), ("echo", "/v1/models/echo:predict")):
                warm = argparse.Namespace(**vars(args) | {"seconds": 1, "requests": 1000})
                measured(warm, f"http://127.0.0.1:{port[name]}{path}", 16, {}, {})
                measured(warm, f"{url}/serving/default/{name}{path}", 16, auth, {})
                for conc in args.concurrency:
                    direct, via = [], []
                    for _ in range(args.repeat):
                        direct.append(measured(args, f"http://127.0.0.1:{port[name]}{path}", conc, {},
                                               {"runtime": pid[name]}))
                        via.append(measured(args, f"{url}/serving/default/{name}{path}", conc, auth,
                                            {"runtime": pid[name], "gateway": server_pid}))
                    ratios = [g["rps"] / d["rps"] for d, g in zip(direct, via, strict=True)]
                    d50, d99, g50, g99 = (median(direct, "p50"), median(direct, "p99"), median(via, "p50"),
                                          median(via, "p99"))
                    print(f"{name:<6} {conc:>4} {d50:>8.2f}ms {d99:>5.1f}ms {g50:>9.2f}ms {g99:>5.1f}ms "
                          f"{statistics.median(g['p50'] - d['p50'] for d, g in zip(direct, via, strict=True)):>7.2f}ms "
                          f"{statistics.median(g['p99'] - d['p99'] for d, g in zip(direct, via, strict=True)):>7.1f}ms "
                          f"{median(direct, 'rps'):>10.0f} {median(via, 'rps'):>7.0f} "
                          f"{statistics.median(ratios):>6.2f}   {median(via, 'gateway'):>5.0f}, "
                          f"{median(direct, 'runtime'):.0f}/{median(via, 'runtime'):.0f}, "
                          f"{median(direct, 'client'):.0f}/{median(via, 'client'):.0f}", flush=True)
        finally:
            delete_all(c)


if __name__ == "__main__":
    main()
