"""`kaip`: start the platform and work with it the way `kubectl` works with a cluster."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from kaip import __version__, config
from kaip.cli import manifests
from kaip.cli.client import Client, ClientError, Resource
from kaip.cli.printers import age, print_table, table_rows
from kaip.training import replicas

app = typer.Typer(help="Kaip: a Kubernetes-native AI platform on one machine.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
create_app = typer.Typer(help="Create a token or a namespace.", no_args_is_help=True)
app.add_typer(create_app, name="create")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

Namespace = Annotated[str | None, typer.Option("--namespace", "-n", help="Namespace (default: 'default').")]
AllNamespaces = Annotated[bool, typer.Option("--all-namespaces", "-A", help="List across every namespace you may see.")]


def _fail(message: str, code: int = 1) -> None:
    err.print(f"error: {message}", markup=False)
    raise typer.Exit(code)


def _client() -> Client:
    return Client()


def _ns(res: Resource, namespace: str | None) -> str | None:
    return (namespace or "default") if res.namespaced else None


def _run(fn: Any) -> Any:
    """Turn server and network errors into one clear line and a non-zero exit."""
    import httpx

    try:
        return fn()
    except ClientError as e:
        _fail(str(e))
    except manifests.ManifestError as e:
        _fail(str(e))
    except (httpx.ConnectError, httpx.ConnectTimeout):
        cfg = config.client_config()
        _fail(f"cannot reach the Kaip server at {cfg.server}: is `kaip up` running?")
    except (httpx.UnsupportedProtocol, httpx.InvalidURL):
        cfg = config.client_config()
        _fail(f"invalid Kaip server address {cfg.server!r}: it must look like http://HOST:PORT")
    except httpx.HTTPError as e:  # the connection broke or timed out mid-request
        cfg = config.client_config()
        _fail(f"request to the Kaip server at {cfg.server} failed: {e or e.__class__.__name__}")


# ---- up ---------------------------------------------------------------------------------------------

@app.command()
def up(port: Annotated[int, typer.Option(help="Port to listen on.")] = config.DEFAULT_PORT,
       host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
       home: Annotated[Path | None, typer.Option(help="State directory (default $KAIP_HOME or ~/.kaip).")] = None,
       database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL (default SQLite in home).")] = None,
       ) -> None:
    """Start the platform in the foreground: API, controllers and the local executor."""
    from kaip.server.runtime import AlreadyRunning, KaipServer

    logging.basicConfig(level=os.environ.get("KAIP_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "faiss", "sentence_transformers"):  # their INFO lines say nothing a user needs
        logging.getLogger(noisy).setLevel(logging.WARNING)
    home_dir = config.home(home)
    try:
        server = KaipServer(home_dir, database_url=database_url)
    except AlreadyRunning as e:
        _fail(str(e))
    err.print(f"Kaip {__version__} on http://{host}:{port}  (home {home_dir}; credentials in "
              f"{config.credentials_path(home_dir)})")
    server.serve(host, port)


# ---- apply / delete ---------------------------------------------------------------------------------

@app.command()
def apply(filename: Annotated[list[str], typer.Option("--filename", "-f", help="File, directory or - for stdin.")],
          namespace: Namespace = None,
          dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate on the server, change nothing.")] = False,
          ) -> None:
    """Create or update objects from manifests. Every document is checked first; if one is refused, none is
    applied."""
    def go() -> None:
        client = _client()
        docs = manifests.load(filename)
        if not docs:
            _fail("no objects passed to apply")
        # Namespaces first, so that objects in a namespace created by the same apply find it.
        docs.sort(key=lambda d: 0 if d.obj.get("kind") == "Namespace" else 1)
        planned = {(d.obj.get("metadata") or {}).get("name") for d in docs if d.obj.get("kind") == "Namespace"}
        targets = []
        problems = []
        for doc in docs:
            try:
                res = client.for_kind(doc.obj["apiVersion"], doc.obj["kind"])
                ns = _ns(res, (doc.obj.get("metadata") or {}).get("namespace") or namespace)
                if not (doc.obj.get("metadata") or {}).get("name"):
                    raise ClientError({"message": "metadata.name is required"})
                try:
                    client.apply(res, doc.obj, ns, dry_run=True)
                except ClientError as e:
                    details = e.status.get("details") or {}
                    if not (e.code == 404 and details.get("kind") == "namespaces" and details.get("name") in planned):
                        raise
                targets.append((doc, res, ns))
            except ClientError as e:
                problems.append(f"{doc.where}: {doc.ref}: {e}")
        if problems:
            for p in problems:
                err.print(f"error: {p}", markup=False)
            _fail(f"{len(problems)} of {len(docs)} documents refused; nothing was applied")
        applied: list[str] = []
        for doc, res, ns in targets:
            before = None
            try:
                before = client.get(res, doc.obj["metadata"]["name"], ns)
            except ClientError as e:
                if e.code != 404:
                    raise
            try:
                obj, code = client.apply(res, doc.obj, ns, dry_run=dry_run)
            except ClientError as e:
                err.print(f"error: {doc.where}: {doc.ref}: {e}", markup=False)
                if applied:
                    err.print("applied before the error: " + ", ".join(applied), markup=False)
                raise typer.Exit(1) from None
            unchanged = before is not None and \
                before["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
            verb = "created" if code == 201 else ("unchanged" if unchanged else "configured")
            ref = f"{res.singular or res.kind.lower()}/{obj['metadata']['name']}"
            applied.append(ref)
            out.print(f"{ref} {verb}{' (dry run)' if dry_run else ''}", markup=False)
    _run(go)


@app.command()
def delete(kind: Annotated[str | None, typer.Argument(help="Kind (e.g. pod, pods, po).")] = None,
           names: Annotated[list[str] | None, typer.Argument(help="Names.")] = None,
           filename: Annotated[list[str] | None, typer.Option("--filename", "-f")] = None,
           namespace: Namespace = None,
           selector: Annotated[str | None, typer.Option("--selector", "-l")] = None) -> None:
    """Delete objects by kind and name, by label selector, or by the manifests that made them."""
    def go() -> None:
        client = _client()
        targets: list[tuple[Resource, str, str | None]] = []
        if filename:
            for doc in manifests.load(filename):
                res = client.for_kind(doc.obj["apiVersion"], doc.obj["kind"])
                targets.append((res, doc.obj["metadata"]["name"],
                                _ns(res, doc.obj["metadata"].get("namespace") or namespace)))
        elif kind:
            res = client.resolve(kind)
            ns = _ns(res, namespace)
            if selector:
                names_found = [o["metadata"]["name"] for o in client.list(res, ns, selector=selector)["items"]]
                targets += [(res, n, ns) for n in names_found]
            if not names and not selector:
                _fail("a name, -l SELECTOR or -f FILE is required")
            targets += [(res, n, ns) for n in names or []]
        else:
            _fail("say what to delete: KIND NAME, KIND -l SELECTOR, or -f FILE")
        failed = False
        for res, name, ns in targets:
            try:
                client.delete(res, name, ns)
                out.print(f'{res.singular or res.kind.lower()} "{name}" deleted', markup=False)
            except ClientError as e:
                err.print(f"error: {e}", markup=False)
                failed = True
        if failed:
            raise typer.Exit(1)
    _run(go)


# ---- get / describe ---------------------------------------------------------------------------------

@app.command()
def get(kind: Annotated[str, typer.Argument(help="Kind, or several separated by commas.")],
        name: Annotated[str | None, typer.Argument()] = None,
        namespace: Namespace = None, all_namespaces: AllNamespaces = False,
        selector: Annotated[str | None, typer.Option("--selector", "-l", help="Label selector.")] = None,
        output: Annotated[str | None, typer.Option("--output", "-o", help="wide, yaml, json or name.")] = None,
        watch: Annotated[bool, typer.Option("--watch", "-w", help="After listing, watch for changes.")] = False,
        ) -> None:
    """List objects, or show one."""
    if output not in (None, "wide", "yaml", "json", "name"):
        _fail(f"unknown output format {output!r}: use wide, yaml, json or name")

    def go() -> None:
        client = _client()
        for i, kind_name in enumerate(k for k in kind.split(",") if k):
            res = client.resolve(kind_name)
            ns = None if (all_namespaces and res.namespaced) else _ns(res, namespace)
            if output in ("yaml", "json"):
                data = client.get(res, name, ns) if name else client.list(res, ns, selector=selector)
                if output == "json":
                    out.print(json.dumps(data, indent=2), markup=False)
                else:
                    out.print(yaml.safe_dump(data, sort_keys=False).rstrip(), markup=False)
                continue
            if output == "name":
                items = [client.get(res, name, ns)] if name else client.list(res, ns, selector=selector)["items"]
                for obj in items:
                    out.print(f"{res.singular or res.kind.lower()}/{obj['metadata']['name']}", markup=False)
                continue
            tbl = client.table(res, ns, name, selector=selector)
            if i:
                out.print()
            if not tbl["rows"] and not watch:
                where = f" in {ns} namespace" if ns else ""
                err.print(f"No resources found{where}.", markup=False)
                continue
            print_table(out, tbl, wide=output == "wide", with_namespace=all_namespaces and res.namespaced)
            if watch:
                _watch_rows(client, res, ns, tbl["metadata"]["resourceVersion"], selector, output,
                            all_namespaces and res.namespaced)
    _run(go)


def _watch_rows(client: Client, res: Resource, ns: str | None, rv: str, selector: str | None,
                output: str | None, with_namespace: bool) -> None:
    try:
        for event in client.watch(res, ns, resource_version=rv, selector=selector):
            if event["type"] == "BOOKMARK":
                continue
            obj = event["object"]
            tbl = client.table(res, obj["metadata"].get("namespace"), obj["metadata"]["name"]) \
                if event["type"] != "DELETED" else None
            if tbl is None or not tbl["rows"]:
                out.print(f"{obj['metadata']['name']}\t(deleted)", markup=False)
                continue
            for line in table_rows(tbl, wide=output == "wide", with_namespace=with_namespace, header=False):
                out.print(line, markup=False)
    except KeyboardInterrupt:
        return


@app.command()
def describe(kind: str, name: str, namespace: Namespace = None) -> None:
    """Show an object in full, with its recent events."""
    def go() -> None:
        client = _client()
        res = client.resolve(kind)
        ns = _ns(res, namespace)
        obj = client.get(res, name, ns)
        meta = obj["metadata"]
        out.print(f"Name:         {meta['name']}", markup=False)
        if ns:
            out.print(f"Namespace:    {ns}", markup=False)
        out.print(f"Kind:         {obj['kind']} ({obj['apiVersion']})", markup=False)
        for key in ("labels", "annotations"):
            values = meta.get(key) or {}
            out.print(f"{key.capitalize() + ':':<14}" + (", ".join(f"{k}={v}" for k, v in values.items()) or "<none>"),
                      markup=False)
        out.print(f"Created:      {meta.get('creationTimestamp')} ({age(meta.get('creationTimestamp'))} ago)",
                  markup=False)
        body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
        out.print(yaml.safe_dump(body, sort_keys=False).rstrip(), markup=False)
        events = []
        if ns or res.kind == "Namespace":
            ev_res = client.resolve("events")
            events = [e for e in client.list(ev_res, ns or meta["name"])["items"]
                      if e.get("involvedObject", {}).get("uid") == meta.get("uid")]
        out.print("Events:" + ("" if events else "  <none>"), markup=False)
        events.sort(key=lambda e: e.get("lastTimestamp") or "")
        for e in events:
            out.print(f"  {e.get('type', ''):<8} {e.get('reason', ''):<20} {age(e.get('lastTimestamp')):>6}  "
                      f"x{e.get('count', 1)}  {e.get('message', '')}", markup=False)
    _run(go)


# ---- logs / events ----------------------------------------------------------------------------------

@app.command()
def logs(pod: str, namespace: Namespace = None,
         container: Annotated[str | None, typer.Option("--container", "-c")] = None,
         follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
         tail: Annotated[int | None, typer.Option("--tail", help="Lines from the end.")] = None,
         previous: Annotated[bool, typer.Option("--previous", "-p", help="The previous run's log.")] = False,
         replica: Annotated[str | None, typer.Option("--replica", help="trainjob/NAME: e.g. node-0-1.")] = None,
         ) -> None:
    """Print a pod's container log (or a training job's replica: trainjob/NAME --replica node-0-1)."""
    def go() -> None:
        client = _client()
        name = pod.split("/", 1)[1] if pod.startswith(("pod/", "pods/")) else pod
        if (job := replicas.job_target(pod)) is not None:  # training jobs (issue 5)
            items = client.list(client.resolve("pods"), namespace or "default", selector=f"{job[0]}={job[1]}")
            name = replicas.pick_replica_pod(items["items"], replica, job[0]) or ""
            if not name:
                _fail(f"no pod of {pod} is replica {replica or 'rank 0'}")
        try:
            for chunk in client.logs(namespace or "default", name, container=container, follow=follow,
                                     tail=tail, previous=previous):
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
        except KeyboardInterrupt:
            return
    _run(go)


@app.command()
def events(namespace: Namespace = None, all_namespaces: AllNamespaces = False,
           for_object: Annotated[str | None, typer.Option("--for", help="Only events of KIND/NAME.")] = None,
           watch: Annotated[bool, typer.Option("--watch", "-w")] = False) -> None:
    """List events, oldest first."""
    def go() -> None:
        client = _client()
        res = client.resolve("events")
        ns = None if all_namespaces else (namespace or "default")
        items = client.list(res, ns)["items"]
        if for_object:
            kind, _, obj_name = for_object.partition("/")
            target = client.resolve(kind)
            items = [e for e in items if e["involvedObject"].get("kind") == target.kind
                     and e["involvedObject"].get("name") == obj_name]
        items.sort(key=lambda e: e.get("lastTimestamp") or "")
        if not items and not watch:
            err.print(f"No events found{f' in {ns} namespace' if ns else ''}.", markup=False)
            return
        header = (["NAMESPACE"] if all_namespaces else []) + ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
        rows = [([e["metadata"]["namespace"]] if all_namespaces else []) +
                [age(e.get("lastTimestamp")), e.get("type", ""), e.get("reason", ""),
                 f"{e['involvedObject'].get('kind', '').lower()}/{e['involvedObject'].get('name', '')}",
                 e.get("message", "")] for e in items]
        from kaip.cli.printers import render

        for line in render(header, rows):
            out.print(line, markup=False)
    _run(go)


# ---- create -----------------------------------------------------------------------------------------

@create_app.command("namespace")
def create_namespace(name: str) -> None:
    """Create a namespace."""
    def go() -> None:
        client = _client()
        client.create(client.resolve("namespaces"), {"apiVersion": "v1", "kind": "Namespace",
                                                    "metadata": {"name": name}})
        out.print(f"namespace/{name} created", markup=False)
    _run(go)


@create_app.command("token")
def create_token(name: Annotated[str, typer.Argument(help="Service account name (created if missing).")],
                 namespace: Namespace = None,
                 role: Annotated[str | None, typer.Option(help="Bind this role in the namespace: view, edit or admin.")]
                 = None,
                 duration: Annotated[int | None, typer.Option(help="Lifetime in seconds (default: no expiry).")]
                 = None) -> None:
    """Issue a bearer token for a service account, optionally granting it a role in the namespace.

    Prints only the token, so that `export KAIP_TOKEN=$(kaip create token ...)` works."""
    if role not in (None, "view", "edit", "admin"):
        _fail(f"unknown role {role!r}: use view, edit or admin")

    def go() -> None:
        client = _client()
        ns = namespace or "default"
        sa = client.resolve("serviceaccounts")
        try:
            client.get(sa, name, ns)
        except ClientError as e:
            if e.code != 404:
                raise
            client.create(sa, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}, ns)
        if role:
            rb = client.resolve("rolebindings")
            client.apply(rb, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                              "metadata": {"name": f"{name}-{role}", "namespace": ns},
                              "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                              "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]}, ns)
        out.print(client.request_token(ns, name, seconds=duration), markup=False)
    _run(go)


# ---- misc -------------------------------------------------------------------------------------------

@app.command("api-resources")
def api_resources() -> None:
    """List the kinds the server serves."""
    def go() -> None:
        from kaip.cli.printers import render

        rows = [[r.plural, ",".join(r.short_names), r.api_version, str(r.namespaced).lower(), r.kind]
                for r in sorted(_client().resources(), key=lambda r: (r.group, r.plural))]
        for line in render(["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"], rows):
            out.print(line, markup=False)
    _run(go)


@app.command()
def version() -> None:
    """Print the client's and the server's version."""
    out.print(f"Client Version: {__version__}", markup=False)
    try:
        server = Client().server_version()
        out.print(f"Server Version: {server.get('kaipVersion')} ({server.get('gitVersion')})", markup=False)
    except Exception as e:  # the client version is still useful without a server
        err.print(f"Server Version: unavailable ({e.__class__.__name__})", markup=False)


# Commands of the subsystems beside the core: each module's `register(app)` adds its commands.
CLI_MODULES = (
    "kaip.cli.tracking",  # experiments, runs, models, lineage (issue 3)
    "kaip.cli.queues",  # top queues, report usage (issue 4)
    "kaip.cli.serving",  # rollout undo, predictions, prometheus-config (issue 6)
    "kaip.cli.pipelines",  # run -f FILE (issue 8)
    "kaip.cli.rag",  # kb query (issue 10)
    "kaip.cli.workbench",  # workbench open, stop, start (issue 12)
)
for _module in CLI_MODULES:
    importlib.import_module(_module).register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
