"""Training from Python: a function or script as a TrainJob, and LoRA fine-tuning with the built-in runtime."""

from __future__ import annotations

import inspect
import json
import re
import tempfile
import textwrap
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaip.api.training import trainjob_storage_uri
from kaip.sdk.errors import Failed
from kaip.sdk.handles import Handle, pod_log_lines, wait_for_pod
from kaip.sdk.objects import Object
from kaip.sdk.progress import Bar

if TYPE_CHECKING:
    from kaip.sdk.client import Client
    from kaip.sdk.tracking import Run

API_VERSION = "trainer.kubeflow.org/v1alpha1"
DEFAULT_RUNTIME = "torch-distributed"
LORA_RUNTIME = "kaip-lora-sft"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
EXPERIMENT_LABEL = "kaip.dev/experiment"
JOB_LABEL = "trainer.kubeflow.org/trainjob-name"
PACKAGES_ANNOTATION = "kaip.dev/packages"


def _slug(text: str) -> str:
    # a TrainJob's name starts with a letter (RFC 1035, upstream's CEL rule): a leading digit is dropped
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).lstrip("-0123456789")[:40].strip("-") or "train"


def function_script(func: Callable[..., Any], kwargs: dict[str, Any]) -> str:
    """The program a worker runs for `func`: its source, then a call with `kwargs` (JSON, so they must be plain
    data). Refuses what cannot travel as source: lambdas and closures."""
    if not inspect.isfunction(func):
        raise TypeError(f"train() takes a function or a script path, not {type(func).__name__}")
    if func.__name__ == "<lambda>":
        raise ValueError("train() needs a named function (def ...), not a lambda: its source is what runs")
    if func.__code__.co_freevars:
        names = ", ".join(func.__code__.co_freevars)
        raise ValueError(f"{func.__name__} uses variables of an enclosing function ({names}): a training function "
                         "must be self-contained; pass values through args=")
    try:
        source = textwrap.dedent(inspect.getsource(func))
    except OSError as err:
        raise ValueError(f"the source of {func.__name__} is not available (define it in a file or notebook cell)"
                         ) from err
    try:
        payload = json.dumps(kwargs)
    except TypeError as err:
        raise ValueError(f"args of {func.__name__} must be JSON data (numbers, strings, lists, dicts): {err}"
                         ) from err
    return f"{source}\n\nif __name__ == '__main__':\n    import json\n    {func.__name__}(**json.loads({payload!r}))\n"


def missing_packages(packages: Sequence[str]) -> list[str]:
    """The requirements (`name` or `name>=1.2`) that the platform's Python environment does not satisfy."""
    from packaging.requirements import Requirement

    missing = []
    for spec in packages:
        req = Requirement(spec)
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(spec)
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            missing.append(f"{spec} (installed: {version})")
    return missing


def node_resources(resources: dict[str, Any] | None) -> dict[str, Any] | None:
    """`{"cpu": 2, "memory": "4Gi"}` as requests, or a full `{"requests": ..., "limits": ...}`."""
    if not resources:
        return None
    if set(resources) <= {"requests", "limits"}:
        return {k: {r: str(v) for r, v in q.items()} for k, q in resources.items()}
    return {"requests": {k: str(v) for k, v in resources.items()}}


def _metadata(name: str | None, default: str, namespace: str, queue: str | None, experiment: str | None
              ) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": namespace}
    if name:
        meta["name"] = name
    else:
        meta["generateName"] = f"{_slug(default)}-"
    labels = {}
    if queue:
        labels[QUEUE_LABEL] = queue
    if experiment:
        labels[EXPERIMENT_LABEL] = experiment
    if labels:
        meta["labels"] = labels
    return meta


