"""Pipeline tasks through the queues, and ParallelFor end to end: branches run in parallel up to `parallelism`;
in a run labelled with a LocalQueue, each task's Pod waits for its Workload's admission, so tasks beyond the
quota wait and then run."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from kaip.cli.pipelines import compile_python, run_document
from kaip.jobs.framework import JobFramework
from kaip.pipelines.queueing import TaskFramework, TaskJob, task_job_name, task_requests
from kaip.testing.live import LiveServer

SWEEP = textwrap.dedent('''
    from kfp import dsl


    @dsl.component(base_image="python:3.11")
    def work(item: int, folder: str, need: int):
        import pathlib
        import time
        d = pathlib.Path(folder)
        start = time.time()
        (d / f"started-{item}").write_text(str(start))
        deadline = time.time() + 30  # a barrier: wait until `need` branches have started
        while len(list(d.glob("started-*"))) < need and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        (d / f"span-{item}").write_text(f"{start} {time.time()}")


    @dsl.pipeline(name="sweep")
    def sweep(folder: str, need: int = 1):
        with dsl.ParallelFor([1, 2, 3, 4], parallelism=2) as item:
            work(item=item, folder=folder, need=need).set_cpu_request("1").set_memory_request("100M")
''')


# ---- pure -----------------------------------------------------------------------------------------------


def test_task_requests_from_the_ir_as_kfp_compiles_them() -> None:
    assert task_requests({"resources": {
        "accelerator": {"count": "1", "resourceCount": "1", "resourceType": "nvidia.com/gpu", "type": "nvidia.com/gpu"},
        "cpuRequest": 2.0, "memoryRequest": 1.0, "resourceCpuRequest": "2", "resourceMemoryRequest": "1G"}}) == {
        "cpu": "2", "memory": "1G", "nvidia.com/gpu": "1"}
    assert task_requests({"resources": {"cpuLimit": 0.5, "memoryLimit": 2.0}}) == {"cpu": "0.5", "memory": "2G"}
    assert task_requests({"resources": {"resourceCpuLimit": "500m", "accelerator": {"type": "x", "count": "0"}}}) \
        == {"cpu": "500m"}
    assert task_requests({}) == {}


def test_a_task_as_a_generic_job() -> None:
    run = {"metadata": {"name": "sweep-1", "namespace": "team", "uid": "u-1",
                        "labels": {"kueue.x-k8s.io/queue-name": "lq", "other": "x"}}}
    rec: dict[str, Any] = {"phase": "Pending"}
    job = TaskJob.of(run, "for-loop-2/iteration-0/work", rec, {"cpu": "1"})
    assert job.obj["metadata"] == {"name": task_job_name("sweep-1", "for-loop-2/iteration-0/work"),
                                   "namespace": "team", "uid": "u-1", "labels": {"kueue.x-k8s.io/queue-name": "lq"}}
    assert job.pod_sets()[0]["template"]["spec"]["containers"][0]["resources"] == {"requests": {"cpu": "1"}}
    assert job.is_suspended() and job.finished() is None
    TaskFramework._write_job(object.__new__(TaskFramework), job, lambda j: j.run_with([]))
    assert rec["suspended"] is False and not job.is_suspended()
    rec["phase"] = "Failed"
    finished = job.finished()
    assert finished is not None and not finished.succeeded
    assert task_job_name("r", "a/b") != task_job_name("r", "a-b")
    unqueued = TaskJob.of({"metadata": {**run["metadata"], "labels": {}}}, "t", {}, {})
    assert TaskFramework.queue_name(object.__new__(TaskFramework), unqueued) is None
    assert isinstance(object.__new__(TaskFramework), JobFramework)


def test_kaip_run_queue_labels_the_run(tmp_path: Path) -> None:
    source = tmp_path / "sweep.py"
    source.write_text(SWEEP)
    doc = run_document(source, {"folder": "/x"}, caching=True, queue="pipe-lq")
    assert doc["metadata"]["labels"] == {"kueue.x-k8s.io/queue-name": "pipe-lq"}
    assert "labels" not in run_document(source, {}, caching=True)["metadata"]


# ---- live -----------------------------------------------------------------------------------------------


def _wait(fetch: Any, what: str, limit: float = 50.0) -> Any:
    deadline = time.monotonic() + limit
    while True:
        value = fetch()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


def _max_overlap(folder: Path) -> int:
    points = []
    for f in folder.glob("span-*"):
        start, end = map(float, f.read_text().split())
        points += [(start, 1), (end, -1)]
    best = current = 0
    for _, step in sorted(points, key=lambda p: (p[0], p[1])):
        current += step
        best = max(best, current)
    return best


def _run(c: httpx.Client, ir: dict[str, Any], name: str, folder: Path, need: int,
         labels: dict[str, str] | None = None) -> dict[str, Any]:
    runs = "/apis/kaip.dev/v1alpha1/namespaces/default/pipelineruns"
    doc = {"apiVersion": "kaip.dev/v1alpha1", "kind": "PipelineRun",
           "metadata": {"name": name, "labels": labels or {}},
           "spec": {"pipelineSpec": ir, "parameters": {"folder": str(folder), "need": need}, "enableCaching": False}}
    r = c.post(runs, json=doc)
    assert r.status_code == 201, r.text

    def done() -> dict[str, Any] | None:
        run = c.get(f"{runs}/{name}").json()
        return run if (run.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None
    run = _wait(done, f"run {name} to finish")
    assert run["status"]["phase"] == "Succeeded", run["status"].get("message")
    return run


@pytest.mark.slow
def test_parallel_for_runs_branches_in_parallel_then_within_queue_quota(server: LiveServer, tmp_path: Path) -> None:
    source = tmp_path / "sweep.py"
    source.write_text(SWEEP)
    ir = compile_python(source)
    free, queued = tmp_path / "free", tmp_path / "queued"
    free.mkdir()
    queued.mkdir()
    with server.client() as c:
        # No queue: two branches at a time (the barrier needs two to have started; the limit allows no third).
        run = _run(c, ir, "sweep-free", free, need=2)
        iterations = [k for k in run["status"]["tasks"] if k.endswith("/work")]
        assert len(iterations) == 4 and not any("workload" in run["status"]["tasks"][k] for k in iterations)
        assert _max_overlap(free) == 2

        kueue = "/apis/kueue.x-k8s.io/v1beta2"
        for path, doc in (
                (f"{kueue}/resourceflavors", {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
                                              "metadata": {"name": "pipe-flavor"}}),
                (f"{kueue}/clusterqueues", {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue",
                                            "metadata": {"name": "pipe-cq"},
                                            "spec": {"namespaceSelector": {}, "resourceGroups": [{
                                                "coveredResources": ["cpu", "memory"], "flavors": [{
                                                    "name": "pipe-flavor",
                                                    "resources": [{"name": "cpu", "nominalQuota": 1},
                                                                  {"name": "memory", "nominalQuota": "1Gi"}]}]}]}}),
                (f"{kueue}/namespaces/default/localqueues", {"apiVersion": "kueue.x-k8s.io/v1beta2",
                                                             "kind": "LocalQueue",
                                                             "metadata": {"name": "pipe-lq", "namespace": "default"},
                                                             "spec": {"clusterQueue": "pipe-cq"}})):
            r = c.post(path, json=doc)
            assert r.status_code == 201, r.text
        # Through the queue, one CPU of quota and a CPU per task: one branch at a time, all of them run.
        run = _run(c, ir, "sweep-queued", queued, need=1, labels={"kueue.x-k8s.io/queue-name": "pipe-lq"})
        tasks = run["status"]["tasks"]
        assert len(list(queued.glob("span-*"))) == 4
        assert _max_overlap(queued) == 1
        workloads = {w["metadata"]["name"]: w for w in c.get(f"{kueue}/namespaces/default/workloads").json()["items"]}
        for task_id in (k for k in tasks if k.endswith("/work")):
            wl = workloads[tasks[task_id]["workload"]]
            assert wl["spec"]["queueName"] == "pipe-lq"
            assert wl["spec"]["podSets"][0]["template"]["spec"]["containers"][0]["resources"]["requests"] == {
                "cpu": "1", "memory": "100M"}
            assert {cd["type"]: cd["status"] for cd in wl["status"]["conditions"]}["Finished"] == "True"
            assert wl["status"]["admission"]["clusterQueue"] == "pipe-cq"
            pod = c.get(f"/api/v1/namespaces/default/pods/{tasks[task_id]['pod']}").json()
            assert pod["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "1", "memory": "100M"}
        events = c.get("/api/v1/namespaces/default/events").json()["items"]
        assert sum(1 for e in events if e["reason"] == "Started" and e["message"] == "Admitted by clusterQueue "
                   "pipe-cq") == 4
