"""`kaip workbench open|stop|start NAME`: a Workbench's URL, and Kubeflow's stop annotation set or removed."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from kaip.api.workbench import STOP_ANNOTATION

workbench_app = typer.Typer(help="Workbenches (JupyterLab): open, stop, start.", no_args_is_help=True)
Name = Annotated[str, typer.Argument(help="Workbench name.")]
Namespace = Annotated[str | None, typer.Option("--namespace", "-n", help="Namespace (default 'default').")]


def open_url(base: str, token: str) -> str:
    """Pure: the URL to paste into a browser — the workbench's, with the caller's token for the first visit."""
    return f"{base}?token={quote(token, safe='')}" if token else base


def _workbench(client: Any, name: str, namespace: str) -> dict[str, Any]:
    return client.get(client.resolve("workbenches.kaip.dev"), name, namespace)


@workbench_app.command("open")
def open_(name: Name, namespace: Namespace = None,
          no_token: Annotated[bool, typer.Option("--no-token", help="Print the URL without your token.")] = False
          ) -> None:
    """Print the workbench's URL, with your token so that a browser can open it."""
    from kaip.cli.main import _client, _run, err, out

    def go() -> None:
        client = _client()
        ns = namespace or "default"
        status = _workbench(client, name, ns).get("status") or {}
        base = status.get("url") or f"{client.server}/workbenches/{ns}/{name}/"
        if base.startswith("/"):
            base = client.server + base
        out.print(open_url(base, "" if no_token else client.token), markup=False)
        if not no_token and client.token:
            err.print("note: this URL contains your Kaip token; do not share it (the browser keeps it in a cookie "
                      "for this workbench only and drops it from the address bar)", markup=False)
        if status.get("phase") != "Running":
            err.print(f"note: the workbench is {status.get('phase') or 'Pending'}" +
                      (f" (start it with `kaip workbench start {name} -n {ns}`)"
                       if status.get("phase") in ("Stopped", "Culled") else ""), markup=False)
    _run(go)


def _set_stopped(name: str, namespace: str | None, stopped: bool) -> None:
    from kaip.cli.main import _client, _run, out
    from kaip.store.store import now_rfc3339

    def go() -> None:
        client = _client()
        res = client.resolve("workbenches.kaip.dev")
        ns = namespace or "default"
        annotations = _workbench(client, name, ns)["metadata"].get("annotations") or {}
        word = "stopped" if stopped else "started"
        if (STOP_ANNOTATION in annotations) == stopped:
            out.print(f"workbench.kaip.dev/{name} already {word}", markup=False)
            return
        client.merge_patch(res, name, {"metadata": {"annotations": {STOP_ANNOTATION: now_rfc3339() if stopped
                                                                    else None}}}, ns)
        out.print(f"workbench.kaip.dev/{name} {word}", markup=False)
    _run(go)


@workbench_app.command("stop")
def stop(name: Name, namespace: Namespace = None) -> None:
    """Stop the workbench (its files are kept): sets the `kubeflow-resource-stopped` annotation."""
    _set_stopped(name, namespace, True)


@workbench_app.command("start")
def start(name: Name, namespace: Namespace = None) -> None:
    """Start a stopped or culled workbench again: removes the `kubeflow-resource-stopped` annotation."""
    _set_stopped(name, namespace, False)


def register(app: typer.Typer) -> None:
    app.add_typer(workbench_app, name="workbench")
