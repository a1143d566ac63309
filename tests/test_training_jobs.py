"""TrainJob and PyTorchJob end to end on a live server: real torch.distributed (gloo) workers as local processes,
gradients averaged across ranks, a worker killed with SIGKILL and the group restarted from its checkpoint, a
graceful suspend and resume, queue admission, and jobs that fail with a condition saying why."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from typer.testing import CliRunner

from kaip.cli.main import app
from kaip.testing.live import LiveServer, live_server
from kaip.testing.waiting import wait_for

NS = "default"
TRAINJOBS = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs"
RUNTIMES = "/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes"
PYTORCHJOBS = f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs"

# A tiny DDP training loop written the way users write one: plain init_process_group from the environment,
# Adam (whose state counts optimizer steps), a scheduler, noise from the global RNG (so a resume that did not
# restore the generators would diverge), and checkpoints through kaip.training.checkpoint.
TRAIN_SCRIPT = textwrap.dedent('''
    import os, sys, time
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from kaip.training.checkpoint import Checkpointer, report_progress

    steps, out, pause, every = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    ddp = DDP(model)
    opt = torch.optim.Adam(ddp.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
    ckpt = Checkpointer(keep=2)
    restored = ckpt.load(model=model, optimizer=opt, scheduler=sched)
    step = restored.step if restored else 0
    attempt = os.environ["KAIP_TRAINING_ATTEMPT"]
    with open(os.path.join(out, f"pid-{rank}"), "w") as fh:
        fh.write(str(os.getpid()))
    log = open(os.path.join(out, f"steps-{rank}.log"), "a", buffering=1)
    while step < steps:
        g = torch.Generator().manual_seed(1000 * step + rank)
        x = torch.randn(16, 8, generator=g)
        y = x.sum(1, keepdim=True).sin() + 0.01 * torch.randn(16, 1)
        loss = torch.nn.functional.mse_loss(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        log.write(f"{attempt} {step}\\n")
        report_progress(step, steps, loss=loss.item())
        stop = ckpt.should_stop()
        if step % every == 0 or stop:
            ckpt.save(step, model=model, optimizer=opt, scheduler=sched, data={"next_step": step})
        if stop:
            log.write(f"{attempt} stopped\\n")
            ckpt.exit()
        time.sleep(pause)
    adam_steps = {int(s["step"]) for s in opt.state_dict()["state"].values()}
    torch.save({"params": model.state_dict(), "adam_steps": sorted(adam_steps)}, os.path.join(out, f"final-{rank}.pt"))
    dist.destroy_process_group()
''')

RUNTIME = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "ClusterTrainingRuntime",
           "metadata": {"name": "torch-distributed", "labels": {"trainer.kubeflow.org/framework": "torch"}},
           "spec": {"mlPolicy": {"numNodes": 1, "torch": {}},
                    "template": {"spec": {
                        "failurePolicy": {"maxRestarts": 2},
                        "replicatedJobs": [{"name": "node", "template": {
                            "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                            "spec": {"template": {"spec": {
                                "terminationGracePeriodSeconds": 20,
                                "containers": [{"name": "node",
                                                "image": "pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime"}]}}}}}]}}}}




@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("training") / "home", bookmark_seconds=0.5) as server:
        yield server


@pytest.fixture
def api(live: LiveServer) -> Iterator[httpx.Client]:
    with live.client() as client:
        current = client.get(f"{RUNTIMES}/torch-distributed")  # the built-in one: these tests' settings replace it
        assert current.status_code == 200, current.text
        doc = {**RUNTIME, "metadata": {**RUNTIME["metadata"],
                                       "resourceVersion": current.json()["metadata"]["resourceVersion"]}}
        r = client.put(f"{RUNTIMES}/torch-distributed", json=doc)
        assert r.status_code == 200, r.text
        yield client


def trainjob(name: str, command: list[str], *, nproc: int = 1, runtime: str = "torch-distributed",
             **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"runtimeRef": {"name": runtime},
                     "trainer": {"command": command, "numNodes": 1, "numProcPerNode": nproc}, **spec}}


def ddp_job(name: str, script: Path, out: Path, steps: int, pause: float, every: int) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    return trainjob(name, ["python", str(script), str(steps), str(out), str(pause), str(every)], nproc=2)


def get(api: httpx.Client, path: str) -> dict[str, Any]:
    r = api.get(path)
    assert r.status_code == 200, r.text
    return r.json()


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_ and cond["status"] == "True":
            return cond
    return None


def finished(api: httpx.Client, path: str) -> dict[str, Any] | None:
    obj = get(api, path)
    return obj if condition(obj, "Complete") or condition(obj, "Succeeded") or condition(obj, "Failed") else None


def assert_complete(obj: dict[str, Any], type_: str = "Complete") -> None:
    assert condition(obj, type_), json.dumps(obj.get("status"), indent=1)


def final(out: Path, rank: int) -> dict[str, Any]:
    return torch.load(out / f"final-{rank}.pt", weights_only=True)


def reference_params(steps: int, world: int) -> dict[str, torch.Tensor]:
    """The same training in one process with the gradient averaged over the ranks' batches: what DDP must give."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
    for step in range(steps):
        noise = 0.01 * torch.randn(16, 1)  # every rank draws the same noise from its identically seeded generator
        losses = []
        for rank in range(world):
            x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1000 * step + rank))
            losses.append(torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True).sin() + noise))
        opt.zero_grad()
        (sum(losses) / world).backward()
        opt.step()
        sched.step()
    return model.state_dict()


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "train.py"
    path.write_text(TRAIN_SCRIPT)
    return path


