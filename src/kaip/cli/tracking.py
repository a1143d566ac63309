"""`kaip experiments`, `kaip runs`, `kaip models` and `kaip lineage`: the tracking and registry API from the shell.

The commands speak the same MLflow REST protocol as the `mlflow` client, under `/namespaces/<ns>/` when a
namespace is given, so they see exactly what a training script with the same token sees.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from kaip import config
from kaip.cli.printers import render

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

runs_app = typer.Typer(help="Tracked runs: list, show and compare.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry: models, versions and aliases.", no_args_is_help=True)

Namespace = Annotated[str | None, typer.Option("--namespace", "-n",
                                               help="Namespace (default: the token's own namespace).")]
Output = Annotated[str | None, typer.Option("--output", "-o", help="json for the raw document.")]


class TrackingError(Exception):
    def __init__(self, message: str, error_code: str | None = None) -> None:
        super().__init__(message)
        self.error_code = error_code


class TrackingClient:
    def __init__(self, namespace: str | None = None) -> None:
        cfg = config.client_config()
        self.server = cfg.server
        prefix = f"/namespaces/{namespace}" if namespace else ""
        headers = {"Authorization": f"Bearer {cfg.token}"} if cfg.token else {}
        self.http = httpx.Client(base_url=cfg.server + prefix, headers=headers, timeout=60)
        self.root = httpx.Client(base_url=cfg.server, headers=headers, timeout=60)

    def call(self, method: str, endpoint: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        path = f"/api/2.0/mlflow/{endpoint}"
        if method == "GET":
            resp = self.http.get(path, params={k: v for k, v in (body or {}).items() if v is not None})
        else:
            resp = self.http.request(method, path, json=body or {})
        return self._check(resp)

    @staticmethod
    def _check(resp: httpx.Response) -> dict[str, Any]:
        try:
            data = resp.json()
        except ValueError:
            data = {"message": resp.text or resp.reason_phrase}
        if resp.status_code >= 400:
            raise TrackingError(data.get("message") or f"HTTP {resp.status_code}", data.get("error_code"))
        return data

    def lineage(self, uri: str, namespace: str | None) -> dict[str, Any]:
        params = {"uri": uri, **({"namespace": namespace} if namespace else {})}
        return self._check(self.root.get("/apis/kaip.dev/v1alpha1/lineage", params=params))

    def experiment_id(self, ref: str) -> str:
        if ref.isdigit():
            return ref
        return self.call("GET", "experiments/get-by-name", {"experiment_name": ref})["experiment"]["experiment_id"]


def _go(fn: Callable[[], None]) -> None:
    try:
        fn()
    except TrackingError as e:
        err.print(f"error: {e}", markup=False)
        raise typer.Exit(1) from None
    except httpx.ConnectError:
        err.print(f"error: cannot reach the Kaip server at {config.client_config().server}: is `kaip up` running?",
                  markup=False)
        raise typer.Exit(1) from None


def _print(header: list[str], rows: list[list[Any]], empty: str) -> None:
    if not rows:
        err.print(empty, markup=False)
        return
    for line in render(header, rows):
        out.print(line, markup=False)


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else ""


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _kv(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {i["key"]: i["value"] for i in items}


# ---- experiments ------------------------------------------------------------------------------------

def experiments(namespace: Namespace = None, output: Output = None) -> None:
    """List experiments."""
    def go() -> None:
        found = TrackingClient(namespace).call("POST", "experiments/search", {"max_results": 1000})
        if output == "json":
            out.print(json.dumps(found, indent=2), markup=False)
            return
        rows = [[e["experiment_id"], e["name"], e.get("lifecycle_stage", ""), _when(e.get("creation_time"))]
                for e in found.get("experiments", [])]
        _print(["ID", "NAME", "STAGE", "CREATED"], rows, "No experiments found.")
    _go(go)


# ---- runs -------------------------------------------------------------------------------------------

@runs_app.command("list")
def runs_list(experiment: Annotated[str, typer.Argument(help="Experiment name or id.")],
              filter_string: Annotated[str | None, typer.Option("--filter", "-f",
                                                                help="MLflow filter, e.g. \"metrics.loss < 0.5\"")]
              = None,
              order_by: Annotated[list[str] | None, typer.Option("--order-by", help="e.g. 'metrics.loss ASC'")] = None,
              max_results: Annotated[int, typer.Option("--max", help="At most this many runs.")] = 100,
              namespace: Namespace = None, output: Output = None) -> None:
    """List an experiment's runs, newest first, with their latest metrics."""
    def go() -> None:
        client = TrackingClient(namespace)
        found = client.call("POST", "runs/search", {"experiment_ids": [client.experiment_id(experiment)],
                                                    "filter": filter_string or "", "order_by": order_by or [],
                                                    "max_results": max_results})
        runs = found.get("runs", [])
        if output == "json":
            out.print(json.dumps(found, indent=2), markup=False)
            return
        keys = sorted({m["key"] for r in runs for m in r["data"].get("metrics", [])})[:6]
        rows = []
        for r in runs:
            metrics = _kv(r["data"].get("metrics", []))
            rows.append([r["info"]["run_id"], r["info"].get("run_name", ""), r["info"]["status"],
                         _when(r["info"].get("start_time"))] + [_num(metrics[k]) if k in metrics else "" for k in keys])
        _print(["RUN ID", "NAME", "STATUS", "STARTED", *[k.upper() for k in keys]], rows, "No runs found.")
    _go(go)


