"""The `kaip` command against a live server: apply, get, describe, delete, logs, events, tokens, errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import Result
from typer.testing import CliRunner

from kaip.cli.main import app
from kaip.testing.live import LiveServer, free_port
from kaip.testing.waiting import wait_for

KAIP = Path(sys.executable).with_name("kaip")




class Kaip:
    """Runs `kaip ARGS...` in-process, pointed at the live server by KAIP_SERVER and KAIP_TOKEN."""

    def __init__(self, server: LiveServer, token: str | None = None) -> None:
        self.server = server
        self.env = {"KAIP_SERVER": server.url, "KAIP_TOKEN": token or server.token, "KAIP_HOME": "/nonexistent"}
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0) -> Result:
        result = self.runner.invoke(app, list(args), env=self.env, catch_exceptions=False)
        assert result.exit_code == code, (f"kaip {' '.join(args)} exited {result.exit_code}, wanted {code}\n"
                                          f"stdout: {result.stdout}\nstderr: {result.stderr}")
        return result

    def lines(self, *args: str) -> list[str]:
        return self(*args).stdout.splitlines()

    def as_user(self, token: str) -> Kaip:
        return Kaip(self.server, token)


@pytest.fixture
def kaip(server: LiveServer) -> Iterator[Kaip]:
    yield Kaip(server)
    for pid_file in (server.server.home / "pods").rglob("pid"):
        ref = server.server.executor.adopt(pid_file.parent)
        if ref is not None:
            server.server.executor.signal(ref, signal.SIGKILL)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def columns(line: str) -> list[str]:
    return line.split()


def pod_yaml(name: str, code: str, namespace: str = "default", labels: str = "{}") -> str:
    return f"""
        apiVersion: v1
        kind: Pod
        metadata:
          name: {name}
          namespace: {namespace}
          labels: {labels}
        spec:
          restartPolicy: Never
          containers:
          - name: main
            image: python:3.11
            command: ["python", "-c", {json.dumps(code)}]
    """


def wait_phase(server: LiveServer, ns: str, name: str, want: str) -> dict[str, Any]:
    with server.client() as c:
        def check() -> dict[str, Any] | None:
            pod = c.get(f"/api/v1/namespaces/{ns}/pods/{name}").json()
            return pod if pod.get("status", {}).get("phase") == want else None
        return wait_for(check, f"pod {ns}/{name} to be {want}")


# ---- apply --------------------------------------------------------------------------------------------

def test_apply_directory_creates_then_leaves_unchanged_then_configures(kaip: Kaip, tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    # Sorted by name the ConfigMap comes first; the namespace it lives in must still be created before it.
    write(manifests / "a-settings.yaml", """
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: settings
          namespace: shop
        data:
          colour: blue
    """)
    write(manifests / "b-namespace.yaml", """
        apiVersion: v1
        kind: Namespace
        metadata:
          name: shop
    """)
    write(manifests / "nested" / "c-secret.yml", """
        apiVersion: v1
        kind: Secret
        metadata:
          name: creds
          namespace: shop
        stringData:
          password: hunter2
    """)
    write(manifests / "README.md", "not a manifest\n")

    first = kaip.lines("apply", "-f", str(manifests))
    assert first == ["namespace/shop created", "configmap/settings created", "secret/creds created"]
    assert kaip.lines("apply", "-f", str(manifests)) == [
        "namespace/shop unchanged", "configmap/settings unchanged", "secret/creds unchanged"]

    write(manifests / "a-settings.yaml", """
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: settings
          namespace: shop
        data:
          colour: green
    """)
    assert kaip.lines("apply", "-f", str(manifests)) == [
        "namespace/shop unchanged", "configmap/settings configured", "secret/creds unchanged"]
    got = yaml.safe_load(kaip("get", "cm", "settings", "-n", "shop", "-o", "yaml").stdout)
    assert got["data"] == {"colour": "green"}


def test_apply_takes_the_namespace_flag_for_documents_without_one(kaip: Kaip, tmp_path: Path) -> None:
    kaip("create", "namespace", "team-x")
    path = write(tmp_path / "cm.yaml", """
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: flagged
    """)
    assert kaip.lines("apply", "-f", str(path), "-n", "team-x") == ["configmap/flagged created"]
    assert kaip.lines("get", "cm", "-n", "team-x", "-o", "name") == ["configmap/flagged"]


def test_yaml_syntax_error_names_file_and_line(kaip: Kaip, tmp_path: Path) -> None:
    path = write(tmp_path / "broken.yaml", """
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: broken
        data:
          key: [unclosed
          other: value
    """)
    result = kaip("apply", "-f", str(path), code=1)
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}:")
    reported = int(line.removeprefix(f"error: {path}:").split(":")[0])
    assert reported in (6, 7)  # the flow sequence opened on line 6 is broken by line 7
    assert "invalid YAML" in line
    assert "Traceback" not in result.stderr


def test_one_invalid_document_applies_nothing(kaip: Kaip, server: LiveServer, tmp_path: Path) -> None:
    path = write(tmp_path / "bundle.yaml", """
        apiVersion: v1
        kind: Namespace
        metadata:
          name: bundle
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: good
          namespace: bundle
        data:
          a: "1"
        ---
        apiVersion: v1
        kind: Pod
        metadata:
          name: bad
          namespace: bundle
        spec:
          containers:
          - name: main
            command: ["python", "-c", "print(1)"]
            volumeMountz: []
    """)
    result = kaip("apply", "-f", str(path), code=1)
    assert result.stdout == ""
    assert f"{path}:14: Pod/bad:" in result.stderr  # the line where the bad document starts
    assert "spec.containers[0].volumeMountz" in result.stderr
    assert "nothing was applied" in result.stderr
    assert f"{path}:1:" not in result.stderr and f"{path}:6:" not in result.stderr
    with server.client() as c:
        assert c.get("/api/v1/namespaces/bundle").status_code == 404
        assert c.get("/api/v1/namespaces/bundle/configmaps/good").status_code == 404


def test_apply_from_stdin_and_dry_run(kaip: Kaip, server: LiveServer) -> None:
    doc = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: piped\ndata:\n  k: v\n"
    result = kaip.runner.invoke(app, ["apply", "-f", "-", "--dry-run"], input=doc, env=kaip.env)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == ["configmap/piped created (dry run)"]
    with server.client() as c:
        assert c.get("/api/v1/namespaces/default/configmaps/piped").status_code == 404
    result = kaip.runner.invoke(app, ["apply", "-f", "-"], input=doc, env=kaip.env)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == ["configmap/piped created"]
    with server.client() as c:
        assert c.get("/api/v1/namespaces/default/configmaps/piped").json()["data"] == {"k": "v"}


def test_apply_into_a_missing_namespace_applies_nothing(kaip: Kaip, server: LiveServer, tmp_path: Path) -> None:
    path = write(tmp_path / "two.yaml", """
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: fine
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: lost
          namespace: nowhere
    """)
    result = kaip("apply", "-f", str(path), code=1)
    assert f"{path}:6: ConfigMap/lost:" in result.stderr
    assert 'namespaces "nowhere" not found' in result.stderr
    with server.client() as c:
        assert c.get("/api/v1/namespaces/default/configmaps/fine").status_code == 404


def test_apply_of_an_unknown_kind_is_refused(kaip: Kaip, tmp_path: Path) -> None:
    path = write(tmp_path / "odd.yaml", """
        apiVersion: example.com/v1
        kind: Gizmo
        metadata:
          name: g
    """)
    result = kaip("apply", "-f", str(path), code=1)
    assert 'no matches for kind "Gizmo"' in result.stderr


# ---- get ----------------------------------------------------------------------------------------------

@pytest.fixture
def populated(kaip: Kaip, server: LiveServer, tmp_path: Path) -> Kaip:
    """Two namespaces with configmaps and a finished pod each."""
    docs = []
    for ns in ("alpha", "beta"):
        docs.append(f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n")
        docs.append(f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: conf-{ns}\n  namespace: {ns}\n"
                    f"  labels: {{tier: {'front' if ns == 'alpha' else 'back'}}}\ndata:\n  a: '1'\n  b: '2'\n")
        docs.append(textwrap.dedent(pod_yaml(f"job-{ns}", f"print('hello from {ns}')", ns, "{app: demo}")))
    write(tmp_path / "all.yaml", "---\n".join(docs))
    kaip("apply", "-f", str(tmp_path / "all.yaml"))
    for ns in ("alpha", "beta"):
        wait_phase(server, ns, f"job-{ns}", "Succeeded")
    return kaip


def test_reapplying_finished_pods_changes_nothing(populated: Kaip, tmp_path: Path) -> None:
    lines = populated.lines("apply", "-f", str(tmp_path / "all.yaml"))
    assert len(lines) == 6 and all(line.endswith(" unchanged") for line in lines)
    time.sleep(0.6)  # a pod the re-apply had restarted would have run again by now
    assert populated("logs", "job-alpha", "-n", "alpha").stdout == "hello from alpha\n"


def test_get_pods_table(populated: Kaip) -> None:
    header, *rows = populated.lines("get", "pods", "-n", "alpha")
    assert columns(header) == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert len(rows) == 1
    name, ready, status, restarts, _age = columns(rows[0])
    assert (name, ready, status, restarts) == ("job-alpha", "0/1", "Completed", "0")
    # Short name and singular resolve to the same kind.
    # (AGE is left out of the comparison: a second may pass between the two commands.)
    assert [columns(line)[:4] for line in populated.lines("get", "po", "-n", "alpha")] == \
        [columns(line)[:4] for line in populated.lines("get", "pod", "-n", "alpha")]


def test_get_all_namespaces_adds_a_namespace_column(populated: Kaip) -> None:
    header, *rows = populated.lines("get", "pods", "-A")
    assert columns(header)[:3] == ["NAMESPACE", "NAME", "READY"]
    assert sorted(columns(r)[:2] for r in rows) == [["alpha", "job-alpha"], ["beta", "job-beta"]]


def test_get_output_formats(populated: Kaip) -> None:
    one = yaml.safe_load(populated("get", "cm", "conf-alpha", "-n", "alpha", "-o", "yaml").stdout)
    assert one["kind"] == "ConfigMap" and one["metadata"]["namespace"] == "alpha"
    listed = json.loads(populated("get", "configmaps", "-n", "beta", "-o", "json").stdout)
    assert listed["kind"] == "ConfigMapList"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["conf-beta"]
    assert populated.lines("get", "po", "-n", "beta", "-o", "name") == ["pod/job-beta"]
    names = populated.lines("get", "ns", "-o", "name")
    assert {"namespace/alpha", "namespace/beta", "namespace/default"} <= set(names)
    result = populated("get", "cm", "-o", "xml", code=1)
    assert "unknown output format" in result.stderr


def test_get_with_label_selector(populated: Kaip) -> None:
    assert populated.lines("get", "cm", "-A", "-l", "tier=back", "-o", "name") == ["configmap/conf-beta"]
    header, *rows = populated.lines("get", "cm", "-A", "-l", "tier in (front,back)")
    assert columns(header) == ["NAMESPACE", "NAME", "DATA", "AGE"]
    assert [columns(r)[:3] for r in rows] == [["alpha", "conf-alpha", "2"], ["beta", "conf-beta", "2"]]
    result = populated("get", "cm", "-A", "-l", "tier=none")
    assert result.stdout == "" and "No resources found" in result.stderr


def test_get_namespaces_table_and_missing_object(populated: Kaip) -> None:
    header, *rows = populated.lines("get", "ns")
    assert columns(header) == ["NAME", "STATUS", "AGE"]
    assert ["alpha", "Active"] in [columns(r)[:2] for r in rows]
    result = populated("get", "cm", "nope", "-n", "alpha", code=1)
    assert result.stderr.strip() == 'error: configmaps "nope" not found'
    result = populated("get", "gizmos", code=1)
    assert 'doesn\'t have a resource type "gizmos"' in result.stderr


# ---- describe, logs, events, delete -------------------------------------------------------------------

def test_describe_shows_the_object_and_its_events(populated: Kaip) -> None:
    text = populated("describe", "pod", "job-alpha", "-n", "alpha").stdout
    assert "Name:         job-alpha" in text
    assert "Namespace:    alpha" in text
    assert "Labels:       app=demo" in text
    assert "phase: Succeeded" in text
    events = text.split("Events:", 1)[1]
    assert "Started" in events and "Succeeded" in events
    assert "<none>" not in events


def test_logs(populated: Kaip, kaip: Kaip, server: LiveServer, tmp_path: Path) -> None:
    assert populated("logs", "job-alpha", "-n", "alpha").stdout == "hello from alpha\n"
    assert populated("logs", "pod/job-beta", "-n", "beta").stdout == "hello from beta\n"
    write(tmp_path / "many.yaml", pod_yaml("many", "for i in range(5): print('line', i)"))
    kaip("apply", "-f", str(tmp_path / "many.yaml"))
    # Follow right away: the whole log arrives, and the command ends with the container.
    assert kaip("logs", "many", "-f").stdout == "".join(f"line {i}\n" for i in range(5))
    assert kaip("logs", "many", "--tail", "2").stdout == "line 3\nline 4\n"
    result = kaip("logs", "ghost", code=1)
    assert result.stderr.strip() == 'error: pods "ghost" not found'


def test_events_lists_what_controllers_did(populated: Kaip) -> None:
    header, *rows = populated.lines("events", "-n", "alpha")
    assert columns(header) == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    reasons = {(columns(r)[2], columns(r)[3]) for r in rows}
    assert ("Started", "pod/job-alpha") in reasons
    assert ("Succeeded", "pod/job-alpha") in reasons
    everywhere = populated.lines("events", "-A", "--for", "pod/job-beta")
    assert columns(everywhere[0])[0] == "NAMESPACE"
    assert all(columns(r)[0] == "beta" and "pod/job-beta" in r for r in everywhere[1:])
    assert len(everywhere) >= 3


def test_delete(kaip: Kaip, server: LiveServer, tmp_path: Path) -> None:
    path = write(tmp_path / "objs.yaml", """
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: one
          labels: {group: g}
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: two
          labels: {group: g}
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: three
    """)
    kaip("apply", "-f", str(path))
    assert kaip.lines("delete", "cm", "three") == ['configmap "three" deleted']
    kaip("get", "cm", "three", code=1)
    assert sorted(kaip.lines("delete", "cm", "-l", "group=g")) == ['configmap "one" deleted',
                                                                   'configmap "two" deleted']
    assert kaip("get", "cm").stdout == ""
    kaip("apply", "-f", str(path))
    assert len(kaip.lines("delete", "-f", str(path))) == 3
    result = kaip("delete", "cm", "three", code=1)
    assert 'configmaps "three" not found' in result.stderr
    kaip("delete", "cm", code=1)


# ---- tokens and access --------------------------------------------------------------------------------

def test_created_token_works_in_its_namespace_only(kaip: Kaip, tmp_path: Path) -> None:
    kaip("create", "namespace", "team-a")
    kaip("create", "namespace", "team-b")
    token = kaip("create", "token", "ci-bot", "-n", "team-a", "--role", "edit").stdout.strip()
    assert token and len(token.split()) == 1
    bot = kaip.as_user(token)
    path = write(tmp_path / "cm.yaml", """
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: bot-made
        data: {x: "1"}
    """)
    assert bot.lines("apply", "-f", str(path), "-n", "team-a") == ["configmap/bot-made created"]
    assert bot.lines("get", "cm", "-n", "team-a", "-o", "name") == ["configmap/bot-made"]
    denied = bot("get", "cm", "-n", "team-b", code=1)
    [line] = denied.stderr.strip().splitlines()
    assert line.startswith("error: ") and "forbidden" in line.lower()
    assert denied.stdout == ""
    refused = bot("apply", "-f", str(path), "-n", "team-b", code=1)
    assert "forbidden" in refused.stderr.lower()
    # The admin sees that nothing was created in team-b.
    assert kaip("get", "cm", "-n", "team-b", "-o", "name").stdout == ""


def test_unknown_role_is_refused(kaip: Kaip) -> None:
    result = kaip("create", "token", "x", "--role", "owner", code=1)
    assert "unknown role" in result.stderr


def test_bad_token_is_refused_in_one_line(kaip: Kaip) -> None:
    result = kaip.as_user("not-a-token")("get", "ns", code=1)
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ")


# ---- no server ----------------------------------------------------------------------------------------

def test_unreachable_server_gives_one_line_and_exit_1(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "KAIP_SERVER": url, "KAIP_TOKEN": "x", "KAIP_HOME": str(tmp_path)}
    result = subprocess.run([str(KAIP), "get", "pods"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: cannot reach the Kaip server at {url}: is `kaip up` running?"]


def test_server_address_without_scheme_gives_one_line(tmp_path: Path) -> None:
    env = {"KAIP_SERVER": "localhost:8740", "KAIP_TOKEN": "x", "KAIP_HOME": str(tmp_path)}
    result = CliRunner().invoke(app, ["get", "pods"], env=env)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: invalid Kaip server address 'localhost:8740': it must look like http://HOST:PORT"]


def test_server_dropping_the_connection_gives_one_line(tmp_path: Path) -> None:
    # Something listens on the port but hangs up without answering (a server dying mid-request).
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def hang_up() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                conn.recv(65536)
                conn.close()

        threading.Thread(target=hang_up, daemon=True).start()
        env = {"KAIP_SERVER": f"http://127.0.0.1:{port}", "KAIP_TOKEN": "x", "KAIP_HOME": str(tmp_path)}
        result = CliRunner().invoke(app, ["get", "pods"], env=env)
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: request to the Kaip server at http://127.0.0.1:{port} failed: ")
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_no_server_is_needed_for_a_local_manifest_error(tmp_path: Path) -> None:
    # A bad file is reported as such, not as a connection problem.
    path = write(tmp_path / "bad.yaml", "kind: ConfigMap\nmetadata: {name: x}\n")
    env = {"KAIP_SERVER": f"http://127.0.0.1:{free_port()}", "KAIP_TOKEN": "x", "KAIP_HOME": str(tmp_path)}
    result = CliRunner().invoke(app, ["apply", "-f", str(path)], env=env)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {path}:1: apiVersion is not set"


def test_unreachable_server_does_not_break_version(tmp_path: Path) -> None:
    env = {"KAIP_SERVER": f"http://127.0.0.1:{free_port()}", "KAIP_TOKEN": "x", "KAIP_HOME": str(tmp_path)}
    result = CliRunner().invoke(app, ["version"], env=env)
    assert result.exit_code == 0
    assert result.stdout.startswith("Client Version: ")
    assert "unavailable" in result.stderr