# ---- tests --------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_process_ddp_averages_gradients(api: httpx.Client, script: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    r = api.post(TRAINJOBS, json=ddp_job("ddp", script, out, steps=12, pause=0.0, every=100))
    assert r.status_code == 201, r.text
    job = wait_for(lambda: finished(api, f"{TRAINJOBS}/ddp"), "the DDP job to finish")
    assert_complete(job)
    assert condition(job, "Created")
    pods = get(api, f"/api/v1/namespaces/{NS}/pods?labelSelector=trainer.kubeflow.org/trainjob-name%3Dddp")["items"]
    envs = {p["metadata"]["labels"]["trainer.kubeflow.org/replica"]:
            {e["name"]: e.get("value") for e in p["spec"]["containers"][0]["env"]} for p in pods}
    assert sorted(envs) == ["node-0-0", "node-0-1"]
    assert {e["RANK"] for e in envs.values()} == {"0", "1"}
    assert {e["WORLD_SIZE"] for e in envs.values()} == {"2"}
    assert {e["PET_NPROC_PER_NODE"] for e in envs.values()} == {"2"}
    assert len({e["MASTER_PORT"] for e in envs.values()}) == 1

    rank0, rank1 = final(out, 0), final(out, 1)
    for name, value in rank0["params"].items():
        assert torch.equal(value, rank1["params"][name]), f"{name} differs between ranks"
    expected = reference_params(12, 2)
    for name, value in rank0["params"].items():
        assert torch.allclose(value, expected[name], atol=1e-5), f"{name} is not the averaged-gradient result"
    assert rank0["adam_steps"] == [12]
    assert job["status"]["kaip"]["restarts"] == 0
    trainer_status = job["status"]["trainerStatus"]  # the workers' last progress report
    assert trainer_status["progressPercentage"] == 100 and trainer_status["metrics"][0] == {"name": "step",
                                                                                           "value": "12"}


