"""Pipelines from Python: runs and schedules of Kubeflow pipelines (compiled with the real kfp SDK)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kaip.pipelines import files
from kaip.sdk.errors import Failed
from kaip.sdk.handles import Handle, pod_log_lines
from kaip.sdk.objects import Object
from kaip.sdk.progress import Bar

if TYPE_CHECKING:
    from kaip.sdk.client import Client

API_VERSION = "kaip.dev/v1alpha1"
EXPERIMENT_LABEL = "kaip.dev/experiment"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
DONE = ("Succeeded", "Failed")


def run_template(pipeline: Any) -> dict[str, Any]:
    """`pipelineSpec` (IR) or `pipelineRef` for a pipeline given as a function, a file, IR or a stored name."""
    from kfp.dsl.graph_component import GraphComponent

    if isinstance(pipeline, GraphComponent):
        return {"pipelineSpec": files.compile_pipeline(pipeline)}
    if isinstance(pipeline, dict):
        return {"pipelineSpec": pipeline}
    if isinstance(pipeline, Path) or (isinstance(pipeline, str) and pipeline.endswith((".py", ".yaml", ".yml"))):
        path = Path(pipeline)
        ir = files.compile_python(path) if path.suffix == ".py" else files.load_ir_text(path.read_text(), str(path))
        return {"pipelineSpec": ir}
    if isinstance(pipeline, str) and "\n" in pipeline:
        return {"pipelineSpec": files.load_ir_text(pipeline, "<pipeline text>")}
    if isinstance(pipeline, str):
        return {"pipelineRef": {"name": pipeline}}
    raise TypeError(f"a pipeline is a @dsl.pipeline function, a file, IR or a Pipeline's name, not "
                    f"{type(pipeline).__name__}")


def _labels(experiment: str | None, queue: str | None) -> dict[str, str]:
    labels = {}
    if experiment:
        labels[EXPERIMENT_LABEL] = experiment
    if queue:
        labels[QUEUE_LABEL] = queue
    return labels


def _prefix(template: dict[str, Any], fallback: str) -> str:
    return files.run_name_prefix(template["pipelineSpec"]) if "pipelineSpec" in template else f"{fallback}-"


def run_pipeline(client: Client, pipeline: Any, *, params: dict[str, Any] | None, experiment: str | None,
                 name: str | None, namespace: str, queue: str | None, caching: bool,
                 service_account: str | None) -> PipelineRun:
    template = run_template(pipeline)
    spec: dict[str, Any] = {**template, "parameters": dict(params or {}), "enableCaching": caching}
    if service_account:
        spec["serviceAccountName"] = service_account
    meta: dict[str, Any] = {"namespace": namespace}
    if name:
        meta["name"] = name
    else:
        meta["generateName"] = _prefix(template, str(pipeline) if isinstance(pipeline, str) else "run")
    if labels := _labels(experiment, queue):
        meta["labels"] = labels
    created = client.create({"apiVersion": API_VERSION, "kind": "PipelineRun", "metadata": meta, "spec": spec})
    return PipelineRun(client, created.name, namespace, created)


def schedule_pipeline(client: Client, pipeline: Any, *, cron: str, params: dict[str, Any] | None, name: str,
                      namespace: str, max_concurrency: int, no_catchup: bool, queue: str | None,
                      enabled: bool) -> Object:
    spec: dict[str, Any] = {**run_template(pipeline), "parameters": dict(params or {}),
                            "trigger": {"cronSchedule": {"cron": cron}}, "maxConcurrency": max_concurrency,
                            "noCatchup": no_catchup, "mode": "ENABLE" if enabled else "DISABLE"}
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels := _labels(None, queue):
        meta["labels"] = labels
    result = client.apply({"apiVersion": API_VERSION, "kind": "RecurringRun", "metadata": meta, "spec": spec})
    assert isinstance(result, Object)
    return result


class PipelineRun(Handle):
    """A pipeline run: `.wait()` with a bar of tasks done, `.phase`, `.tasks`, `.logs(task)`."""

    api_version = API_VERSION
    kind = "PipelineRun"

    @property
    def phase(self) -> str:
        """Pending, Running, Succeeded or Failed (fetched now)."""
        return str(self.refresh().status.get("phase") or "Pending")

    @property
    def tasks(self) -> dict[str, dict[str, Any]]:
        """Each task's record: phase, inputs, outputs, attempts, pod, `cached`."""
        return dict(self.refresh().status.get("tasks") or {})

    def outputs(self, task: str) -> dict[str, Any]:
        """A finished task's outputs (parameters and artifacts)."""
        return dict(self.tasks[task].get("outputs") or {})

    def logs(self, task: str, *, follow: bool = False) -> Iterator[str]:
        """A task's log lines (its latest attempt)."""
        pod = self.tasks.get(task, {}).get("pod")
        if not pod:
            raise LookupError(f"task {task} of {self.name} has no pod (yet); tasks: {', '.join(self.tasks)}")
        return pod_log_lines(self.client, self.namespace, pod, follow=follow)

    def wait(self, timeout: float | None = None, *, progress: bool | None = None, poll: float = 1.0
             ) -> PipelineRun:
        """Wait for the run to end, with a bar of tasks done; raises `Failed` (with the failing task) if it fails."""
        with Bar(self.name, unit="task", show=progress) as bar:
            def show(obj: Object) -> None:
                tasks = obj.status.get("tasks") or {}
                done = sum(1 for t in tasks.values() if t.get("phase") in DONE)
                running = [k for k, t in tasks.items() if t.get("phase") in ("Running", "Queued")]
                bar.update_to(done, total=max(len(tasks), 1), postfix={"running": ",".join(running) or None})

            obj = self._poll(lambda o: o.status.get("phase") in DONE, timeout, poll, show)
        if obj.status.get("phase") == "Failed":
            raise Failed(f"PipelineRun {self.name} failed: {obj.status.get('message', '')}", obj)
        return self

    def _repr_html_(self) -> str:
        from kaip.sdk import display

        return display.job_html(self.refresh())


def to_yaml(pipeline: Any) -> str:
    """The IR of a pipeline as YAML (what `kaip run -f` and a Pipeline object take)."""
    return yaml.safe_dump(run_template(pipeline).get("pipelineSpec"), sort_keys=False)