@runs_app.command("get")
def runs_get(run_id: str, output: Output = None) -> None:
    """Show one run: info, params, latest metrics, tags and inputs."""
    def go() -> None:
        run = TrackingClient().call("GET", "runs/get", {"run_id": run_id})["run"]
        if output == "json":
            out.print(json.dumps(run, indent=2), markup=False)
            return
        info = run["info"]
        for label, value in (("Run", info["run_id"]), ("Name", info.get("run_name")),
                             ("Experiment", info["experiment_id"]), ("Status", info["status"]),
                             ("User", info.get("user_id")), ("Started", _when(info.get("start_time"))),
                             ("Ended", _when(info.get("end_time"))), ("Artifacts", info.get("artifact_uri"))):
            out.print(f"{label + ':':<12}{value or ''}", markup=False)
        for section in ("params", "metrics", "tags"):
            items = run["data"].get(section, [])
            out.print(f"{section.capitalize()}:" + ("" if items else "  <none>"), markup=False)
            for i in items:
                if section == "tags" and i["key"].startswith("mlflow.") and i["key"] != "mlflow.source.git.commit":
                    continue
                step = f"  (step {i['step']})" if section == "metrics" else ""
                out.print(f"  {i['key']} = {_num(i['value'])}{step}", markup=False)
        inputs = (run.get("inputs") or {}).get("dataset_inputs", [])
        if inputs:
            out.print("Datasets:", markup=False)
            for di in inputs:
                ds = di["dataset"]
                out.print(f"  {ds['name']}  digest={ds['digest']}  source={ds['source']}", markup=False)
    _go(go)


@runs_app.command("compare")
def runs_compare(run_ids: Annotated[list[str], typer.Argument(help="Two or more run ids.")],
                 output: Output = None) -> None:
    """Params and final metrics of several runs, side by side."""
    def go() -> None:
        client = TrackingClient()
        runs = [client.call("GET", "runs/get", {"run_id": r})["run"] for r in run_ids]
        if output == "json":
            out.print(json.dumps(runs, indent=2), markup=False)
            return
        header = ["", *[r["info"].get("run_name") or r["info"]["run_id"][:8] for r in runs]]
        rows: list[list[Any]] = [["run_id", *[r["info"]["run_id"] for r in runs]],
                                 ["status", *[r["info"]["status"] for r in runs]]]
        for section, prefix in (("params", "param"), ("metrics", "metric")):
            per_run = [_kv(r["data"].get(section, [])) for r in runs]
            for key in sorted({k for d in per_run for k in d}):
                values = [_num(d[key]) if key in d else "-" for d in per_run]
                marker = " *" if len(set(values)) > 1 else ""
                rows.append([f"{prefix}.{key}{marker}", *values])
        for line in render(header, rows):
            out.print(line, markup=False)
        out.print("(* differs between runs)", markup=False)
    _go(go)


# ---- models -----------------------------------------------------------------------------------------

