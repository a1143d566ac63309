"""Gateway overhead: the same requests direct to a runtime process and through the Kaip gateway, at fixed
concurrency, in one run. Prints p50/p99 latency of each path, the added latency and the throughput ratio.

    .venv/bin/python benchmarks/gateway.py [--requests 2000] [--concurrency 16 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
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


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
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
            port = {p["metadata"]["labels"]["serving.kserve.io/inferenceservice"]:
                    p["metadata"]["annotations"]["serving.kaip.dev/port"] for p in pods}
            auth = {"Authorization": f"Bearer {token}"}
            print(f"{'model':<6} {'conc':>4} {'direct p50':>10} {'p99':>7} {'gateway p50':>11} {'p99':>7} "
                  f"{'added p50':>9} {'added p99':>9} {'direct rps':>10} {'gw rps':>7} {'ratio':>6}")
            for name, path in (("iris", "/v1/models/iris:predict"), ("echo", "/v1/models/echo:predict")):
                for conc in args.concurrency:
                    d_lat, d_rps = asyncio.run(run(f"http://127.0.0.1:{port[name]}{path}", IRIS, args.requests,
                                                   conc, {}))
                    g_lat, g_rps = asyncio.run(run(f"{url}/serving/default/{name}{path}", IRIS,
                                                   args.requests, conc, auth))
                    print(f"{name:<6} {conc:>4} {pct(d_lat, 50):>8.2f}ms {pct(d_lat, 99):>5.1f}ms "
                          f"{pct(g_lat, 50):>9.2f}ms {pct(g_lat, 99):>5.1f}ms "
                          f"{pct(g_lat, 50) - pct(d_lat, 50):>7.2f}ms "
                          f"{pct(g_lat, 99) - pct(d_lat, 99):>7.1f}ms {d_rps:>10.0f} {g_rps:>7.0f} "
                          f"{g_rps / d_rps:>6.2f}", flush=True)
        finally:
            delete_all(c)


if __name__ == "__main__":
    main()
