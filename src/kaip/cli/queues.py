"""`kaip top queues` and `kaip report usage`: what the queues hold now, and who used what."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from kaip.cli.client import Client
from kaip.cli.printers import render
from kaip.scheduling.accounting import parse_duration, resource_hours, resource_label, usage_report

top_app = typer.Typer(help="Show what queues hold now.", no_args_is_help=True)
report_app = typer.Typer(help="Reports from recorded admissions.", no_args_is_help=True)


def _usage_cell(flavors: list[dict[str, Any]], nominal: dict[tuple[str, str], str]) -> str:
    parts = []
    for f in flavors:
        for r in f.get("resources") or []:
            cell = f"{f['name']}/{r['name']}={r.get('total', '0')}"
            if (f["name"], r["name"]) in nominal:
                cell += f"/{nominal[(f['name'], r['name'])]}"
            if r.get("borrowed") not in (None, "0"):
                cell += f" (borrowed {r['borrowed']})"
            parts.append(cell)
    return ", ".join(parts) or "-"


def top_queue_rows(cqs: list[dict[str, Any]], lqs: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Two tables: ClusterQueues (usage against nominal quota, borrowed) and LocalQueues."""
    cq_rows = []
    for cq in sorted(cqs, key=lambda o: o["metadata"]["name"]):
        spec, status = cq.get("spec") or {}, cq.get("status") or {}
        nominal = {(f["name"], r["name"]): str(r["nominalQuota"]) for rg in spec.get("resourceGroups") or []
                   for f in rg.get("flavors") or [] for r in f.get("resources") or []}
        cq_rows.append([cq["metadata"]["name"], spec.get("cohortName") or "-", status.get("pendingWorkloads", 0),
                        status.get("reservingWorkloads", 0), status.get("admittedWorkloads", 0),
                        _usage_cell(status.get("flavorsUsage") or [], nominal)])
    lq_rows = []
    for lq in sorted(lqs, key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"])):
        status = lq.get("status") or {}
        lq_spec = lq.get("spec") or {}
        lq_rows.append([lq["metadata"]["namespace"], lq["metadata"]["name"], lq_spec.get("clusterQueue", ""),
                        status.get("pendingWorkloads", 0), status.get("admittedWorkloads", 0),
                        _usage_cell(status.get("flavorsUsage") or [], {})])
    cq_header = ["CLUSTERQUEUE", "COHORT", "PENDING", "RESERVING", "ADMITTED", "USAGE (flavor/resource=used/nominal)"]
    return (render(cq_header, cq_rows),
            render(["NAMESPACE", "LOCALQUEUE", "CLUSTERQUEUE", "PENDING", "ADMITTED", "USAGE"], lq_rows))


@top_app.command("queues")
def top_queues() -> None:
    """Usage, borrowing, pending and admitted workloads per ClusterQueue and LocalQueue."""
    from kaip.cli.main import _run, out

    def go() -> None:
        client = Client()
        cqs = client.list(client.resolve("clusterqueues.kueue.x-k8s.io"))["items"]
        lqs = client.list(client.resolve("localqueues.kueue.x-k8s.io"))["items"]
        cq_lines, lq_lines = top_queue_rows(cqs, lqs)
        for line in [*cq_lines, "", *lq_lines]:
            out.print(line, markup=False)
    _run(go)


@report_app.command("usage")
def report_usage(since: Annotated[str, typer.Option(help="How far back: 30m, 12h, 7d, 2w.")] = "7d",
                 by: Annotated[str, typer.Option(help="Group by team (namespace), queue or job.")] = "team") -> None:
    """Resource-hours consumed, from recorded admissions."""
    from kaip.cli.main import _fail, _run, out

    try:
        window = parse_duration(since)
    except ValueError as e:
        _fail(str(e))
    if by not in ("team", "queue", "job"):
        _fail(f"unknown grouping {by!r}: use team, queue or job")

    def go() -> None:
        client = Client()
        workloads = client.list(client.resolve("workloads.kueue.x-k8s.io"))["items"]
        now = time.time()
        rows = usage_report(workloads, since=now - window, now=now, by=by)
        resources = sorted({r for row in rows for r in row.seconds})
        header = [by.upper(), "WORKLOADS", *[resource_label(r) for r in resources]]
        table = [[row.key, row.workloads, *[f"{resource_hours(r, row):.4g}" for r in resources]] for row in rows]
        for line in render(header, table):
            out.print(line, markup=False)
    _run(go)


def register(app: typer.Typer) -> None:
    app.add_typer(top_app, name="top")
    app.add_typer(report_app, name="report")