def train(client: Client, func_or_script: Callable[..., Any] | str | Path, *, args: Any, num_nodes: int,
          procs_per_node: int, resources: dict[str, Any] | None, queue: str | None, packages: Sequence[str],
          name: str | None, namespace: str, experiment: str | None, env: dict[str, str] | None,
          runtime: str) -> TrainJob:
    missing = missing_packages(packages)
    if missing:
        raise ValueError(f"not installed in the platform's Python environment: {', '.join(missing)}; Kaip "
                         "downloads nothing at run time, so install them there first (pip install ...)")
    if callable(func_or_script):
        if args is not None and not isinstance(args, dict):
            raise TypeError("args= for a function is a dict of keyword arguments")
        command = ["python", "-c", function_script(func_or_script, dict(args or {}))]
        default = func_or_script.__name__
    else:
        script = Path(func_or_script).expanduser().resolve()
        if not script.is_file():
            raise FileNotFoundError(f"{script}: no such training script")
        if isinstance(args, dict):
            raise TypeError("args= for a script is a list of command-line arguments")
        command = ["python", str(script), *[str(a) for a in args or []]]
        default = script.stem
    trainer: dict[str, Any] = {"command": command, "numNodes": num_nodes, "numProcPerNode": procs_per_node}
    if (res := node_resources(resources)) is not None:
        trainer["resourcesPerNode"] = res
    if env:
        trainer["env"] = [{"name": k, "value": str(v)} for k, v in env.items()]
    meta = _metadata(name, default, namespace, queue, experiment)
    if packages:
        meta["annotations"] = {PACKAGES_ANNOTATION: ",".join(packages)}
    doc = {"apiVersion": API_VERSION, "kind": "TrainJob", "metadata": meta,
           "spec": {"runtimeRef": {"name": runtime}, "trainer": trainer}}
    created = client.create(doc)
    return TrainJob(client, created.name, namespace, created)


def _storage_uri(ref: str | Path, what: str) -> str:
    """A TrainJob initializer's storageUri: `models:/NAME/VERSION` (or `@ALIAS`) from the registry is written
    `models://NAME/VERSION`, a local file or folder `file:///path` (upstream's rule takes `scheme://...` only)."""
    text = str(ref)
    if text.startswith(("models:/", "file://")):
        return trainjob_storage_uri(text)
    path = Path(text).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"{what} {text}: no such file or folder (or give a models:/ URI)")
    return path.as_uri()


def _write_dataset(conversations: Sequence[dict[str, Any]]) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="kaip-dataset-"))
    target = folder / "train.jsonl"
    with target.open("w") as fh:
        for row in conversations:
            fh.write(json.dumps(row) + "\n")
    return target


def fine_tune(client: Client, *, base_model: str | Path, dataset: Any, lora: dict[str, Any] | None,
              max_steps: int | None, epochs: int | None, learning_rate: float | None, batch_size: int | None,
              max_seq_length: int | None, register: str | None, queue: str | None,
              resources: dict[str, Any] | None, name: str | None, namespace: str, experiment: str | None,
              extra_args: Sequence[str]) -> TrainJob:
    if not isinstance(dataset, (str, Path)):
        dataset = _write_dataset(list(dataset))
    args: list[str] = []
    for flag, value in (("--max-steps", max_steps), ("--epochs", epochs), ("--learning-rate", learning_rate),
                        ("--batch-size", batch_size), ("--max-seq-length", max_seq_length), ("--register", register)):
        if value is not None:
            args += [flag, str(value)]
    known = {"r": "--lora-r", "alpha": "--lora-alpha", "dropout": "--lora-dropout",
             "target_modules": "--target-modules"}
    for key, value in (lora or {}).items():
        if key not in known:
            raise ValueError(f"lora.{key}: unknown option (known: {', '.join(known)})")
        if key == "target_modules" and not isinstance(value, str):
            value = ",".join(value)
        args += [known[key], str(value)]
    trainer: dict[str, Any] = {"numNodes": 1, "numProcPerNode": 1, "args": [*args, *extra_args]}
    if (res := node_resources(resources)) is not None:
        trainer["resourcesPerNode"] = res
    base = str(base_model)
    default = f"sft-{base.removeprefix('models:/').split('/')[0].split('@')[0]}" if base.startswith("models:/") \
        else "sft"
    doc = {"apiVersion": API_VERSION, "kind": "TrainJob",
           "metadata": _metadata(name, default, namespace, queue, experiment),
           "spec": {"runtimeRef": {"name": LORA_RUNTIME},
                    "initializer": {"dataset": {"storageUri": _storage_uri(dataset, "dataset")},
                                    "model": {"storageUri": _storage_uri(base_model, "base_model")}},
                    "trainer": trainer}}
    created = client.create(doc)
    return TrainJob(client, created.name, namespace, created)