@pytest.mark.slow
def test_killed_worker_restarts_group_from_checkpoint(api: httpx.Client, script: Path, tmp_path: Path) -> None:
    steps, every = 24, 4
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    for name, out in (("killed", killed), ("clean", clean)):
        r = api.post(TRAINJOBS, json=ddp_job(name, script, out, steps=steps, pause=0.12, every=every))
        assert r.status_code == 201, r.text
    ckpt_dir = Path(wait_for(lambda: (get(api, f"{TRAINJOBS}/killed").get("status") or {}).get("kaip", {})
                             .get("checkpointDir"), "the checkpoint directory"))
    wait_for(lambda: any(p.name.startswith("step-") for p in ckpt_dir.glob("step-*")), "a first checkpoint")
    pid = int((killed / "pid-1").read_text())
    os.kill(pid, signal.SIGKILL)

    job = wait_for(lambda: finished(api, f"{TRAINJOBS}/killed"), "the killed job to finish", timeout=90)
    assert_complete(job)
    assert job["status"]["kaip"]["restarts"] == 1
    reference = wait_for(lambda: finished(api, f"{TRAINJOBS}/clean"), "the clean job to finish", timeout=60)
    assert_complete(reference)
    assert reference["status"]["kaip"]["restarts"] == 0

    # The second attempt resumed from a checkpoint (not from step 1) and did the rest of the steps exactly once.
    lines = [ln.split() for ln in (killed / "steps-0.log").read_text().splitlines()]
    attempts = sorted({a for a, _ in lines})
    assert len(attempts) == 2
    resumed = [int(s) for a, s in lines if a == attempts[1]]
    assert resumed[0] > 1 and (resumed[0] - 1) % every == 0
    assert resumed == list(range(resumed[0], steps + 1))
    events = get(api, f"/api/v1/namespaces/{NS}/events")["items"]
    restarting = [e for e in events if e["reason"] == "Restarting" and e["involvedObject"]["name"] == "killed"]
    assert restarting and "exited with code 137" in restarting[0]["message"]

    for rank in (0, 1):
        got, want = final(killed, rank), final(clean, rank)
        assert got["adam_steps"] == [steps]
        for name, value in want["params"].items():
            assert torch.equal(got["params"][name], value), f"{name} differs from the uninterrupted run"


