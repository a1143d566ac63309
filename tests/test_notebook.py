"""The example notebook, executed headless (nbclient, a real IPython kernel) against a live server: every cell
succeeds, and its outputs show the objects a data scientist expects — a registered base model, a completed
fine-tuning job with its registered version, the run's loss curve, the model with its lineage, a ready endpoint
and the fine-tuned model's answers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from kaip.testing.live import live_server

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "notebooks" / "fine-tune-and-deploy.ipynb"

pytestmark = pytest.mark.slow


def text_of(cell: Any) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        for mime in ("text/plain", "text/html"):
            if mime in out.get("data", {}):
                parts.append(out["data"][mime])
    return "\n".join(parts)


def test_fine_tune_and_deploy_notebook_runs_headless(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    with live_server(tmp_path / "home", bookmark_seconds=0.5) as live:
        monkeypatch.setenv("KAIP_SERVER", live.url)
        monkeypatch.setenv("KAIP_TOKEN", live.token)
        monkeypatch.setenv("KAIP_NAMESPACE", "default")
        monkeypatch.setenv("KAIP_HOME", str(tmp_path / "client-home"))
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute(env=dict(os.environ))
        outputs = [text_of(c) for c in nb.cells if c.cell_type == "code"]
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, errors
        joined = "\n".join(outputs)
        assert f"<kaip.Client {live.url} namespace=default>" in outputs[0]
        assert "<ModelVersion models:/faq-base/1 @base>" in outputs[1]
        assert "Complete models:/faq-bot/1" in outputs[2]
        assert "<svg" in outputs[3] and "loss" in outputs[3]  # the run's HTML with its loss curve
        assert "faq-bot" in outputs[4] and "<table" in outputs[4]
        assert json.loads(outputs[5].replace("'", '"')) == ["dataset", "modelversion", "run"]
        assert "faq-bot" in outputs[6] and "Ready" in outputs[6]
        # The fine-tuned tiny model answers in the form it was taught ("the <place> opens at <hour> ...").
        assert "opens at" in outputs[7] and "opens at" in outputs[8], joined

        with live.client() as api:  # what the notebook made is really there
            isvc = api.get("/apis/serving.kserve.io/v1beta1/namespaces/default/inferenceservices/faq-bot").json()
            assert isvc["spec"]["predictor"]["model"]["storageUri"] == "models:/faq-bot/1"
