"""Integration: a real Prometheus (Debian's `prometheus` package, installed by scripts/install-system-deps.sh)
scrapes a live Kaip server with the config `kaip prometheus-config` prints, and its HTTP query API returns Kaip's
serving request counter and the vLLM-named runtime metrics federated from a huggingface replica."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import serving_fixtures  # noqa: E402
from kaip.cli.main import app as cli
from kaip.testing.live import LiveServer, free_port
from serving_fixtures import apply_isvc, build_tiny_llm, isvc_doc, wait_for, wait_ready

serving_server = serving_fixtures.serving_server  # the module's shared live server (a fixture)
pytestmark = pytest.mark.slow


def scrape_config(server: LiveServer) -> str:
    """What `kaip prometheus-config` prints for this server, with a one-second scrape interval."""
    result = CliRunner().invoke(cli, ["prometheus-config", "--interval", "1s"],
                                env={"KAIP_SERVER": server.url, "KAIP_TOKEN": server.token})
    assert result.exit_code == 0, result.output
    return result.output


def query(prom: str, promql: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{prom}/api/v1/query", params={"query": promql}, timeout=5)
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["status"] == "success", doc
    return list(doc["data"]["result"])


@pytest.fixture(scope="module")
def prometheus(serving_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: run scripts/install-system-deps.sh (Debian package prometheus)"
    folder: Path = tmp_path_factory.mktemp("prometheus")
    config = scrape_config(serving_server)
    (folder / "prometheus.yml").write_text(config)
    port = free_port()
    log = open(folder / "log", "wb")  # noqa: SIM115 - closed when Prometheus stops
    proc = subprocess.Popen([binary, f"--config.file={folder / 'prometheus.yml'}",
                             f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(up, 15, what="Prometheus to be ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_printed_config_targets_the_server(serving_server: LiveServer) -> None:
    config = scrape_config(serving_server)
    host = serving_server.url.split("://", 1)[1]
    assert "job_name: kaip" in config and f'targets: ["{host}"]' in config and "metrics_path: /metrics" in config


def test_prometheus_scrapes_serving_and_runtime_metrics(serving_server: LiveServer, prometheus: str,
                                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = build_tiny_llm(tmp_path_factory.mktemp("models") / "tiny-llm")
    with serving_server.client() as c:
        apply_isvc(c, isvc_doc("tiny", {"model": {"modelFormat": {"name": "huggingface"}, "storageUri": str(folder),
                                                  "args": ["--max_model_len=128"]}}))
        wait_ready(c, "tiny", timeout=60)
        generated = 0
        for prompt in ("The clinic opens", "hello", "Models are served", "A patient asks"):
            resp = c.post("/serving/default/tiny/openai/v1/completions",
                          json={"model": "tiny", "prompt": prompt, "max_tokens": 4, "temperature": 0})
            assert resp.status_code == 200, resp.text
            generated += resp.json()["usage"]["completion_tokens"]
    assert generated > 0

    # The scrape target is up, and a scrape after the requests carries the counts.
    wait_for(lambda: [r for r in query(prometheus, 'up{job="kaip"}') if r["value"][1] == "1"], 15,
             what="the kaip target to be up")
    requests = 'sum(kaip_serving_requests_total{namespace="default",inferenceservice="tiny",protocol="openai",' \
               'code="200"})'
    wait_for(lambda: [r for r in query(prometheus, requests) if r["value"][1] == "4"], 15,
             what="Prometheus to see 4 successful requests")
    success = 'sum(vllm:request_success_total{inferenceservice="tiny",model_name="tiny"})'
    wait_for(lambda: [r for r in query(prometheus, success) if r["value"][1] == "4"], 15,
             what="Prometheus to see the runtime's 4 finished requests")
    tokens = query(prometheus, 'vllm:generation_tokens_total{inferenceservice="tiny",model_name="tiny"}')
    assert len(tokens) == 1 and float(tokens[0]["value"][1]) == generated
    assert tokens[0]["metric"]["job"] == "kaip" and tokens[0]["metric"]["namespace"] == "default"
    running = query(prometheus, 'vllm:num_requests_running{inferenceservice="tiny",model_name="tiny"}')
    assert [r["value"][1] for r in running] == ["0"]
