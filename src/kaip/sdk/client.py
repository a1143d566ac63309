"""`kaip.Client`: the whole model lifecycle from Python, as a thin typed layer over Kaip's public HTTP API.

Every method is one or a few calls of the same REST API that `kaip` (the CLI), `kubectl`-style tools and the
`mlflow` / `openai` clients use; nothing here reaches the store or the server's internals, so a token's
permissions apply exactly as they do over HTTP (a `view` token gets `PermissionError` on writes).
"""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from kaip import config
from kaip.sdk import pipelines as _pipelines
from kaip.sdk import serving as _serving
from kaip.sdk import training as _training
from kaip.sdk.errors import ApiError, BadRequest, NotFound, WaitTimeout
from kaip.sdk.knowledge import Guardrails, KnowledgeBase
from kaip.sdk.objects import Object
from kaip.sdk.rest import Resource, RestClient
from kaip.sdk.tracking import Model, ModelVersion, Run, Tracking

Manifest = dict[str, Any] | Object | str | Path


class Client:
    """A connection to a Kaip server, working in one namespace by default.

    Configuration comes from the arguments, else `KAIP_SERVER` / `KAIP_TOKEN` / `KAIP_NAMESPACE`, else what
    `kaip up` wrote to `$KAIP_HOME/credentials` (as the CLI does). In a Workbench the environment is already set
    for the owner's namespace.

    Args:
        server: the server URL, e.g. `http://127.0.0.1:8740`.
        token: a bearer token (`kaip create token ...`).
        namespace: the namespace methods use when not given one (default `KAIP_NAMESPACE`, else `default`).
        home: a Kaip state directory whose credentials to read (default `$KAIP_HOME`, else `~/.kaip`).
        timeout: seconds for one HTTP request.
    """

    def __init__(self, server: str | None = None, token: str | None = None, *, namespace: str | None = None,
                 home: str | Path | None = None, timeout: float = 60.0) -> None:
        cfg = config.client_config(home)
        self.rest = RestClient(server or cfg.server, token if token is not None else cfg.token, timeout=timeout)
        self.server: str = self.rest.server
        self.token: str = self.rest.token
        self.namespace: str = namespace or os.environ.get("KAIP_NAMESPACE") or "default"
        self.tracking = Tracking(self)

    def close(self) -> None:
        """Close the HTTP connections."""
        self.rest.close()
        self.tracking.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<kaip.Client {self.server} namespace={self.namespace}>"

    # ---- resources ----------------------------------------------------------------------------------

    def _res(self, kind: str) -> Resource:
        if "/" in kind:  # "group/version/Kind" or "v1/Kind"
            api_version, _, name = kind.rpartition("/")
            return self.rest.for_kind(api_version, name)
        return self.rest.resolve(kind)

    def _ns(self, res: Resource, namespace: str | None) -> str | None:
        return (namespace or self.namespace) if res.namespaced else None

    def apply(self, manifest: Manifest | Sequence[Manifest], *, namespace: str | None = None,
              dry_run: bool = False) -> Object | builtins.list[Object]:
        """Create or update objects by server-side apply, as `kaip apply -f` does.

        Args:
            manifest: a document (dict), YAML text, a path to a YAML file, or a list of them.
            namespace: for documents that name none (default: the client's namespace).
            dry_run: validate and default on the server without saving.

        Returns:
            The stored object, or a list of them when several documents were given.

        Raises:
            Invalid: a field is refused; `causes` names each field path.
        """
        docs = _documents(manifest)
        out = []
        for doc in docs:
            if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
                raise BadRequest({"code": 400, "reason": "BadRequest",
                                  "message": "a manifest needs apiVersion and kind"})
            res = self.rest.for_kind(doc["apiVersion"], doc["kind"])
            ns = (doc.get("metadata") or {}).get("namespace") or namespace if res.namespaced else None
            stored, _ = self.rest.apply(res, doc, self._ns(res, ns), dry_run=dry_run)
            out.append(Object(stored))
        single = isinstance(manifest, (dict, Path)) or (isinstance(manifest, str) and len(out) == 1)
        return out[0] if single else out

    def create(self, manifest: dict[str, Any], *, namespace: str | None = None) -> Object:
        """Create an object (`metadata.generateName` works); 409 `Conflict` if it exists."""
        res = self.rest.for_kind(manifest["apiVersion"], manifest["kind"])
        ns = (manifest.get("metadata") or {}).get("namespace") or namespace
        return Object(self.rest.create(res, manifest, self._ns(res, ns)))

    def get(self, kind: str, name: str, namespace: str | None = None) -> Object:
        """One object. `kind` is what `kaip get` takes: `isvc`, `trainjobs`, `InferenceService`, ...

        Raises:
            NotFound: no such object.
        """
        res = self._res(kind)
        return Object(self.rest.get(res, name, self._ns(res, namespace)))

    def list(self, kind: str, namespace: str | None = None, *, selector: str | None = None,
             all_namespaces: bool = False) -> builtins.list[Object]:
        """Objects of a kind in a namespace (or every namespace the token may see), optionally by label selector."""
        res = self._res(kind)
        ns = None if all_namespaces else self._ns(res, namespace)
        return [Object(o) for o in self.rest.list(res, ns, selector=selector).get("items", [])]

    def watch(self, kind: str, namespace: str | None = None, *, name: str | None = None,
              selector: str | None = None, resource_version: str | None = None, timeout: float | None = None
              ) -> Iterator[tuple[str, Object]]:
        """Changes as they happen: `(type, object)` with type ADDED, MODIFIED or DELETED.

        Without `resource_version` the current objects come first as ADDED, as Kubernetes watches do.
        The iterator ends after `timeout` seconds (if given).
        """
        res = self._res(kind)
        for event in self.rest.watch(res, self._ns(res, namespace), resource_version=resource_version,
                                     selector=selector, timeout=timeout):
            if event.get("type") == "BOOKMARK":
                continue
            obj = Object(event["object"])
            if name is None or obj.name == name:
                yield event["type"], obj

    def delete(self, kind: str, name: str, namespace: str | None = None, *, wait: bool = False,
               timeout: float = 120.0) -> None:
        """Delete an object; with `wait`, return once it is gone (finalizers done)."""
        res = self._res(kind)
        ns = self._ns(res, namespace)
        self.rest.delete(res, name, ns)
        if wait:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    self.rest.get(res, name, ns)
                except NotFound:
                    return
                if time.monotonic() > deadline:
                    raise WaitTimeout(f"{res.kind} {name} still exists after {timeout:g}s")
                time.sleep(0.3)

    def wait(self, kind: str, name: str, condition: str | Callable[[Object], bool] = "Ready", *,
             namespace: str | None = None, timeout: float = 300.0, poll: float = 0.5) -> Object:
        """Wait until a condition holds and return the object.

        Args:
            condition: a condition type that must be "True" (`"Ready"`, `"Complete"`), `"Type=False"` for another
                status, or a function of the object.
            timeout: seconds before `WaitTimeout` (which carries the object as last seen).
        """
        if callable(condition):
            check = condition
        else:
            ctype, _, want = condition.partition("=")
            want = want or "True"

            def check(obj: Object) -> bool:
                cond = obj.condition(ctype)
                return bool(cond and cond.get("status") == want)
        deadline = time.monotonic() + timeout
        last: Object | None = None
        while True:
            try:
                last = self.get(kind, name, namespace)
                if check(last):
                    return last
            except NotFound:
                pass
            if time.monotonic() > deadline:
                raise WaitTimeout(f"{kind} {name}: {condition if isinstance(condition, str) else 'condition'} "
                                  f"did not hold within {timeout:g}s", last)
            time.sleep(poll)

    # ---- training -----------------------------------------------------------------------------------

    def train(self, func_or_script: Callable[..., Any] | str | Path, *, args: dict[str, Any] | Sequence[str] |
              None = None, num_nodes: int = 1, procs_per_node: int = 1, resources: dict[str, Any] | None = None,
              queue: str | None = None, packages: Sequence[str] = (), name: str | None = None,
              namespace: str | None = None, experiment: str | None = None, env: dict[str, str] | None = None,
              runtime: str = _training.DEFAULT_RUNTIME) -> _training.TrainJob:
        """Run a Python function or script as a TrainJob, as Kubeflow Trainer's SDK does with a function.

        A function is sent as its source and called in every worker with `args` as keyword arguments, so it must
        be self-contained (imports inside it). Workers get the `torchrun` environment (RANK, WORLD_SIZE,
        MASTER_ADDR, ...), so `torch.distributed.init_process_group("gloo")` works unchanged.

        Args:
            func_or_script: a function, or the path of a `.py` file.
            args: keyword arguments for the function, or command-line arguments for the script.
            num_nodes: nodes (TrainJob `trainer.numNodes`).
            procs_per_node: processes per node (`trainer.numProcPerNode`).
            resources: per node, e.g. `{"cpu": 2, "memory": "4Gi"}` (requests) or `{"requests": ..., "limits": ...}`.
            queue: a LocalQueue; the job waits for quota there.
            packages: distributions the code needs; Kaip downloads nothing at run time, so they must already be
                installed in the platform's environment (checked here, with a clear error if not).
            name: the TrainJob's name (default: generated from the function's name).
            experiment: the tracking experiment that records the job's run (`kaip.autolog()` inside the function
                fills it).
            env: extra environment variables for the workers.
            runtime: the ClusterTrainingRuntime (default `torch-distributed`).

        Returns:
            A `TrainJob` handle: `.wait()`, `.logs(follow=True)`, `.status`, `.run`.
        """
        return _training.train(self, func_or_script, args=args, num_nodes=num_nodes, procs_per_node=procs_per_node,
                               resources=resources, queue=queue, packages=packages, name=name,
                               namespace=namespace or self.namespace, experiment=experiment, env=env,
                               runtime=runtime)

    def fine_tune(self, *, base_model: str | Path, dataset: str | Path | Sequence[dict[str, Any]],
                  lora: dict[str, Any] | None = None, max_steps: int | None = None, epochs: int | None = None,
                  learning_rate: float | None = None, batch_size: int | None = None,
                  max_seq_length: int | None = None, register: str | None = None, queue: str | None = None,
                  resources: dict[str, Any] | None = None, name: str | None = None, namespace: str | None = None,
                  experiment: str | None = None, extra_args: Sequence[str] = ()) -> _training.TrainJob:
        """Fine-tune a causal language model with LoRA on a chat dataset (the built-in `kaip-lora-sft` runtime).

        Args:
            base_model: a `models:/NAME/VERSION` or `models:/NAME@ALIAS` URI from the registry, or a local folder.
            dataset: a JSONL file of `{"messages": [...]}` conversations, or the conversations themselves.
            lora: `r`, `alpha`, `dropout`, `target_modules` (a list or comma-separated names).
            register: register the merged model under this name when the job completes (lineage recorded).
            queue, resources, name, experiment: as for `train`.
            extra_args: further `kaip-lora-sft` options, e.g. `["--eval-split", "0.1"]`.

        Returns:
            A `TrainJob` handle; `.model_version` names the registered version once it completes.
        """
        return _training.fine_tune(self, base_model=base_model, dataset=dataset, lora=lora, max_steps=max_steps,
                                   epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                                   max_seq_length=max_seq_length, register=register, queue=queue,
                                   resources=resources, name=name, namespace=namespace or self.namespace,
                                   experiment=experiment, extra_args=extra_args)

    def train_job(self, name: str, namespace: str | None = None) -> _training.TrainJob:
        """A handle on an existing TrainJob."""
        ns = namespace or self.namespace
        return _training.TrainJob(self, name, ns, self.get("trainjobs.trainer.kubeflow.org", name, ns))

    # ---- pipelines ----------------------------------------------------------------------------------

    def run_pipeline(self, pipeline: Any, *, params: dict[str, Any] | None = None, experiment: str | None = None,
                     name: str | None = None, namespace: str | None = None, queue: str | None = None,
                     caching: bool = True, service_account: str | None = None) -> _pipelines.PipelineRun:
        """Start a run of a Kubeflow pipeline.

        Args:
            pipeline: a `@dsl.pipeline` function (compiled here with the kfp SDK), a path to IR YAML or to a Python
                file defining one pipeline, IR as a dict, or the name of a stored `Pipeline`.
            params: the pipeline's parameters.
            experiment: groups runs (label `kaip.dev/experiment`); `client.pipeline_runs(experiment=...)` lists them.
            queue: a LocalQueue each task waits in for quota.
            caching: reuse the outputs of tasks already run with the same inputs.
            service_account: the identity tasks run as (default `pipeline-runner`).

        Returns:
            A `PipelineRun` handle: `.wait()` (with a bar of tasks done), `.tasks`, `.logs(task)`.
        """
        return _pipelines.run_pipeline(self, pipeline, params=params, experiment=experiment, name=name,
                                       namespace=namespace or self.namespace, queue=queue, caching=caching,
                                       service_account=service_account)

    def schedule_pipeline(self, pipeline: Any, *, cron: str, params: dict[str, Any] | None = None,
                          name: str, namespace: str | None = None, max_concurrency: int = 1,
                          no_catchup: bool = True, queue: str | None = None, enabled: bool = True) -> Object:
        """Run a pipeline on a schedule: a RecurringRun with KFP's cron format (6 fields, seconds first, or
        5 fields), e.g. `"0 0 3 * * 1"` for Mondays at 03:00."""
        return _pipelines.schedule_pipeline(self, pipeline, cron=cron, params=params, name=name,
                                            namespace=namespace or self.namespace, max_concurrency=max_concurrency,
                                            no_catchup=no_catchup, queue=queue, enabled=enabled)

    def pipeline_runs(self, *, experiment: str | None = None, namespace: str | None = None
                      ) -> builtins.list[_pipelines.PipelineRun]:
        """Pipeline runs in the namespace (of one experiment, if given), oldest first."""
        selector = f"{_pipelines.EXPERIMENT_LABEL}={experiment}" if experiment else None
        ns = namespace or self.namespace
        runs = self.list("pipelineruns.kaip.dev", ns, selector=selector)
        runs.sort(key=lambda o: o.metadata.get("creationTimestamp") or "")
        return [_pipelines.PipelineRun(self, o.name, ns, o) for o in runs]

    # ---- tracking and registry ----------------------------------------------------------------------

    def register_model(self, name: str, source: str | Path | _training.TrainJob | Run, *,
                       alias: str | None = None, tags: dict[str, str] | None = None,
                       description: str | None = None, namespace: str | None = None) -> ModelVersion:
        """Add a version to a registered model (created if new).

        Args:
            source: a local model folder (uploaded into a new tracked run), a `runs:/RUN_ID/PATH` or
                `mlflow-artifacts:/...` URI, a finished `TrainJob` (its merged model), or a `Run`.
            alias: point this alias (e.g. `champion`) at the new version.
            tags: version tags.
        """
        return self.tracking.register_model(name, source, alias=alias, tags=tags, description=description,
                                            namespace=namespace)

    def models(self, name: str | None = None, *, namespace: str | None = None) -> builtins.list[Model] | Model:
        """Every registered model, or the one named (with its versions and aliases)."""
        return self.tracking.models(name, namespace=namespace)

    def run(self, run_id: str, *, namespace: str | None = None) -> Run:
        """A tracked run: params, metrics and their history (renders with a loss curve in a notebook)."""
        return self.tracking.run(run_id, namespace=namespace)

    def lineage(self, uri: str, *, namespace: str | None = None) -> dict[str, Any]:
        """Where a model or run came from and what came of it: `models:/NAME/VERSION`, `models:/NAME@ALIAS` or
        `runs:/RUN_ID` → the lineage graph (`nodes`, `edges`)."""
        return self.tracking.lineage(uri, namespace=namespace)

    # ---- serving ------------------------------------------------------------------------------------

    def deploy(self, model_uri: str, *, name: str, namespace: str | None = None, runtime: str | None = None,
               model_format: str = "huggingface", canary_percent: int | None = None,
               min_replicas: int | None = None, max_replicas: int | None = None,
               guardrails: Guardrails | dict[str, Any] | None = None,
               knowledge_bases: Sequence[str | KnowledgeBase] = (), resources: dict[str, Any] | None = None,
               args: Sequence[str] = (), env: dict[str, str] | None = None, logger: bool = False,
               wait: bool = True, timeout: float = 600.0, progress: bool | None = None) -> _serving.Endpoint:
        """Serve a model behind an InferenceService (KServe's API): create it, or roll out a new model to it.

        Args:
            model_uri: `models:/NAME/VERSION`, `models:/NAME@ALIAS`, `runs:/...`, or a local path.
            name: the InferenceService.
            runtime: a ServingRuntime / ClusterServingRuntime name (default: chosen by the model format).
            model_format: `huggingface` (LLMs: OpenAI API), `sklearn`, `xgboost`, ...
            canary_percent: when the service exists, send this share of traffic to the new model and keep the rest
                on the current one until `promote()` or `rollback()`.
            min_replicas: 0 scales to zero when idle.
            guardrails: input/output policies (`{"input": {"pii": {"action": "redact"}}, "output": {...}}`) or a
                `Guardrails` handle; applied on the endpoint itself.
            knowledge_bases: answer with retrieval from these KnowledgeBases (RAG in the gateway).
            logger: record every request and response in the prediction log.
            wait: return once it is Ready and the traffic split is in place (with a rollout bar).

        Returns:
            An `Endpoint`: `.chat()`, `.complete()`, `.predict()`, `.openai()`, `.promote()`, `.rollback()`.
        """
        return _serving.deploy(self, model_uri, name=name, namespace=namespace or self.namespace, runtime=runtime,
                               model_format=model_format, canary_percent=canary_percent,
                               min_replicas=min_replicas, max_replicas=max_replicas, guardrails=guardrails,
                               knowledge_bases=knowledge_bases, resources=resources, args=args, env=env,
                               logger=logger, wait=wait, timeout=timeout, progress=progress)

    def endpoint(self, name: str, *, namespace: str | None = None) -> _serving.Endpoint:
        """A handle on an existing InferenceService."""
        ns = namespace or self.namespace
        return _serving.Endpoint(self, name, ns, self.get("inferenceservices.serving.kserve.io", name, ns))

    # ---- knowledge and guardrails ---------------------------------------------------------------------

    def knowledge_base(self, name: str, *, sources: Sequence[str | dict[str, Any]] | None = None,
                       embedding_model: str = "all-MiniLM-L6-v2", metadata_fields: Sequence[str] = (),
                       owner_field: str | None = None, top_k: int | None = None, namespace: str | None = None,
                       wait: bool = True, timeout: float = 600.0) -> KnowledgeBase:
        """A KnowledgeBase: created (or updated) when `sources` are given, else the existing one.

        Args:
            sources: file paths or globs (`docs/*.md`, `records.jsonl`), or source dicts as the kind takes them.
            owner_field: a metadata field naming each chunk's owner; a caller then sees only their own chunks.
            top_k: chunks retrieved per question.
            wait: return once the sources are indexed.
        """
        from kaip.sdk import knowledge

        return knowledge.knowledge_base(self, name, sources=sources, embedding_model=embedding_model,
                                        metadata_fields=metadata_fields, owner_field=owner_field, top_k=top_k,
                                        namespace=namespace or self.namespace, wait=wait, timeout=timeout)

    def guardrails(self, name: str, *, inference_service: str, input: dict[str, Any] | None = None,
                   output: dict[str, Any] | None = None, namespace: str | None = None) -> Guardrails:
        """Guard an InferenceService's endpoint: a GuardrailsOrchestrator (TrustyAI) with its config.

        Args:
            input: detector → `{"action": "redact" | "block"}` applied to requests (`pii`, `hap`,
                `prompt-injection`, `bias`).
            output: the same for the model's answers.
        """
        from kaip.sdk import knowledge

        return knowledge.guardrails(self, name, inference_service=inference_service, input=input, output=output,
                                    namespace=namespace or self.namespace)


def _documents(manifest: Any) -> list[Any]:
    if isinstance(manifest, (list, tuple)):
        return [d for m in manifest for d in _documents(m)]
    if isinstance(manifest, Path):
        return _documents(manifest.read_text())
    if isinstance(manifest, str):
        try:
            return [d for d in yaml.safe_load_all(manifest) if d is not None]
        except yaml.YAMLError as err:
            raise BadRequest({"code": 400, "reason": "BadRequest", "message": f"invalid YAML: {err}"}) from err
    return [dict(manifest)]


__all__ = ["ApiError", "Client"]