@models_app.command("list")
def models_list(namespace: Namespace = None, output: Output = None) -> None:
    """List registered models with their latest version and aliases."""
    def go() -> None:
        found = TrackingClient(namespace).call("GET", "registered-models/search", {"max_results": 1000})
        if output == "json":
            out.print(json.dumps(found, indent=2), markup=False)
            return
        rows = []
        for m in found.get("registered_models", []):
            latest = max((int(v["version"]) for v in m.get("latest_versions", [])), default=None)
            aliases = ", ".join(f"{a['alias']}={a['version']}" for a in m.get("aliases", []))
            rows.append([m["name"], latest or "", aliases, _when(m.get("last_updated_timestamp"))])
        _print(["NAME", "LATEST", "ALIASES", "UPDATED"], rows, "No registered models found.")
    _go(go)


@models_app.command("versions")
def models_versions(name: str, namespace: Namespace = None, output: Output = None) -> None:
    """List a model's versions."""
    def go() -> None:
        found = TrackingClient(namespace).call("GET", "model-versions/search",
                                               {"filter": f"name = '{name}'", "max_results": 1000})
        if output == "json":
            out.print(json.dumps(found, indent=2), markup=False)
            return
        rows = [[v["version"], v.get("current_stage", ""), ",".join(v.get("aliases", [])), v.get("run_id", ""),
                 v.get("source", ""), _when(v.get("creation_timestamp"))] for v in found.get("model_versions", [])]
        _print(["VERSION", "STAGE", "ALIASES", "RUN", "SOURCE", "CREATED"], rows, f"No versions of {name!r} found.")
    _go(go)


@models_app.command("get")
def models_get(ref: Annotated[str, typer.Argument(help="NAME, NAME/VERSION, NAME@ALIAS or a models:/ URI.")],
               namespace: Namespace = None, output: Output = None) -> None:
    """Show a registered model, or one of its versions."""
    def go() -> None:
        client = TrackingClient(namespace)
        spec = ref.removeprefix("models:/")
        if "@" in spec:
            name, alias = spec.split("@", 1)
            doc = client.call("GET", "registered-models/alias", {"name": name, "alias": alias})
        elif "/" in spec:
            name, version = spec.split("/", 1)
            doc = client.call("GET", "model-versions/get", {"name": name, "version": version})
        else:
            doc = client.call("GET", "registered-models/get", {"name": spec})
        if output == "json" or "registered_model" in doc:
            out.print(json.dumps(doc, indent=2), markup=False)
            return
        mv = doc["model_version"]
        for label, key in (("Model", "name"), ("Version", "version"), ("Stage", "current_stage"),
                           ("Status", "status"), ("Source", "source"), ("Run", "run_id"),
                           ("Description", "description")):
            out.print(f"{label + ':':<13}{mv.get(key) or ''}", markup=False)
        out.print(f"{'Aliases:':<13}{', '.join(mv.get('aliases', []))}", markup=False)
        tags = ", ".join(f"{t['key']}={t['value']}" for t in mv.get("tags", []))
        out.print(f"{'Tags:':<13}{tags}", markup=False)
    _go(go)


@models_app.command("alias")
def models_alias(name: str, alias: str,
                 version: Annotated[str | None, typer.Argument(help="Version to point the alias at.")] = None,
                 delete: Annotated[bool, typer.Option("--delete", help="Remove the alias.")] = False,
                 namespace: Namespace = None) -> None:
    """Point an alias (champion, candidate, ...) at a version, or remove it with --delete."""
    def go() -> None:
        client = TrackingClient(namespace)
        if delete:
            client.call("DELETE", "registered-models/alias", {"name": name, "alias": alias})
            out.print(f"alias {name}@{alias} deleted", markup=False)
            return
        if version is None:
            mv = client.call("GET", "registered-models/alias", {"name": name, "alias": alias})["model_version"]
            out.print(f"{name}@{alias} -> version {mv['version']}", markup=False)
            return
        client.call("POST", "registered-models/alias", {"name": name, "alias": alias, "version": version})
        out.print(f"{name}@{alias} -> version {version}", markup=False)
    _go(go)


IMPORT_EXPERIMENT = "model-imports"
SOURCE_SHA_TAG = "kaip.source_sha256"