@pytest.mark.slow
def test_suspend_checkpoints_and_resume_continues(api: httpx.Client, script: Path, tmp_path: Path) -> None:
    out, steps = tmp_path / "suspend", 30
    r = api.post(TRAINJOBS, json=ddp_job("suspended", script, out, steps=steps, pause=0.1, every=1000))
    assert r.status_code == 201, r.text
    wait_for(lambda: (out / "steps-0.log").exists() and len((out / "steps-0.log").read_text().split("\n")) > 4,
             "a few steps")
    r = api.patch(f"{TRAINJOBS}/suspended", json={"spec": {"suspend": True}},
                  headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 200, r.text
    wait_for(lambda: condition(get(api, f"{TRAINJOBS}/suspended"), "Suspended"), "Suspended")
    wait_for(lambda: "stopped" in (out / "steps-1.log").read_text(), "the workers to checkpoint and stop")
    log0 = [ln.split() for ln in (out / "steps-0.log").read_text().splitlines()]
    stopped_at = int(log0[[s for _, s in log0].index("stopped") - 1][1])
    assert stopped_at < steps

    r = api.patch(f"{TRAINJOBS}/suspended", json={"spec": {"suspend": False}},
                  headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 200, r.text
    job = wait_for(lambda: finished(api, f"{TRAINJOBS}/suspended"), "the resumed job to finish", timeout=90)
    assert_complete(job)
    suspended = next(c for c in job["status"]["conditions"] if c["type"] == "Suspended")
    assert (suspended["status"], suspended["reason"]) == ("False", "Resumed")
    assert job["status"]["kaip"]["restarts"] == 0  # a suspension is not a failure
    lines = [ln.split() for ln in (out / "steps-0.log").read_text().splitlines() if "stopped" not in ln]
    second = [int(s) for a, s in lines if a != lines[0][0]]
    assert second == list(range(stopped_at + 1, steps + 1))  # resumed exactly after the suspend checkpoint
    assert final(out, 0)["adam_steps"] == [steps]


def test_missing_runtime_fails_with_reason(api: httpx.Client) -> None:
    r = api.post(TRAINJOBS, json=trainjob("no-runtime", ["python", "-c", "pass"], runtime="does-not-exist"))
    assert r.status_code == 201, r.text
    job = wait_for(lambda: finished(api, f"{TRAINJOBS}/no-runtime"), "the job to fail")
    failed = condition(job, "Failed")
    assert failed and failed["reason"] == "TrainingRuntimeNotFound"
    assert 'ClusterTrainingRuntime "does-not-exist" not found' in failed["message"]


def test_missing_dataset_and_model_fail_with_reason(api: httpx.Client, tmp_path: Path) -> None:
    job = trainjob("no-dataset", ["python", "-c", "pass"])
    job["spec"]["initializer"] = {"dataset": {"storageUri": f"file://{tmp_path}/missing.jsonl"}}
    assert api.post(TRAINJOBS, json=job).status_code == 201
    job = trainjob("no-model", ["python", "-c", "pass"])
    job["spec"]["initializer"] = {"model": {"storageUri": "models://never-registered/1"}}
    assert api.post(TRAINJOBS, json=job).status_code == 201
    failed = condition(wait_for(lambda: finished(api, f"{TRAINJOBS}/no-dataset"), "the job to fail"), "Failed")
    assert failed and failed["reason"] == "DatasetNotFound" and "missing.jsonl does not exist" in failed["message"]
    failed = condition(wait_for(lambda: finished(api, f"{TRAINJOBS}/no-model"), "the job to fail"), "Failed")
    assert failed and failed["reason"] == "ModelNotFound" and "never-registered" in failed["message"], failed


def test_failing_script_fails_after_restarts_with_its_error(api: httpx.Client) -> None:
    code = "import sys; print('loading data'); sys.exit('ValueError: bad record in train.jsonl line 3')"
    r = api.post(TRAINJOBS, json=trainjob("bad-script", ["python", "-c", code]))
    assert r.status_code == 201, r.text
    job = wait_for(lambda: finished(api, f"{TRAINJOBS}/bad-script"), "the job to fail")
    failed = condition(job, "Failed")
    assert failed and failed["reason"] == "BackoffLimitExceeded", job["status"]
    assert "exited with code 1" in failed["message"]
    assert "bad record in train.jsonl line 3" in failed["message"]
    assert job["status"]["kaip"]["restarts"] == 2  # the runtime's failurePolicy.maxRestarts


def test_cli_logs_of_a_replica_and_the_trainjobs_table(api: httpx.Client, live: LiveServer) -> None:
    code = "import os; print('rank', os.environ['RANK'], 'attempt', os.environ['KAIP_TRAINING_ATTEMPT'])"
    r = api.post(TRAINJOBS, json=trainjob("cli-job", ["python", "-c", code], nproc=2))
    assert r.status_code == 201, r.text
    wait_for(lambda: finished(api, f"{TRAINJOBS}/cli-job"), "the job to finish")
    env = {"KAIP_SERVER": live.url, "KAIP_TOKEN": live.token, "KAIP_HOME": "/nonexistent"}
    runner = CliRunner()
    result = runner.invoke(app, ["logs", "trainjob/cli-job", "--replica", "node-0-1"], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "rank 1 attempt 0"
    result = runner.invoke(app, ["logs", "trainjob/cli-job"], env=env)
    assert result.output.strip() == "rank 0 attempt 0"
    result = runner.invoke(app, ["get", "trainjobs"], env=env)
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert header.split()[:5] == ["NAME", "RUNTIME", "STATE", "PROGRESS", "RESTARTS"]
    assert any(row.split()[:3] == ["cli-job", "torch-distributed", "Complete"] for row in rows), result.output


def test_pytorchjob_master_and_worker_environment(api: httpx.Client, tmp_path: Path) -> None:
    code = ("import os, json, sys; keys = ['MASTER_ADDR', 'MASTER_PORT', 'WORLD_SIZE', 'RANK', 'PET_NNODES']; "
            f"json.dump({{k: os.environ[k] for k in keys}}, open(os.path.join({str(tmp_path)!r}, "
            "os.environ['RANK'] + '.json'), 'w'))")
    container = {"name": "pytorch", "image": "docker.io/kubeflowkatib/pytorch-mnist", "command": ["python", "-c", code]}
    doc = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "pt", "namespace": NS},
           "spec": {"runPolicy": {"backoffLimit": 1},
                    "pytorchReplicaSpecs": {
                        "Master": {"replicas": 1, "restartPolicy": "OnFailure",
                                   "template": {"spec": {"containers": [container]}}},
                        "Worker": {"replicas": 2, "restartPolicy": "OnFailure",
                                   "template": {"spec": {"containers": [container]}}}}}}
    r = api.post(PYTORCHJOBS, json=doc)
    assert r.status_code == 201, r.text
    job = wait_for(lambda: finished(api, f"{PYTORCHJOBS}/pt"), "the PyTorchJob to finish")
    assert_complete(job, "Succeeded")
    seen = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(3)]
    assert [s["RANK"] for s in seen] == ["0", "1", "2"]
    assert {s["WORLD_SIZE"] for s in seen} == {"3"} and {s["PET_NNODES"] for s in seen} == {"3"}
    assert len({s["MASTER_PORT"] for s in seen}) == 1
    assert job["status"]["replicaStatuses"] == {"Master": {"active": 0, "succeeded": 1, "failed": 0},
                                                "Worker": {"active": 0, "succeeded": 2, "failed": 0}}