class TrainJob(Handle):
    """A TrainJob: `.wait()` with a progress bar (steps, loss), `.logs()`, `.phase`, `.run`, `.model_version`."""

    api_version = API_VERSION
    kind = "TrainJob"

    @staticmethod
    def phase_of(obj: Object) -> str:
        """Complete, Failed, Queued (suspended, waiting for quota), Running or Created."""
        for ctype in ("Complete", "Failed"):
            if obj.is_true(ctype):
                return ctype
        if obj.spec.get("suspend") or obj.is_true("Suspended"):
            return "Queued"
        jobs = obj.status.get("jobsStatus") or []
        return "Running" if any(int(j.get("active", 0) or 0) for j in jobs) else "Created"

    @property
    def phase(self) -> str:
        """Complete, Failed, Queued, Running or Created (fetched now)."""
        return self.phase_of(self.refresh())

    @staticmethod
    def metrics_of(obj: Object) -> dict[str, str]:
        return {m["name"]: m["value"] for m in (obj.status.get("trainerStatus") or {}).get("metrics") or []}

    @property
    def progress(self) -> dict[str, Any]:
        """The workers' last progress report: step, total_steps, loss, ... and `progressPercentage`."""
        obj = self.refresh()
        ts = obj.status.get("trainerStatus") or {}
        return {**self.metrics_of(obj), **({"progressPercentage": ts["progressPercentage"]}
                                           if "progressPercentage" in ts else {})}

    def _published(self) -> dict[str, Any]:
        return dict((self.object.status.get("kaip") or {}).get("published") or {})

    @property
    def run(self) -> Run:
        """The tracked run the job recorded (the LoRA runtime and `kaip.autolog()` record one)."""
        published = self._published()
        if "runId" not in published:
            raise LookupError(f"TrainJob {self.name} recorded no run" + (
                f": {published['error']}" if published.get("error") else " (yet)"))
        return self.client.tracking.run(published["runId"], namespace=self.namespace)

    @property
    def model_version(self) -> str | None:
        """`models:/NAME/VERSION` of the version it registered, if it did."""
        ref = self._published().get("modelVersion")
        return f"models:/{ref}" if ref else None

    def pods(self) -> list[Object]:
        """The job's worker pods (every attempt)."""
        return self.client.list("pods", self.namespace, selector=f"{JOB_LABEL}={self.name}")

    def logs(self, *, follow: bool = False, replica: str | None = None) -> Iterator[str]:
        """Log lines of a replica (default rank 0, `node-0-0`); with `follow`, until the worker ends."""
        from kaip.training import replicas

        def find() -> str | None:
            return replicas.pick_replica_pod(self.pods(), replica, JOB_LABEL)

        pod = wait_for_pod(self.client, self.namespace, find) if follow else find()
        if pod is None:
            return iter(())
        return pod_log_lines(self.client, self.namespace, pod, follow=follow)

    def wait(self, timeout: float | None = None, *, progress: bool | None = None, poll: float = 1.0) -> TrainJob:
        """Wait until the job completes, with a bar of steps and the loss; raises `Failed` if it fails."""
        with Bar(f"{self.name}", unit="step", show=progress) as bar:
            def show(obj: Object) -> None:
                m = self.metrics_of(obj)
                total = float(m["total_steps"]) if m.get("total_steps") else None
                bar.update_to(float(m.get("step", 0) or 0), total=total, desc=f"{self.name} ({self.phase_of(obj)})",
                              postfix={"loss": m.get("loss")})

            obj = self._poll(lambda o: self.phase_of(o) in ("Complete", "Failed"), timeout, poll, show)
        if self.phase_of(obj) == "Failed":
            message = (obj.condition("Failed") or {}).get("message", "")
            raise Failed(f"TrainJob {self.name} failed: {message}", obj)
        return self

    def _repr_html_(self) -> str:
        from kaip.sdk import display

        return display.job_html(self.refresh())
