"""`kaip.sdk.autolog`: a transformers Trainer and a plain PyTorch loop recorded with no logging code, into a run on
a live server through the real `mlflow` client, and inside a TrainJob through the files the controller publishes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from kaip.sdk.autolog import autolog, log_model
from kaip.testing.live import LiveServer, live_server

autolog_module = sys.modules["kaip.sdk.autolog"]  # `kaip.sdk.autolog` the attribute is the function
NS = "default"
TRAINJOBS = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("autolog") / "home", bookmark_seconds=0.5) as server:
        yield server


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No tracking settings from the environment or from earlier tests; autolog undone afterwards."""
    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._tracking_service import utils as tracking_utils

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME",
                "KAIP_TRAIN_DIR", "KAIP_SERVER", "KAIP_TOKEN", "KAIP_MODEL_URI", "KAIP_DATASET_PATH", "RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)  # mlflow.set_tracking_uri() by an earlier test
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("GIT_PYTHON_REFRESH", "quiet")
    yield
    autolog(disable=True)
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def to_server(live: LiveServer, clean: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    """MLflow pointed at the live server the way a user points it; returns an MlflowClient."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", live.url)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", live.token)
    return MlflowClient(live.url)


def experiment_runs(client: Any, name: str) -> list[Any]:
    exp = client.get_experiment_by_name(name)
    return [] if exp is None else client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def model_files(run: Any) -> set[str]:
    """Through the artifact URI: `client.list_artifacts(run_id, "model")` also searches MLflow 3 logged models."""
    import mlflow

    return {Path(f.path).name for f in mlflow.artifacts.list_artifacts(artifact_uri=f"{run.info.artifact_uri}/model")}


def history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# ---- a tiny transformers model and a plain loop ------------------------------------------------------------------


def tiny_llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 16, length: int = 8) -> None:
        self.ids = torch.randint(0, 64, (n, length), generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def train_trainer(out: Path, **options: Any) -> Any:
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(out), max_steps=4, per_device_train_batch_size=4, logging_steps=1,
                             learning_rate=1e-3, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
                             **options)
    trainer = Trainer(model=tiny_llama(), args=args, train_dataset=Tokens())
    trainer.train()
    return trainer


def train_plain(steps: int = 5, lr: float = 0.05) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    x = torch.randn(32, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


# ---- the MLflow sink ----------------------------------------------------------------------------------------------


def test_trainer_params_metrics_model_and_version(to_server: Any, tmp_path: Path) -> None:
    import mlflow
    from safetensors.torch import load_file

    client = to_server
    autolog(registered_model_name="tiny-llama")
    autolog(registered_model_name="tiny-llama")  # idempotent: one callback, one set of points
    trainer = train_trainer(tmp_path / "out")

    [run] = experiment_runs(client, "autolog")
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"  # the run autolog started ended with train()
    assert run.data.tags["kaip.autolog"] == "transformers"
    params = run.data.params
    assert params["learning_rate"] == "0.001" and params["max_steps"] == "4"
    assert params["model_type"] == "llama" and params["num_hidden_layers"] == "1"
    total = sum(p.numel() for p in trainer.model.parameters())
    assert params["num_parameters"] == params["num_trainable_parameters"] == str(total)
    loss = history(client, run_id, "loss")
    assert [s for s, _ in loss] == [1, 2, 3, 4], loss
    assert all(v > 0 for _, v in loss)
    assert [s for s, _ in history(client, run_id, "learning_rate")] == [1, 2, 3, 4]
    assert history(client, run_id, "train_runtime")  # the summary Trainer logs at the end

    assert {"model.safetensors", "config.json"} <= model_files(run), model_files(run)
    version = client.get_model_version("tiny-llama", "1")
    assert version.run_id == run_id and version.source.endswith(f"{run_id}/artifacts/model"), version
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"{run.info.artifact_uri}/model",
                                                dst_path=str(tmp_path / "dl"))
    weights = load_file(Path(local) / "model.safetensors")
    trained = trainer.model.state_dict()
    assert torch.equal(weights["model.embed_tokens.weight"], trained["model.embed_tokens.weight"])


def test_plain_loop_buffers_then_records_lr_loss_optimizer_and_model(live: LiveServer, clean: None,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    # No MLFLOW_* settings: the server and token come from the Kaip client config.
    monkeypatch.setenv("KAIP_SERVER", live.url)
    monkeypatch.setenv("KAIP_TOKEN", live.token)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "plain")
    monkeypatch.setattr(autolog_module, "FLUSH_SECONDS", 60.0)
    autolog()
    model = train_plain(steps=5, lr=0.05)
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == live.token

    client = MlflowClient(live.url)
    [run] = experiment_runs(client, "plain")
    run_id = run.info.run_id
    assert run.info.status == "RUNNING"
    assert run.data.params["optimizer"] == "AdamW"  # params once, at the first step
    assert run.data.params["lr"] == "0.05" and run.data.params["weight_decay"] == "0.01"
    assert run.data.params["betas"] == "(0.9, 0.999)"
    assert history(client, run_id, "loss") == []  # the steps are buffered: no request per step

    log_model(model)
    loss, lr = history(client, run_id, "loss"), history(client, run_id, "lr")
    assert [s for s, _ in loss] == [1, 2, 3, 4, 5] and [s for s, _ in lr] == [1, 2, 3, 4, 5]
    assert all(v == pytest.approx(0.05) for _, v in lr)
    assert loss[-1][1] < loss[0][1]  # the values are the loss tensors backward() was called on
    assert model_files(run) == {"model.safetensors", "kaip-model.json"}

    autolog(disable=True)  # writes what is left and ends the run autolog started
    assert client.get_run(run_id).info.status == "FINISHED"
    assert torch.Tensor.backward.__module__ == "torch._tensor"  # the patch is undone


def test_plain_loop_logs_into_the_users_run_and_leaves_it_open(to_server: Any) -> None:
    import mlflow

    client = to_server
    autolog()
    mlflow.set_experiment("mine")
    with mlflow.start_run(run_name="by-hand") as run:
        mlflow.log_param("lr", "user-value")  # autolog must not fail the batch by changing it
        train_plain(steps=3)
        autolog(disable=True)
        assert client.get_run(run.info.run_id).info.status == "RUNNING"
    got = client.get_run(run.info.run_id)
    assert got.data.params["lr"] == "user-value" and got.data.params["optimizer"] == "AdamW"
    assert [s for s, _ in history(client, run.info.run_id, "loss")] == [1, 2, 3]
    assert len(experiment_runs(client, "mine")) == 1


def test_full_buffers_are_written_in_the_background(to_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client = to_server
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "background")
    monkeypatch.setattr(autolog_module, "FLUSH_POINTS", 4)
    monkeypatch.setattr(autolog_module, "FLUSH_SECONDS", 60.0)
    autolog()
    train_plain(steps=5)  # 10 points: a full buffer wakes the writer thread, no flush is asked for
    [run] = experiment_runs(client, "background")
    deadline = time.monotonic() + 10
    while len(history(client, run.info.run_id, "loss")) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(history(client, run.info.run_id, "loss")) >= 4  # (the writer may have taken the last ones too)
    autolog(disable=True)
    assert len(history(client, run.info.run_id, "loss")) == 5


def test_trainer_is_patched_when_transformers_trainer_is_first_imported() -> None:
    # In a fresh interpreter: autolog() must not pay for importing transformers.trainer (seconds), yet patch it.
    code = textwrap.dedent("""
        import sys
        from kaip.sdk.autolog import autolog
        autolog()
        assert "transformers.trainer" not in sys.modules
        from transformers import Seq2SeqTrainer, Trainer
        assert Trainer.__init__._kaip_autolog and Seq2SeqTrainer.__init__ is not Trainer.__init__
        autolog(disable=True)
        assert not hasattr(Trainer.__init__, "_kaip_autolog")
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAIP_", "MLFLOW_"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_new_optimizer_starts_a_new_run(to_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client = to_server
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "reruns")
    autolog()
    train_plain(steps=2)  # its optimizer is freed on return
    train_plain(steps=3)  # as when a notebook's training cell runs again
    autolog(disable=True)
    runs = experiment_runs(client, "reruns")
    assert [len(history(client, r.info.run_id, "loss")) for r in runs] == [2, 3]
    assert all(r.info.status == "FINISHED" for r in runs)


