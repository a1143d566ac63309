"""The flagship example's files: the committed pipeline is what pipeline.py compiles to, and every manifest is
accepted by the server (a dry-run apply of the whole folder, as the GitOps sync applies it)."""

from __future__ import annotations

import sys
from pathlib import Path

from typer.testing import CliRunner

from kaip.cli.main import app
from kaip.testing.live import LiveServer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "healthcare-chatbot"


def test_committed_pipeline_is_what_pipeline_py_compiles_to() -> None:
    sys.path.insert(0, str(EXAMPLE))
    try:
        import demo
    finally:
        sys.path.remove(str(EXAMPLE))
    committed = (EXAMPLE / "manifests" / "60-pipeline.yaml").read_text()
    assert committed == demo.pipeline_manifest(), \
        "manifests/60-pipeline.yaml is stale: run python examples/healthcare-chatbot/demo.py --compile-pipeline"


def test_every_manifest_is_accepted(server: LiveServer) -> None:
    env = {"KAIP_SERVER": server.url, "KAIP_TOKEN": server.token, "KAIP_HOME": "/nonexistent"}
    runner = CliRunner()
    for ns in ("healthcare", "argocd"):  # dry-run objects are checked against their namespace
        assert runner.invoke(app, ["create", "namespace", ns], env=env).exit_code == 0
    for target in (EXAMPLE / "manifests", EXAMPLE / "application.yaml"):
        result = runner.invoke(app, ["apply", "-f", str(target), "--dry-run"], env=env)
        assert result.exit_code == 0, result.output
    out = runner.invoke(app, ["apply", "-f", str(EXAMPLE / "manifests"), "--dry-run"], env=env).output
    for kind in ("clusterqueue", "localqueue", "knowledgebase", "guardrailsorchestrator", "inferenceservice",
                 "pipeline", "recurringrun", "trigger"):
        assert f"{kind}" in out.lower(), out