def _versions_of(client: TrackingClient, name: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    token = None
    while True:
        page = client.call("GET", "model-versions/search", {"filter": f"name = '{name}'", "max_results": 1000,
                                                            "page_token": token})
        found += page.get("model_versions", [])
        token = page.get("next_page_token")
        if not token:
            return found


def _get_or_create(get: Callable[[], Any], create: Callable[[], Any]) -> Any:
    try:
        return get()
    except TrackingError as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        return create()
    except TrackingError as e:  # made meanwhile by another import
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return get()


def _upload(client: TrackingClient, artifact_path: str, path: Path) -> None:
    from kaip.sdk.tracking import upload_file

    client._check(upload_file(client.http, artifact_path, path))


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@models_app.command("import")
def models_import(source: Annotated[Path, typer.Argument(help="A .gguf file, a folder holding one, or a Hugging "
                                                              "Face model folder.")],
                  name: Annotated[str, typer.Option("--name", help="The registered model to add a version to.")],
                  alias: Annotated[str | None, typer.Option("--alias", help="Point this alias at the version.")]
                  = None,
                  gguf_file: Annotated[str | None, typer.Option("--gguf-file", help="Which .gguf in the folder.")]
                  = None,
                  namespace: Namespace = None) -> None:
    """Convert a GGUF (or Hugging Face folder) to safetensors and register it as a new version of NAME."""
    import tempfile

    from kaip.tracking import imports
    from kaip.tracking.service import BASE_MODEL_TAG  # the lineage tag: source -> run

    def go() -> None:
        src = imports.locate(source, gguf_file)
        sha = imports.source_sha256(src)
        client = TrackingClient(namespace)
        for mv in _versions_of(client, name):
            if _kv(mv.get("tags", [])).get(SOURCE_SHA_TAG) == sha:
                version = mv["version"]
                err.print(f"{src.name} is already imported as {name} version {version} (sha256 {sha[:12]}…); "
                          "nothing uploaded", markup=False)
                break
        else:
            version = _import(client, src, sha)
        if alias:
            client.call("POST", "registered-models/alias", {"name": name, "alias": alias, "version": version})
            err.print(f"{name}@{alias} -> version {version}", markup=False)
        out.print(f"models:/{name}/{version}", markup=False)

    def _import(client: TrackingClient, src: imports.Source, sha: str) -> str:
        cached = imports.is_cached(sha)
        how = "from the conversion cache" if cached else "15-30 s for a 135M-parameter GGUF; cached by its sha256"
        err.print(f"converting {src.path} to safetensors ({how})…", markup=False)
        parent = imports.cache_root() / "imports"
        try:
            parent.mkdir(parents=True, exist_ok=True)  # next to the cache, so its files are hard-linked, not copied
        except OSError:
            parent = Path(tempfile.gettempdir())
        with tempfile.TemporaryDirectory(prefix=".kaip-import-", dir=parent) as tmp:
            folder = Path(tmp) / "model"
            facts = imports.convert(src.path, folder, gguf_file=src.path.name if src.kind == "gguf" else None,
                                    sha256=sha)
            experiment_id = _get_or_create(
                lambda: client.experiment_id(IMPORT_EXPERIMENT),
                lambda: client.call("POST", "experiments/create", {"name": IMPORT_EXPERIMENT})["experiment_id"])
            run = client.call("POST", "runs/create", {
                "experiment_id": experiment_id, "run_name": f"import-{name}", "start_time": int(time.time() * 1000),
                "tags": [{"key": SOURCE_SHA_TAG, "value": sha}]})["run"]["info"]
            run_id = run["run_id"]
            try:
                files = sorted(p for p in folder.rglob("*") if p.is_file())
                base = run["artifact_uri"].removeprefix("mlflow-artifacts:").lstrip("/")
                err.print(f"uploading {len(files)} files, {_mb(sum(p.stat().st_size for p in files))} to run "
                          f"{run_id}…", markup=False)
                for p in files:
                    _upload(client, f"{base}/model/{p.relative_to(folder).as_posix()}", p)
                client.call("POST", "runs/log-batch", {"run_id": run_id, "params": [
                    {"key": "architecture", "value": str(facts["architecture"])},
                    {"key": "parameters", "value": str(facts["parameters"])},
                    {"key": "source", "value": src.name},
                    {"key": "dtype", "value": str(facts["dtype"])},
                ], "tags": [{"key": BASE_MODEL_TAG, "value": src.path.resolve().as_uri()}]})
                client.call("POST", "runs/update", {"run_id": run_id, "status": "FINISHED",
                                                    "end_time": int(time.time() * 1000)})
            except BaseException:
                try:
                    client.call("POST", "runs/update", {"run_id": run_id, "status": "FAILED",
                                                        "end_time": int(time.time() * 1000)})
                except Exception:  # the original error is the one to report
                    pass
                raise
        _get_or_create(lambda: client.call("GET", "registered-models/get", {"name": name}),
                       lambda: client.call("POST", "registered-models/create", {"name": name}))
        mv = client.call("POST", "model-versions/create", {
            "name": name, "source": f"mlflow-artifacts:/{base}/model", "run_id": run_id,
            "description": f"Imported from {src.name} ({facts['architecture']}, {facts['parameters']:,} parameters, "
                           f"{facts['dtype']})",
            "tags": [{"key": SOURCE_SHA_TAG, "value": sha}, {"key": "kaip.source", "value": src.name},
                     {"key": "kaip.format", "value": imports.FORMAT}]})["model_version"]
        err.print(f"registered {name} version {mv['version']} from {src.name} (run {run_id})", markup=False)
        return str(mv["version"])

    try:
        _go(go)
    except imports.ModelImportError as e:
        err.print(f"error: {e}", markup=False)
        raise typer.Exit(1) from None


# ---- lineage ----------------------------------------------------------------------------------------

def _describe(node: dict[str, Any]) -> str:
    a = node.get("attributes", {})
    kind = node["kind"]
    if kind == "modelversion":
        extra = [f"stage={a.get('stage')}"] + ([f"aliases={','.join(a['aliases'])}"] if a.get("aliases") else [])
        if a.get("content_digest"):
            extra.append(f"digest={a['content_digest']}")
        return f"model version {node.get('uri', node['name'])}  " + "  ".join(extra)
    if kind == "run":
        parts = [f"run {node['name']} ({node.get('uri', node['id'])})", f"status={a.get('status')}"]
        if a.get("code_version"):
            parts.append(f"commit={a['code_version'][:12]}")
        if a.get("params"):
            parts.append("params: " + ", ".join(f"{k}={v}" for k, v in sorted(a["params"].items())))
        if a.get("metrics"):
            parts.append("metrics: " + ", ".join(f"{k}={_num(v)}" for k, v in sorted(a["metrics"].items())))
        return "  ".join(parts)
    if kind == "dataset":
        return f"dataset {node['name']}  digest={a.get('digest')}  source={a.get('source')}"
    if kind == "model":
        return f"base model {node['name']}"
    return f"{kind} {node['name']}"


RELATION_UP = {"produced": "made by", "input-to": "trained on", "base-model-of": "fine-tuned from"}
RELATION_DOWN = {"produced": "produced", "input-to": "used by", "base-model-of": "base of"}


def lineage_tree(graph: dict[str, Any]) -> list[str]:
    """The graph as two trees below the root: what it was made from, and what was made from it."""
    nodes = {n["id"]: n for n in graph["nodes"]}
    ins: dict[str, list[tuple[str, str]]] = {}
    outs: dict[str, list[tuple[str, str]]] = {}
    for e in graph["edges"]:
        ins.setdefault(e["target"], []).append((e["source"], e["relation"]))
        outs.setdefault(e["source"], []).append((e["target"], e["relation"]))
    root = graph["root"]
    lines = [_describe(nodes[root])]

    def walk(key: str, links: dict[str, list[tuple[str, str]]], names: dict[str, str], prefix: str,
             seen: set[str]) -> None:
        children = sorted(links.get(key, []))
        for i, (child, rel) in enumerate(children):
            last = i == len(children) - 1
            label = names.get(rel, rel)
            lines.append(f"{prefix}{'└── ' if last else '├── '}{label}: {_describe(nodes[child])}")
            if child not in seen:
                walk(child, links, names, prefix + ("    " if last else "│   "), seen | {child})

    walk(root, ins, RELATION_UP, "", {root})
    if outs.get(root):
        lines.append("downstream:")
        walk(root, outs, RELATION_DOWN, "", {root})
    return lines


def lineage(uri: Annotated[str, typer.Argument(help="models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID")],
            namespace: Namespace = None, output: Output = None) -> None:
    """Show where a model version came from (datasets, runs, base models) and what was made from it."""
    def go() -> None:
        graph = TrackingClient().lineage(uri, namespace)
        if output == "json":
            out.print(json.dumps(graph, indent=2), markup=False)
            return
        for line in lineage_tree(graph):
            out.print(line, markup=False)
    _go(go)


def register(app: typer.Typer) -> None:
    app.command("experiments")(experiments)
    app.add_typer(runs_app, name="runs")
    app.add_typer(models_app, name="models")
    app.command("lineage")(lineage)