# ---- the TrainJob sink --------------------------------------------------------------------------------------------


def job(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS, "uid": "0" * 8}}


def test_trainer_in_a_trainjob_writes_files_that_publish_records(live: LiveServer, clean: None, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from kaip.tracking.access import AllowAll
    from kaip.tracking.registry import RegistryService
    from kaip.tracking.service import TrackingService
    from kaip.training.publish import publish, read_metrics

    train_dir = tmp_path / "job"
    monkeypatch.setenv("KAIP_TRAIN_DIR", str(train_dir))
    monkeypatch.setenv("KAIP_MODEL_URI", "file:///models/base")
    autolog(registered_model_name="job-llama")
    train_trainer(tmp_path / "out")
    autolog(disable=True)

    points = read_metrics(train_dir / "metrics.jsonl")
    assert sorted(p["step"] for p in points if p["key"] == "loss") == [1, 2, 3, 4]
    progress = json.loads((train_dir / "progress.json").read_text())
    assert progress["step"] == 4 and progress["total_steps"] == 4 and progress["loss"] > 0
    report = json.loads((train_dir / "publish.json").read_text())
    assert report["register"] == "job-llama" and report["base_model"] == "file:///models/base"
    assert list(report["outputs"]) == ["model"]
    assert (Path(report["outputs"]["model"]) / "model.safetensors").is_file()
    assert report["params"]["learning_rate"] == "0.001" and report["final_metrics"]["loss"] > 0

    published = publish(live.server.store, live.server.home / "artifacts", job("job-llama"), train_dir)
    assert published["modelVersion"] == "job-llama/1", published
    run_id = published["runId"]
    tracking = TrackingService(live.server.store)
    assert len(tracking.get_metric_history(AllowAll(), run_id, "loss")["metrics"]) == 4
    version = RegistryService(live.server.store).get_version(AllowAll(), NS, "job-llama", "1")
    assert version["source"].endswith(f"{run_id}/artifacts/model"), version  # not `merged`: autolog's output
    run_dir = live.server.home / "artifacts" / published["experimentId"] / run_id / "artifacts"
    assert (run_dir / "model" / "model.safetensors").is_file()


def test_other_ranks_record_nothing(clean: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAIP_TRAIN_DIR", str(tmp_path))
    monkeypatch.setenv("RANK", "1")
    autolog()
    log_model(train_plain(steps=2))
    autolog(disable=True)
    assert list(tmp_path.iterdir()) == []


SCRIPT = textwrap.dedent('''
    import torch
    import kaip

    kaip.autolog(registered_model_name="autolog-e2e")
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(32, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    kaip.log_model(model)
''')  # the run is published when the process exits


def test_trainjob_running_an_autologged_script_records_run_and_version(live: LiveServer, tmp_path: Path) -> None:
    from kaip.tracking.access import AllowAll
    from kaip.tracking.service import TrackingService

    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    body = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
            "metadata": {"name": "autologged", "namespace": NS},
            "spec": {"runtimeRef": {"name": "kaip-lora-sft"},
                     "trainer": {"command": [sys.executable, str(script)], "numProcPerNode": 1}}}
    with live.client() as api:
        r = api.post(TRAINJOBS, json=body)
        assert r.status_code == 201, r.text
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            obj = api.get(f"{TRAINJOBS}/autologged").json()
            conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or [] if c["status"] == "True"}
            if "Complete" in conds or "Failed" in conds:
                break
            time.sleep(0.2)
    assert "Complete" in conds, json.dumps(obj.get("status"), indent=1)
    published = obj["status"]["kaip"]["published"]
    assert published.get("modelVersion") == "autolog-e2e/1", published
    tracking = TrackingService(live.server.store)
    run = tracking.get_run(AllowAll(), published["runId"])
    assert {p["key"]: p["value"] for p in run["data"]["params"]}["optimizer"] == "SGD"
    for key in ("loss", "lr"):
        steps = [m["step"] for m in tracking.get_metric_history(AllowAll(), published["runId"], key)["metrics"]]
        assert sorted(steps) == [1, 2, 3, 4, 5], (key, steps)
    assert obj["status"]["trainerStatus"]["metrics"][0] == {"name": "step", "value": "5"}
