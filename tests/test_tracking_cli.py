"""`kaip experiments|runs|models|lineage` against a live server."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from kaip.cli.main import app
from kaip.testing.live import LiveServer
from kaip.tracking.access import AllowAll
from kaip.tracking.registry import RegistryService
from kaip.tracking.service import TrackingService

ADMIN = AllowAll("admin")


def test_cli_lists_compares_and_prints_lineage(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAIP_SERVER", server.url)
    monkeypatch.setenv("KAIP_TOKEN", server.token)
    store = server.server.store
    svc, reg = TrackingService(store), RegistryService(store)
    exp = svc.create_experiment(ADMIN, "default", "cli-exp")
    runs = []
    for lr, loss in (("0.01", 0.25), ("0.1", 0.75)):
        rid = svc.create_run(ADMIN, "default", {"experiment_id": exp, "run_name": f"lr-{lr}"})["info"]["run_id"]
        svc.log_batch(ADMIN, rid, metrics=[{"key": "loss", "value": loss, "timestamp": 1, "step": 9}],
                      params=[{"key": "lr", "value": lr}, {"key": "epochs", "value": "3"}],
                      tags=[{"key": "mlflow.source.git.commit", "value": "0123456789abcdef"}])
        runs.append(rid)
    svc.log_inputs(ADMIN, runs[0], [{"dataset": {"name": "support-chats", "digest": "5eed5eed", "source_type": "local",
                                                 "source": "/data/chats.jsonl"}}])
    reg.create_model(ADMIN, "default", "support-bot")
    reg.create_version(ADMIN, "default", {"name": "support-bot", "run_id": runs[0],
                                          "source": f"mlflow-artifacts:/{exp}/{runs[0]}/artifacts/model"})
    cli = CliRunner()

    def kaip(*args: str) -> str:
        result = cli.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    assert "cli-exp" in kaip("experiments")
    listed = kaip("runs", "list", "cli-exp", "--filter", "metrics.loss < 0.5")
    assert runs[0] in listed and runs[1] not in listed and "0.25" in listed
    compared = kaip("runs", "compare", *runs).splitlines()
    assert any(line.startswith("param.lr *") and "0.01" in line and "0.1" in line for line in compared)
    assert any(line.startswith("param.epochs ") and "*" not in line for line in compared)
    assert any(line.startswith("metric.loss *") for line in compared)
    assert "support-chats" in kaip("runs", "get", runs[0])
    assert kaip("models", "alias", "support-bot", "champion", "1").strip() == "support-bot@champion -> version 1"
    assert "champion=1" in kaip("models", "list")
    assert "champion" in kaip("models", "versions", "support-bot")
    assert "Run:" in kaip("models", "get", "support-bot@champion")

    tree = kaip("lineage", "models:/support-bot/1").splitlines()
    assert tree[0].startswith("model version models:/support-bot/1") and "aliases=champion" in tree[0]
    assert tree[1].startswith("└── made by: run lr-0.01") and "lr=0.01" in tree[1] and "commit=0123456789ab" in tree[1]
    assert "trained on: dataset support-chats  digest=5eed5eed  source=/data/chats.jsonl" in tree[2]
    graph = json.loads(kaip("lineage", "models:/support-bot@champion", "-o", "json"))
    assert {n["kind"] for n in graph["nodes"]} == {"modelversion", "run", "dataset"}

    result = cli.invoke(app, ["runs", "get", "f" * 32])
    assert result.exit_code == 1 and f"Run with id={'f' * 32} not found" in result.output
    result = cli.invoke(app, ["lineage", "models:/nope/1"])
    assert result.exit_code == 1 and "nope" in result.output
