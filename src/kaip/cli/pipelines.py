"""`kaip run -f FILE [-n NS] [-p name=value …] [--no-cache] [--wait]`: start a pipeline run; and
`kaip gitops rollback APP ID`.

FILE is Kubeflow Pipelines IR YAML as `kfp.compiler.Compiler().compile` writes it, a Python file defining a
`@dsl.pipeline` (compiled here with the real kfp SDK), or a PipelineRun manifest.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from kaip.cli.client import Client, ClientError
from kaip.pipelines.files import (  # noqa: F401 (re-exported: the CLI's names)
    PipelineFileError,
    compile_python,
    load_ir_text,
    parse_params,
    run_document,
)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
API = "kaip.dev/v1alpha1"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def follow(client: Client, namespace: str, name: str, *, poll: float = 0.5) -> str:
    res = client.for_kind(API, "PipelineRun")
    seen: dict[str, str] = {}
    while True:
        run = client.get(res, name, namespace)
        status = run.get("status") or {}
        for task_id, rec in sorted((status.get("tasks") or {}).items()):
            phase = rec.get("phase", "")
            if rec.get("cached"):
                phase += " (cached)"
            if seen.get(task_id) != phase:
                seen[task_id] = phase
                extra = f": {rec['message']}" if rec.get("message") and rec.get("phase") != "Succeeded" else ""
                out.print(f"  {task_id}: {phase}{extra}", markup=False)
        if status.get("phase") in ("Succeeded", "Failed"):
            return status["phase"]
        time.sleep(poll)


def run(filename: Annotated[Path, typer.Option("--filename", "-f", help="IR YAML, a Python pipeline file or a "
                                                                           "PipelineRun manifest.")],
        namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="Namespace (default: 'default').")]
        = None,
        param: Annotated[list[str] | None, typer.Option("--param", "-p", help="A pipeline parameter: name=value.")]
        = None,
        no_cache: Annotated[bool, typer.Option("--no-cache", help="Run every task, even if cached.")] = False,
        wait: Annotated[bool, typer.Option("--wait", help="Follow the run; exit non-zero if it fails.")] = False,
        queue: Annotated[str | None, typer.Option("--queue", help="A LocalQueue: each task waits for quota for its "
                                                                   "CPU / memory / accelerator requests.")] = None,
        ) -> None:
    """Start a pipeline run (Kubeflow Pipelines IR, or a Python file with a @dsl.pipeline)."""
    import httpx

    ns = namespace or "default"
    try:
        doc = run_document(filename, parse_params(param or []), caching=not no_cache, queue=queue)
        client = Client()
        created = client.create(client.for_kind(API, "PipelineRun"), doc, ns)
        name = created["metadata"]["name"]
        out.print(f"pipelinerun/{name} created", markup=False)
        if not wait:
            return
        phase = follow(client, ns, name)
        final = client.get(client.for_kind(API, "PipelineRun"), name, ns)
        message = (final.get("status") or {}).get("message", "")
        out.print(f"pipelinerun/{name} {phase}" + (f": {message}" if phase != "Succeeded" else ""), markup=False)
        if phase != "Succeeded":
            raise typer.Exit(1)
    except (PipelineFileError, OSError, yaml.YAMLError) as e:
        err.print(f"error: {e}", markup=False)
        raise typer.Exit(1) from None
    except ClientError as e:
        err.print(f"error: {e}", markup=False)
        raise typer.Exit(1) from None
    except httpx.HTTPError as e:
        err.print(f"error: cannot reach the Kaip server: {e or e.__class__.__name__}", markup=False)
        raise typer.Exit(1) from None




gitops_app = typer.Typer(help="Argo CD Applications synced from git.", no_args_is_help=True)


@gitops_app.command("rollback")
def rollback(app_name: Annotated[str, typer.Argument(help="Application name.")],
             history_id: Annotated[int, typer.Argument(help="The id of a status.history entry.")],
             namespace: Annotated[str | None, typer.Option("--namespace", "-n")] = None,
             prune: Annotated[bool, typer.Option("--prune", help="Delete what that revision does not have.")] = False,
             ) -> None:
    """Sync an Application back to the revision of a history entry (as `argocd app rollback`)."""
    import httpx

    ns = namespace or "default"
    try:
        client = Client()
        res = client.for_kind("argoproj.io/v1alpha1", "Application")
        app = client.get(res, app_name, ns)
        automated = (app["spec"].get("syncPolicy") or {}).get("automated")
        if automated is not None and automated.get("enabled", True) is not False:
            raise PipelineFileError("rollback cannot be initiated when auto-sync is enabled")
        entry = next((h for h in (app.get("status") or {}).get("history") or [] if h.get("id") == history_id), None)
        if entry is None:
            ids = ", ".join(str(h.get("id")) for h in (app.get("status") or {}).get("history") or []) or "none"
            raise PipelineFileError(f"application {app_name!r} has no history entry {history_id} (ids: {ids})")
        operation = {"sync": {"revision": entry["revision"], "prune": prune,
                              **({"source": entry["source"]} if entry.get("source") else {})},
                     "initiatedBy": {"username": "kaip"}}
        client.merge_patch(res, app_name, {"operation": operation}, ns)
        out.print(f"application/{app_name} rolling back to {entry['revision'][:12]} (history {history_id})",
                  markup=False)
    except PipelineFileError as e:
        err.print(f"error: {e}", markup=False)
        raise typer.Exit(1) from None
    except ClientError as e:
        err.print(f"error: {e}", markup=False)
        raise typer.Exit(1) from None
    except httpx.HTTPError as e:
        err.print(f"error: cannot reach the Kaip server: {e or e.__class__.__name__}", markup=False)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.add_typer(gitops_app, name="gitops")


def _app(client: Client, name: str, ns: str) -> tuple[Any, dict[str, Any]]:
    res = client.for_kind("argoproj.io/v1alpha1", "Application")
    return res, client.get(res, name, ns)


@gitops_app.command("sync")
def sync(app_name: Annotated[str, typer.Argument(help="Application name.")],
         namespace: Annotated[str | None, typer.Option("--namespace", "-n")] = None,
         prune: Annotated[bool, typer.Option("--prune", help="Delete managed resources no longer in git.")] = False,
         ) -> None:
    """Sync an Application to its target revision now (as `argocd app sync`)."""
    try:
        client = Client()
        res, _ = _app(client, app_name, namespace or "default")
        client.merge_patch(res, app_name, {"operation": {"sync": {"prune": prune},
                                                         "initiatedBy": {"username": "kaip"}}}, namespace or "default")
        out.print(f"application/{app_name} sync requested", markup=False)
    except ClientError as e:
        err.print(f"error: {e}", markup=False)
        raise typer.Exit(1) from None


def _shown(obj: dict[str, Any] | None) -> list[str]:
    if obj is None:
        return []
    meta = dict(obj.get("metadata") or {})
    notes = {k: v for k, v in (meta.get("annotations") or {}).items() if k != LAST_APPLIED}  # the apply's own record
    meta["annotations"] = notes or None
    view = {"metadata": {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if meta.get(k)},
            **{k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}}
    return yaml.safe_dump(view, sort_keys=True).splitlines(keepends=True)


@gitops_app.command("diff")
def diff(app_name: Annotated[str, typer.Argument(help="Application name.")],
         namespace: Annotated[str | None, typer.Option("--namespace", "-n")] = None) -> None:
    """Show live vs desired (git, normalised by a server-side dry run); exit 1 when they differ, as `kubectl diff`."""
    import difflib

    from kaip.gitops.git import GitError, manifest_files, resolve

    ns = namespace or "default"
    try:
        client = Client()
        _, app = _app(client, app_name, ns)
        src, dest_ns = app["spec"]["source"], app["spec"]["destination"].get("namespace") or ns
        revision = resolve(src["repoURL"], src.get("targetRevision"))
        files = manifest_files(src["repoURL"], revision, src.get("path"),
                               bool((src.get("directory") or {}).get("recurse")))
        changed = 0
        wanted: set[tuple[str, str, str]] = set()
        for path, text in files.items():
            for doc in (d for d in yaml.safe_load_all(text) if isinstance(d, dict)):
                res = client.for_kind(doc["apiVersion"], doc["kind"])
                target_ns = (doc.get("metadata") or {}).get("namespace") or dest_ns if res.namespaced else None
                name = doc["metadata"]["name"]
                wanted.add((res.kind, target_ns or "", name))
                try:
                    live: dict[str, Any] | None = client.get(res, name, target_ns)
                except ClientError as e:
                    if e.code != 404:
                        raise
                    live = None
                desired, _ = client.apply(res, doc, target_ns, dry_run=True)
                lines = list(difflib.unified_diff(_shown(live), _shown(desired), f"live/{res.kind}/{name}",
                                                  f"git/{path}@{revision[:7]}/{res.kind}/{name}"))
                if lines:
                    changed += 1
                    out.print("".join(lines), markup=False, end="")
        for r in (app.get("status") or {}).get("resources") or []:
            if (r["kind"], r.get("namespace", ""), r["name"]) not in wanted:
                changed += 1
                out.print(f"{r['kind']}/{r['name']}: not in git at {revision[:7]} (pruned by a sync with prune)",
                          markup=False)
        if changed:
            raise typer.Exit(1)
    except (GitError, ClientError) as e:
        err.print(f"error: {e}", markup=False)
        raise typer.Exit(2) from None