def test_queued_trainjob_waits_for_admission(api: httpx.Client) -> None:
    kueue = "/apis/kueue.x-k8s.io/v1beta2"
    for path, doc in (
            (f"{kueue}/resourceflavors", {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
                                          "metadata": {"name": "train-flavor"}}),
            (f"{kueue}/clusterqueues", {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue",
                                        "metadata": {"name": "train-cq"},
                                        "spec": {"namespaceSelector": {}, "resourceGroups": [{
                                            "coveredResources": ["cpu"], "flavors": [{
                                                "name": "train-flavor",
                                                "resources": [{"name": "cpu", "nominalQuota": 1}]}]}]}}),
            (f"{kueue}/namespaces/{NS}/localqueues", {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
                                                      "metadata": {"name": "train-lq", "namespace": NS},
                                                      "spec": {"clusterQueue": "train-cq"}})):
        r = api.post(path, json=doc)
        assert r.status_code == 201, r.text
    # Too big for the queue: stays suspended, no pods.
    big = trainjob("queued-big", ["python", "-c", "pass"])
    big["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "train-lq"}
    big["spec"]["trainer"]["resourcesPerNode"] = {"requests": {"cpu": "2"}}
    small = trainjob("queued-small", ["python", "-c", "print('admitted')"])
    small["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "train-lq"}
    small["spec"]["trainer"]["resourcesPerNode"] = {"requests": {"cpu": "500m"}}
    for doc in (big, small):
        r = api.post(TRAINJOBS, json=doc)
        assert r.status_code == 201, r.text
    job = wait_for(lambda: finished(api, f"{TRAINJOBS}/queued-small"), "the admitted job to finish")
    assert_complete(job)

    def workloads() -> dict[str, Any]:
        items = get(api, f"{kueue}/namespaces/{NS}/workloads")["items"]
        return {w["metadata"]["ownerReferences"][0]["name"]: w for w in items
                if w["metadata"]["ownerReferences"][0]["kind"] == "TrainJob"}
    # The job framework marks the Workload Finished on its next pass after the job completes.
    mine = wait_for(lambda: (lambda m: m if condition(m["queued-small"], "Finished") else None)(workloads()),
                    "the Workload to be Finished", timeout=30)
    assert mine["queued-small"]["spec"]["podSets"][0]["name"] == "node"
    waiting = get(api, f"{TRAINJOBS}/queued-big")
    assert waiting["spec"]["suspend"] is True and condition(waiting, "Suspended")
    assert not condition(mine["queued-big"], "QuotaReserved")
    pods = get(api, f"/api/v1/namespaces/{NS}/pods?labelSelector=trainer.kubeflow.org/trainjob-name%3Dqueued-big")
    assert pods["items"] == []



def test_preempted_trainjob_checkpoints_waits_and_resumes(api: httpx.Client, script: Path, tmp_path: Path) -> None:
    kueue = "/apis/kueue.x-k8s.io/v1beta2"
    docs = [
        (f"{kueue}/workloadpriorityclasses", {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass",
                                              "metadata": {"name": "train-low"}, "value": 100}),
        (f"{kueue}/workloadpriorityclasses", {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass",
                                              "metadata": {"name": "train-high"}, "value": 1000}),
        (f"{kueue}/resourceflavors", {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
                                      "metadata": {"name": "preempt-flavor"}}),
        (f"{kueue}/clusterqueues", {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue",
                                    "metadata": {"name": "preempt-cq"},
                                    "spec": {"namespaceSelector": {},
                                             "preemption": {"withinClusterQueue": "LowerPriority"},
                                             "resourceGroups": [{"coveredResources": ["cpu"], "flavors": [{
                                                 "name": "preempt-flavor",
                                                 "resources": [{"name": "cpu", "nominalQuota": 1}]}]}]}}),
        (f"{kueue}/namespaces/{NS}/localqueues", {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
                                                  "metadata": {"name": "preempt-lq", "namespace": NS},
                                                  "spec": {"clusterQueue": "preempt-cq"}})]
    for path, doc in docs:
        r = api.post(path, json=doc)
        assert r.status_code == 201, r.text
    out, steps = tmp_path / "low", 40
    low = trainjob("low", ["python", str(script), str(steps), str(out), "0.1", "1000"])
    out.mkdir()
    high_marker = tmp_path / "high-ran"
    high = trainjob("high", ["python", "-c", f"open({str(high_marker)!r}, 'w').write('done')"])
    for doc, priority in ((low, "train-low"), (high, "train-high")):
        doc["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "preempt-lq",
                                     "kueue.x-k8s.io/priority-class": priority}
        doc["spec"]["trainer"]["resourcesPerNode"] = {"requests": {"cpu": "1"}}
    assert api.post(TRAINJOBS, json=low).status_code == 201
    wait_for(lambda: (out / "steps-0.log").exists() and len((out / "steps-0.log").read_text().splitlines()) >= 3,
             "the low-priority job to train a few steps")
    assert api.post(TRAINJOBS, json=high).status_code == 201

    done_high = wait_for(lambda: finished(api, f"{TRAINJOBS}/high"), "the high-priority job to finish")
    assert_complete(done_high)
    lines = [ln.split() for ln in (out / "steps-0.log").read_text().splitlines()]
    assert ["0", "stopped"] in [ln[:2] for ln in lines]  # the low job checkpointed on SIGTERM before high ran
    job = wait_for(lambda: finished(api, f"{TRAINJOBS}/low"), "the low-priority job to resume and finish")
    assert_complete(job)
    assert job["status"]["kaip"]["restarts"] == 0
    lines = [ln.split() for ln in (out / "steps-0.log").read_text().splitlines()]
    stopped_at = int(lines[[s for _, s in lines].index("stopped") - 1][1])
    resumed = [int(s) for a, s in lines if a != "0"]
    assert resumed == list(range(stopped_at + 1, steps + 1))
    assert final(out, 0)["adam_steps"] == [steps]
    workloads = get(api, f"{kueue}/namespaces/{NS}/workloads")["items"]
    wl = next(w for w in workloads if w["metadata"]["ownerReferences"][0]["name"] == "low")
    evictions = wl["status"]["schedulingStats"]["evictions"]
    assert any(e["reason"] == "Preempted" for e in evictions), evictions
