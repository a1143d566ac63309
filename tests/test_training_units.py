"""Training kinds' validation, the launcher's pure decisions (environment, restarts, suspension) and the
checkpoint API on its own (no server, no processes)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from kaip.api.errors import ApiError
from kaip.api.training import CLUSTER_TRAINING_RUNTIME, PYTORCH_JOB, TRAIN_JOB, progress
from kaip.api.validation import validate_document
from kaip.training.checkpoint import Checkpointer
from kaip.training.launch import JobState, LaunchError, ObservedPod, plan, pytorchjob_group, trainjob_group
from kaip.training.replicas import job_target, pick_replica_pod

RUNTIME: dict[str, Any] = {
    "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "ClusterTrainingRuntime",
    "metadata": {"name": "torch-distributed"},
    "spec": {"mlPolicy": {"numNodes": 1, "torch": {}},
             "template": {"spec": {"replicatedJobs": [{"name": "node", "template": {
                 "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                 "spec": {"backoffLimit": 3, "template": {"spec": {"containers": [
                     {"name": "node", "image": "pytorch/pytorch:2.13.0", "command": ["torchrun", "train.py"],
                      "env": [{"name": "A", "value": "runtime"}]}]}}}}}]}}}}


def trainjob(**trainer: Any) -> dict[str, Any]:
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
            "metadata": {"name": "tj", "namespace": "default", "uid": "u-1"},
            "spec": {"runtimeRef": {"name": "torch-distributed"}, "trainer": trainer}}


def causes(info: Any, doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ApiError) as err:
        validate_document(info, doc, namespace="default")
    return {c.field: c.message for c in err.value.causes}


# ---- validation -----------------------------------------------------------------------------------------------


def test_upstream_manifests_are_accepted() -> None:
    validate_document(CLUSTER_TRAINING_RUNTIME, RUNTIME, namespace=None)
    doc = trainjob(numNodes=2, numProcPerNode=2, image="python:3.11", command=["python", "t.py"],
                   resourcesPerNode={"requests": {"cpu": "2"}})
    doc["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "q"}
    doc["spec"].update(suspend=True, activeDeadlineSeconds=600,
                       initializer={"dataset": {"storageUri": "file:///data/train.jsonl"}})
    out = validate_document(TRAIN_JOB, doc, namespace="default")
    assert out["spec"]["runtimeRef"] == {"name": "torch-distributed", "apiGroup": "trainer.kubeflow.org",
                                         "kind": "ClusterTrainingRuntime"}


def test_unimplemented_fields_are_refused_with_their_paths() -> None:
    doc = trainjob(numNodes=1)
    doc["spec"]["runtimePatches"] = [{"manager": "x"}]
    doc["spec"]["trainer"]["resourcesPerNode"] = {"claims": [{"name": "gpu"}]}
    doc["spec"]["initializer"] = {"model": {"storageUri": "hf://x", "secretRef": {"name": "s"}}}
    doc["spec"]["trainer"]["bogus"] = 1
    found = causes(TRAIN_JOB, doc)
    assert "not supported" in found["spec.runtimePatches"]
    assert "not supported" in found["spec.trainer.resourcesPerNode.claims"]
    assert "not supported" in found["spec.initializer.model.secretRef"]
    assert found["spec.trainer.bogus"] == "unknown field"

    runtime = copy.deepcopy(RUNTIME)
    runtime["spec"]["mlPolicy"]["mpi"] = {"numProcPerNode": 1}
    runtime["spec"]["podGroupPolicy"] = {"coscheduling": {}}
    runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["podFailurePolicy"] = {}
    found = causes(CLUSTER_TRAINING_RUNTIME, runtime)
    assert {"spec.mlPolicy.mpi", "spec.podGroupPolicy",
            "spec.template.spec.replicatedJobs[0].template.spec.podFailurePolicy"} <= set(found)

    pt = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "p", "namespace": "default"},
          "spec": {"elasticPolicy": {"rdzvBackend": "c10d"}, "runPolicy": {"schedulingPolicy": {"queue": "q"}},
                   "pytorchReplicaSpecs": {"Master": {"replicas": 1, "restartPolicy": "ExitCode", "template": {
                       "spec": {"containers": [{"name": "pytorch", "command": ["python"]}]}}}}}}
    found = causes(PYTORCH_JOB, pt)
    assert {"spec.elasticPolicy", "spec.runPolicy.schedulingPolicy",
            "spec.pytorchReplicaSpecs.Master.restartPolicy"} <= set(found)


def test_storage_uris_follow_upstreams_rule() -> None:
    """`scheme://...` or empty (Kubeflow Trainer's CEL rule): the registry's models are written models://N/V."""
    for uri in ("models://chat/1", "models://chat@champion", "file:///data/train.jsonl", "hf://org/model", ""):
        doc = trainjob(numNodes=1)
        doc["spec"]["initializer"] = {"model": {"storageUri": uri}, "dataset": {"storageUri": uri}}
        validate_document(TRAIN_JOB, doc, namespace="default")
    for uri, hint in (("models:/chat/1", "write models://NAME/VERSION"), ("/data/model", "write file:///path"),
                      ("chat", "")):
        doc = trainjob(numNodes=1)
        doc["spec"]["initializer"] = {"model": {"storageUri": uri}}
        message = causes(TRAIN_JOB, doc)["spec.initializer.model.storageUri"]
        assert "storageUri may be empty, or it must be a valid URI (scheme://...)" in message and hint in message


def test_trainjob_names_are_rfc1035_labels() -> None:
    doc = trainjob(numNodes=1)
    doc["metadata"]["name"] = "9-lives"
    assert "metadata.name must match RFC 1035 DNS label format" in causes(TRAIN_JOB, doc)["metadata.name"]


def test_trainjob_spec_is_immutable_once_created_but_suspend_is_not(tmp_path: Path) -> None:
    from kaip.api.core import NAMESPACE
    from kaip.store import Store

    store = Store(f"sqlite:///{tmp_path / 'kaip.db'}")
    store.create(NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    created = store.create(TRAIN_JOB, validate_document(TRAIN_JOB, trainjob(numNodes=1), namespace="default"))
    resumed = copy.deepcopy(created)
    resumed["spec"]["suspend"] = True
    store.update(TRAIN_JOB, resumed)
    resized = copy.deepcopy(created)
    resized["metadata"].pop("resourceVersion")
    resized["spec"]["trainer"]["numNodes"] = 2
    with pytest.raises(ApiError) as err:
        store.update(TRAIN_JOB, resized)
    assert err.value.code == 422 and [(c.field, c.message) for c in err.value.causes] == [
        ("spec.trainer", 'Invalid value: "object": field is immutable')]
    store.close()


# ---- environment ----------------------------------------------------------------------------------------------


def test_trainjob_env_per_process_matches_torchrun() -> None:
    group = trainjob_group(trainjob(numNodes=2, numProcPerNode=2, command=["python", "train.py"],
                                    env=[{"name": "B", "value": "job"}]), RUNTIME)
    assert group.replicas == ["node-0-0", "node-0-1", "node-1-0", "node-1-1"]
    assert group.restart_limit == 3  # the runtime's trainer Job backoffLimit
    assert "args" not in group.container and group.container["command"] == ["python", "train.py"]
    assert {e["name"]: e["value"] for e in group.container["env"]} == {"A": "runtime", "B": "job"}
    env = {w.replica: w.env for w in group.workers(29555, restarts=1)}
    w = env["node-1-0"]
    assert (w["RANK"], w["LOCAL_RANK"], w["GROUP_RANK"], w["WORLD_SIZE"], w["LOCAL_WORLD_SIZE"]) == \
        ("2", "0", "1", "4", "2")
    assert (w["PET_NNODES"], w["PET_NPROC_PER_NODE"], w["PET_NODE_RANK"]) == ("2", "2", "1")
    assert (w["MASTER_ADDR"], w["MASTER_PORT"], w["PET_MASTER_PORT"]) == ("127.0.0.1", "29555", "29555")
    assert w["TORCHELASTIC_RESTART_COUNT"] == "1" and w["OMP_NUM_THREADS"] == "1"
    assert [e["RANK"] for e in env.values()] == ["0", "1", "2", "3"]


def test_torchrun_command_gets_one_pod_per_node() -> None:
    group = trainjob_group(trainjob(numNodes=2, numProcPerNode=4), RUNTIME)  # the runtime's torchrun command
    assert group.torchrun and group.replicas == ["node-0", "node-1"]
    env = group.workers(1234, 0)[1].env
    assert env["PET_NODE_RANK"] == "1" and env["PET_NPROC_PER_NODE"] == "4" and "RANK" not in env


def test_pytorchjob_env_as_training_operator() -> None:
    container = {"name": "pytorch", "command": ["python", "mnist.py"]}
    template = {"spec": {"containers": [container]}}
    job = {"metadata": {"name": "p", "uid": "u"}, "spec": {
        "runPolicy": {"backoffLimit": 2}, "nprocPerNode": "1", "pytorchReplicaSpecs": {
            "Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template},
            "Worker": {"replicas": 2, "restartPolicy": "OnFailure", "template": template}}}}
    group = pytorchjob_group(job)
    assert group.replicas == ["master-0", "worker-0", "worker-1"] and group.restart_limit == 2
    env = {w.replica: w.env for w in group.workers(23456, 0)}
    assert env["worker-1"]["RANK"] == "2" and env["worker-1"]["WORLD_SIZE"] == "3"
    never = copy.deepcopy(job)
    for spec in never["spec"]["pytorchReplicaSpecs"].values():
        spec["restartPolicy"] = "Never"
    assert pytorchjob_group(never).restart_limit == 0


def test_runtime_without_torch_policy_is_not_supported() -> None:
    runtime = copy.deepcopy(RUNTIME)
    runtime["spec"]["mlPolicy"] = {"numNodes": 1}
    with pytest.raises(LaunchError) as err:
        trainjob_group(trainjob(), runtime)
    assert err.value.reason == "TrainingRuntimeNotSupported"


# ---- the plan -------------------------------------------------------------------------------------------------


GROUP = trainjob_group(trainjob(numProcPerNode=2, command=["python", "t.py"]), RUNTIME)


def state(**kw: Any) -> JobState:
    base: dict[str, Any] = {"suspend": False, "finished": False, "attempt": 0, "restarts": 0, "started_at": 0.0,
                            "suspended": False}
    return JobState(**{**base, **kw})


def pod(replica: str, phase: str | None, attempt: int = 0, code: int | None = None, deleting: bool = False,
        tail: str = "") -> ObservedPod:
    return ObservedPod(f"tj-{replica}-{attempt}", replica, attempt, phase, deleting, code, tail)


def test_plan_starts_the_whole_group_then_completes() -> None:
    p = plan(state(), GROUP, [], now=1.0)
    assert p.create == ["node-0-0", "node-0-1"] and p.new_port
    running = [pod("node-0-0", "Running"), pod("node-0-1", "Running")]
    assert plan(state(), GROUP, running, 1.0).create == []
    done = [pod("node-0-0", "Succeeded"), pod("node-0-1", "Succeeded")]
    assert plan(state(), GROUP, done, 1.0).outcome == "complete"


def test_plan_restarts_whole_group_and_waits_for_the_old_one() -> None:
    pods = [pod("node-0-0", "Running"), pod("node-0-1", "Failed", code=137)]
    p = plan(state(), GROUP, pods, 1.0)
    assert p.outcome == "restarting" and (p.attempt, p.restarts) == (1, 1)
    assert p.delete == ["tj-node-0-0-0"] and "exited with code 137 (killed)" in p.message
    # The old rank 0 is still stopping: no new group yet.
    stopping = [pod("node-0-0", "Running", deleting=True), pod("node-0-1", "Failed", code=137)]
    p = plan(state(attempt=1, restarts=1), GROUP, stopping, 1.0)
    assert p.outcome == "waiting" and p.create == []
    gone = [pod("node-0-0", "Failed", code=143), pod("node-0-1", "Failed", code=137)]
    p = plan(state(attempt=1, restarts=1), GROUP, gone, 1.0)
    assert p.create == ["node-0-0", "node-0-1"]


def test_plan_fails_when_restarts_are_used_up() -> None:
    pods = [pod("node-0-0", "Failed", attempt=3, code=2, tail="ValueError: bad line 3")]
    p = plan(state(attempt=3, restarts=3), GROUP, pods, 1.0)
    assert p.outcome == "failed" and p.reason == "BackoffLimitExceeded"
    assert "ValueError: bad line 3" in p.message and "restarts used: 3 of 3" in p.message


def test_plan_suspend_stops_workers_without_counting_a_restart() -> None:
    pods = [pod("node-0-0", "Running"), pod("node-0-1", "Running")]
    p = plan(state(suspend=True), GROUP, pods, 1.0)
    assert p.outcome == "suspended" and sorted(p.delete) == ["tj-node-0-0-0", "tj-node-0-1-0"]
    assert (p.attempt, p.restarts) == (1, 0)
    # Already suspended: nothing changes; resumed: a fresh group on a new port.
    assert plan(state(suspend=True, attempt=1, suspended=True), GROUP, [], 1.0).attempt == 1
    p = plan(state(attempt=1, suspended=True), GROUP, [pod("node-0-0", "Failed", code=143)], 1.0)
    assert p.create == ["node-0-0", "node-0-1"] and p.new_port


def test_plan_deadline() -> None:
    deadline = trainjob_group({**trainjob(command=["python", "t.py"]),
                               "spec": {**trainjob()["spec"], "activeDeadlineSeconds": 10}}, RUNTIME)
    p = plan(state(started_at=100.0), deadline, [pod("node-0-0", "Running")], now=111.0)
    assert p.outcome == "failed" and p.reason == "DeadlineExceeded" and p.delete == ["tj-node-0-0-0"]


def test_progress_column() -> None:
    obj = {"status": {"trainerStatus": {"estimatedRemainingSeconds": 12, "metrics": [
        {"name": "step", "value": "5"}, {"name": "total_steps", "value": "20"}, {"name": "loss", "value": "0.31"}]}}}
    assert progress(obj) == "5/20 loss=0.31 eta=12s"


# ---- checkpoints ----------------------------------------------------------------------------------------------


def test_checkpoint_roundtrip_keeps_last_n_and_restores_rng(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    ckpt = Checkpointer(tmp_path, keep=2, handle_sigterm=False)
    assert ckpt.load(model=model) is None
    for step in range(1, 5):
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
        sched.step()
        ckpt.save(step, model=model, optimizer=opt, scheduler=sched, data={"batch": step * 3})
    assert [s for s, _ in ckpt.checkpoints()] == [3, 4]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    expected_next = torch.randn(2)
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    fresh = torch.nn.Linear(4, 2)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.1)
    fresh_sched = torch.optim.lr_scheduler.StepLR(fresh_opt, 2)
    torch.manual_seed(99)
    restored = Checkpointer(tmp_path, handle_sigterm=False).load(model=fresh, optimizer=fresh_opt,
                                                                 scheduler=fresh_sched)
    assert restored is not None and restored.step == 4 and restored.data == {"batch": 12}
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in saved.items())
    assert fresh_sched.last_epoch == 4
    assert {int(s["step"]) for s in fresh_opt.state_dict()["state"].values()} == {4}
    assert torch.equal(torch.randn(2), expected_next)  # the generator continues where the checkpoint left it


def test_half_written_checkpoint_is_ignored(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    ckpt = Checkpointer(tmp_path, handle_sigterm=False)
    ckpt.save(1, model=model)
    (tmp_path / ".step-00000002.tmp-0").mkdir()  # a group that died mid-save
    (tmp_path / "step-00000003").mkdir()  # a directory without its state file
    assert ckpt.latest() is not None and ckpt.latest()[0] == 1  # type: ignore[index]


def test_replica_pod_of_latest_attempt() -> None:
    label = "trainer.kubeflow.org/trainjob-name"

    def pod(name: str, replica: str, attempt: int) -> dict[str, Any]:
        return {"metadata": {"name": name, "labels": {label: "tj", "trainer.kubeflow.org/replica": replica,
                                                      "kaip.dev/training-attempt": str(attempt)}}}
    pods = [pod("tj-node-0-0", "node-0-0", 0), pod("tj-node-0-1", "node-0-1", 0),
            pod("tj-node-0-1-a1", "node-0-1", 1)]
    assert job_target("trainjob/tj") == (label, "tj") and job_target("tj") is None
    assert pick_replica_pod(pods, "node-0-1", label) == "tj-node-0-1-a1"
    assert pick_replica_pod(pods, None, label) == "tj-node-0-0"
    assert pick_replica_pod(pods, "node-3-0", label) is None
