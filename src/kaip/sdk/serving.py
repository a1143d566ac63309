"""Serving from Python: deploy a model behind an InferenceService and talk to it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from kaip.sdk.errors import Failed, NotFound
from kaip.sdk.handles import Handle, pod_log_lines
from kaip.sdk.objects import Object
from kaip.sdk.progress import Bar
from kaip.serving import render
from kaip.serving.traffic import undo_spec

if TYPE_CHECKING:
    import openai

    from kaip.sdk.client import Client
    from kaip.sdk.knowledge import Guardrails, KnowledgeBase

API_VERSION = "serving.kserve.io/v1beta1"
KIND_REF = "inferenceservices.serving.kserve.io"
KB_ANNOTATION = "kaip.dev/knowledge-bases"


def predictor_spec(model_uri: str, *, model_format: str, runtime: str | None, canary_percent: int | None,
                   min_replicas: int | None, max_replicas: int | None, resources: dict[str, Any] | None,
                   args: Sequence[str], env: dict[str, str] | None, logger: bool) -> dict[str, Any]:
    """The InferenceService predictor for a model (KServe's `model` form: format, storageUri, runtime)."""
    from kaip.sdk.training import node_resources

    model: dict[str, Any] = {"modelFormat": {"name": model_format}, "storageUri": model_uri}
    if runtime:
        model["runtime"] = runtime
    if args:
        model["args"] = list(args)
    if env:
        model["env"] = [{"name": k, "value": str(v)} for k, v in env.items()]
    if (res := node_resources(resources)) is not None:
        model["resources"] = res
    predictor: dict[str, Any] = {"model": model}
    if min_replicas is not None:
        predictor["minReplicas"] = min_replicas
    if max_replicas is not None:
        predictor["maxReplicas"] = max_replicas
    if canary_percent is not None:
        predictor["canaryTrafficPercent"] = canary_percent
    if logger:
        predictor["logger"] = {"mode": "all"}
    return predictor


def deploy(client: Client, model_uri: str, *, name: str, namespace: str, runtime: str | None, model_format: str,
           canary_percent: int | None, min_replicas: int | None, max_replicas: int | None,
           guardrails: Guardrails | dict[str, Any] | None, knowledge_bases: Sequence[str | KnowledgeBase],
           resources: dict[str, Any] | None, args: Sequence[str], env: dict[str, str] | None, logger: bool,
           wait: bool, timeout: float, progress: bool | None) -> Endpoint:
    predictor = predictor_spec(model_uri, model_format=model_format, runtime=runtime, canary_percent=canary_percent,
                               min_replicas=min_replicas, max_replicas=max_replicas, resources=resources,
                               args=args, env=env, logger=logger)
    kb_names = [kb if isinstance(kb, str) else kb.name for kb in knowledge_bases]
    try:
        current = client.get(KIND_REF, name, namespace)
    except NotFound:
        current = None
    if current is None:
        if canary_percent is not None:
            raise ValueError("canary_percent applies to a new model on an existing InferenceService; deploy first")
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        if kb_names:
            meta["annotations"] = {KB_ANNOTATION: ",".join(kb_names)}
        obj = client.create({"apiVersion": API_VERSION, "kind": "InferenceService", "metadata": meta,
                             "spec": {"predictor": predictor}})
    else:
        if kb_names:
            current.metadata.setdefault("annotations", {})[KB_ANNOTATION] = ",".join(kb_names)
        current.spec["predictor"] = predictor
        current.pop("status", None)
        obj = Object(client.rest._json("PUT", client.rest.path(client.rest.resolve(KIND_REF), namespace, name),
                                       json=dict(current)))
    if isinstance(guardrails, dict):
        client.guardrails(f"{name}-guardrails", inference_service=name, input=guardrails.get("input"),
                          output=guardrails.get("output"), namespace=namespace)
    endpoint = Endpoint(client, name, namespace, obj)
    if wait:
        endpoint.wait(timeout, progress=progress)
    return endpoint


def _predictor(obj: Object) -> dict[str, Any]:
    return dict((obj.status.get("components") or {}).get("predictor") or {})


def rolled_out(obj: Object) -> bool:
    """The latest generation is observed and Ready, and its latest revision serves what was asked: all the
    traffic (it is the rolled-out revision), or the canary's share next to the previous one."""
    gen = obj.metadata.get("generation")
    if obj.status.get("observedGeneration") != gen or not obj.is_true("Ready"):
        return False
    comp = _predictor(obj)
    latest = comp.get("latestCreatedRevision")
    if not latest or comp.get("latestReadyRevision") != latest:
        return False
    want = int(obj.spec.get("predictor", {}).get("canaryTrafficPercent", 100))
    got = sum(int(t.get("percent", 0)) for t in comp.get("traffic") or [] if t.get("revisionName") == latest)
    return got == want and (want < 100 or comp.get("latestRolledoutRevision") == latest)


class Endpoint(Handle):
    """A deployed model: `.chat()`, `.complete()`, `.predict()`, `.openai()`, `.promote()`, `.rollback()`."""

    api_version = API_VERSION
    kind = "InferenceService"

    @property
    def url(self) -> str:
        """The endpoint's base URL on the gateway (needs the token)."""
        return f"{self.client.server}/serving/{self.namespace}/{self.name}"

    @property
    def traffic(self) -> list[dict[str, Any]]:
        """Revisions and their share of traffic (`revisionName`, `percent`, `latestRevision`)."""
        return list(_predictor(self.refresh()).get("traffic") or [])

    def wait(self, timeout: float | None = 600.0, *, progress: bool | None = None, poll: float = 0.5) -> Endpoint:
        """Wait until the rollout is in place (Ready, the new revision's traffic share reached), with a bar of the
        traffic share on the latest revision; raises `Failed` if its revision cannot start."""
        with Bar(f"{self.name} rollout", unit="%", total=100, show=progress) as bar:
            def show(obj: Object) -> None:
                comp = _predictor(obj)
                latest = comp.get("latestCreatedRevision")
                pct = sum(int(t.get("percent", 0)) for t in comp.get("traffic") or []
                          if t.get("revisionName") == latest)
                bar.update_to(pct, postfix={"revision": latest})
                failed = obj.condition("LatestDeploymentReady") or {}
                if failed.get("status") == "False" and failed.get("reason") not in (None, "Deploying"):
                    raise Failed(f"InferenceService {self.name}: {failed.get('message', '')}", obj)

            self._poll(rolled_out, timeout, poll, show)
        return self

    def openai(self, **kwargs: Any) -> openai.OpenAI:
        """An `openai.OpenAI` client for this endpoint's OpenAI-compatible API, with the client's token."""
        import openai

        return openai.OpenAI(base_url=f"{self.url}/openai/v1", api_key=self.client.token or "none", **kwargs)

    def chat(self, messages: str | list[dict[str, str]], *, max_tokens: int = 128, temperature: float = 0.0,
             system: str | None = None, **kwargs: Any) -> str:
        """One chat turn; returns the answer's text. `messages` may be a string (one user message)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if system:
            messages = [{"role": "system", "content": system}, *messages]
        reply = self.openai().chat.completions.create(model=self.name, messages=messages,  # type: ignore[arg-type]
                                                      max_tokens=max_tokens, temperature=temperature, **kwargs)
        return reply.choices[0].message.content or ""

    def stream(self, messages: str | list[dict[str, str]], *, max_tokens: int = 128, temperature: float = 0.0,
               system: str | None = None, **kwargs: Any) -> Iterator[str]:
        """One chat turn, the answer's text piece by piece as it is generated."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if system:
            messages = [{"role": "system", "content": system}, *messages]
        chunks = self.openai().chat.completions.create(model=self.name, messages=messages,  # type: ignore[arg-type]
                                                       max_tokens=max_tokens, temperature=temperature, stream=True,
                                                       **kwargs)
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content

    def complete(self, prompt: str, *, max_tokens: int = 64, temperature: float = 0.0, **kwargs: Any) -> str:
        """A text completion; returns the generated text."""
        reply = self.openai().completions.create(model=self.name, prompt=prompt, max_tokens=max_tokens,
                                                 temperature=temperature, **kwargs)
        return reply.choices[0].text

    def predict(self, instances: list[Any] | None = None, *, inputs: list[dict[str, Any]] | None = None
                ) -> dict[str, Any]:
        """KServe v1 `:predict` with `instances`, or Open Inference (v2) `infer` with `inputs` tensors."""
        if (instances is None) == (inputs is None):
            raise ValueError("give instances= (v1) or inputs= (Open Inference v2), one of them")
        if instances is not None:
            return self.client.rest._json("POST", f"/serving/{self.namespace}/{self.name}/v1/models/"
                                                  f"{self.name}:predict", json={"instances": instances})
        return self.client.rest._json("POST", f"/serving/{self.namespace}/{self.name}/v2/models/{self.name}/infer",
                                      json={"inputs": inputs})

    def pods(self) -> list[Object]:
        """The replicas' pods (every revision, predictor and transformer)."""
        return self.client.list("pods", self.namespace, selector=f"{render.ISVC_LABEL}={self.name}")

    def logs(self, *, follow: bool = False, revision: str | None = None) -> Iterator[str]:
        """Log lines of a replica of a revision (default: the latest one); with `follow`, as they come."""
        rev = revision or _predictor(self.refresh()).get("latestCreatedRevision")
        pods = [p for p in self.pods() if p.labels.get(render.REVISION_LABEL) == rev]
        if not pods:
            raise LookupError(f"InferenceService {self.name} has no replica of revision {rev} (scaled to zero?)")
        newest = max(pods, key=lambda p: p.metadata.get("creationTimestamp") or "")
        return pod_log_lines(self.client, self.namespace, newest.name, follow=follow)

    def _replace_predictor(self, predictor: dict[str, Any]) -> None:
        obj = self.refresh()
        obj.spec["predictor"] = predictor
        obj.pop("status", None)
        rest = self.client.rest
        self._object = Object(rest._json("PUT", rest.path(rest.resolve(KIND_REF), self.namespace, self.name),
                                         json=dict(obj)))

    def promote(self, *, wait: bool = True, timeout: float = 600.0) -> Endpoint:
        """Send all traffic to the canary (drop `canaryTrafficPercent`)."""
        predictor = dict(self.refresh().spec["predictor"])
        predictor.pop("canaryTrafficPercent", None)
        self._replace_predictor(predictor)
        return self.wait(timeout) if wait else self

    def rollback(self, *, wait: bool = True, timeout: float = 600.0) -> Endpoint:
        """Go back to the previous rolled-out revision (abandoning a canary in progress), as
        `kaip rollout undo isvc/NAME` does."""
        predictor, _ = undo_spec(self.refresh())
        self._replace_predictor(predictor)
        return self.wait(timeout) if wait else self

    def _repr_html_(self) -> str:
        from kaip.sdk import display

        return display.endpoint_html(self.refresh(), self.url)
