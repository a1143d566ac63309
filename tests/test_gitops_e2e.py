"""GitOps on a real local git repository and a live server: an Argo CD Application syncs commits, reports Synced
and Healthy, self-heals a manual edit, prunes a deleted file, rolls back to a history entry, and refuses bad
sources and unknown fields precisely without applying anything."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kaip.cli.main import app as cli
from kaip.testing.live import LiveServer

APPS = "/apis/argoproj.io/v1alpha1/namespaces/argocd/applications"
CMS = "/api/v1/namespaces/team/configmaps"
REFRESH = "argocd.argoproj.io/refresh"
NS_MISSING = 'namespaces "absent" not found'


class Repo:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=self.path,
                              check=True, capture_output=True, text=True).stdout.strip()

    def commit(self, files: dict[str, str | None], message: str) -> str:
        for name, text in files.items():
            target = self.path / name
            if text is None:
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")


def configmap(name: str, value: str) -> str:
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: {value!r}\n"


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def application(name: str, repo: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
            "metadata": {"name": name, "namespace": "argocd"},
            "spec": {"project": "default", "source": {"repoURL": repo, "targetRevision": "main", "path": "deploy"},
                     "destination": {"server": "https://kubernetes.default.svc", "namespace": "team"}, **spec}}


@pytest.fixture
def api(server: LiveServer) -> Any:
    with server.client() as c:
        for ns in ("argocd", "team"):
            assert c.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace",
                                                      "metadata": {"name": ns}}).status_code == 201
        yield c


def test_sync_self_heal_prune_and_rollback(server: LiveServer, api: Any, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    first = repo.commit({"deploy/a.yaml": configmap("a", "one"), "deploy/nested/b.yaml": configmap("b", "bee"),
                         "deploy/README.md": "not a manifest"}, "first")
    body = application("cfg", f"file://{repo.path}",
                       syncPolicy={"automated": {"prune": True, "selfHeal": True}})
    body["spec"]["source"]["directory"] = {"recurse": True}
    assert api.post(APPS, json=body).status_code == 201

    def app_status() -> dict[str, Any]:
        return api.get(f"{APPS}/cfg").json().get("status") or {}

    def synced_at(rev: str) -> dict[str, Any] | None:
        s = app_status()
        ok = (s.get("sync") or {}).get("status") == "Synced" and s["sync"].get("revision") == rev
        return s if ok and (s.get("health") or {}).get("status") == "Healthy" else None

    status = wait_for("first sync", lambda: synced_at(first))
    assert api.get(f"{CMS}/a").json()["data"] == {"value": "one"}
    assert api.get(f"{CMS}/b").json()["data"] == {"value": "bee"}
    assert sorted((r["kind"], r["name"], r["status"]) for r in status["resources"]) == [
        ("ConfigMap", "a", "Synced"), ("ConfigMap", "b", "Synced")]
    assert status["operationState"]["phase"] == "Succeeded"
    assert status["history"][0]["revision"] == first and status["history"][0]["id"] == 0

    # A new commit changes a resource; a refresh (Argo CD's annotation) picks it up.
    second = repo.commit({"deploy/a.yaml": configmap("a", "two")}, "second")
    api.patch(f"{APPS}/cfg", json={"metadata": {"annotations": {REFRESH: "normal"}}},
              headers={"Content-Type": "application/merge-patch+json"})
    wait_for("second sync", lambda: synced_at(second))
    assert api.get(f"{CMS}/a").json()["data"] == {"value": "two"}

    # A manual edit drifts from git: selfHeal puts git's value back.
    api.patch(f"{CMS}/a", json={"data": {"value": "hand-edited"}},
              headers={"Content-Type": "application/merge-patch+json"})
    wait_for("self-heal", lambda: api.get(f"{CMS}/a").json()["data"] == {"value": "two"})

    # Deleting a file prunes its resource.
    third = repo.commit({"deploy/nested/b.yaml": None}, "drop b")
    api.patch(f"{APPS}/cfg", json={"metadata": {"annotations": {REFRESH: "normal"}}},
              headers={"Content-Type": "application/merge-patch+json"})
    status = wait_for("prune", lambda: synced_at(third))
    assert api.get(f"{CMS}/b").status_code == 404
    assert [r["name"] for r in status["resources"]] == ["a"]
    assert [h["revision"] for h in status["history"]] == [first, second, second, third]  # self-heal is a sync too

    # Rollback is refused while automated sync is on, as upstream refuses it.
    runner = CliRunner()
    env = {"KAIP_SERVER": server.url, "KAIP_TOKEN": server.token, "KAIP_HOME": "/nonexistent"}
    result = runner.invoke(cli, ["gitops", "rollback", "cfg", "0", "-n", "argocd"], env=env)
    assert result.exit_code == 1 and "rollback cannot be initiated when auto-sync is enabled" in result.stderr
    api.patch(f"{APPS}/cfg", json={"spec": {"syncPolicy": None}},
              headers={"Content-Type": "application/merge-patch+json"})
    result = runner.invoke(cli, ["gitops", "rollback", "cfg", "0", "-n", "argocd"], env=env)
    assert result.exit_code == 0, result.stderr
    wait_for("rollback", lambda: api.get(f"{CMS}/b").status_code == 200
             and api.get(f"{CMS}/a").json()["data"] == {"value": "one"})
    # The comparison after the rollback may land in a later status write than the history entry: wait for both.
    status = wait_for("rolled-back status", lambda: (s := app_status()).get("history", [{}])[-1].get(
        "revision") == first and s.get("sync", {}).get("status") == "OutOfSync" and s)
    assert status["sync"]["status"] == "OutOfSync"  # spec still targets main, as after an Argo CD rollback
    assert status["history"][-1]["initiatedBy"] == {"username": "kaip"}
    assert "operation" not in api.get(f"{APPS}/cfg").json()


def test_bad_sources_set_a_condition_and_apply_nothing(api: Any, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    repo.commit({"deploy/a.yaml": configmap("a", "one"),
                 "deploy/bad.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\ndata: {x: 1}\n"},
                "with a bad document")
    auto = {"syncPolicy": {"automated": {"prune": True}}}
    cases = {
        "missing-repo": (application("missing-repo", str(tmp_path / "nowhere"), **auto),
                         f"repository '{tmp_path / 'nowhere'}' does not exist"),
        "bad-revision": (application("bad-revision", str(repo.path), **auto),
                         f"revision 'v9.9' does not resolve to a commit in '{repo.path}'"),
        "bad-document": (application("bad-document", str(repo.path), **auto),
                         "deploy/bad.yaml (document 1): ConfigMap \"Bad_Name\" is invalid"),
    }
    cases["bad-revision"][0]["spec"]["source"]["targetRevision"] = "v9.9"
    for name, (body, _) in cases.items():
        assert api.post(APPS, json=body).status_code == 201, name
    for name, (_, message) in cases.items():
        cond = wait_for(f"{name} condition", lambda n=name: next(
            (c for c in (api.get(f"{APPS}/{n}").json().get("status") or {}).get("conditions") or []
             if c["type"] == "ComparisonError"), None))
        assert message in cond["message"], (name, cond)
        assert api.get(f"{APPS}/{name}").json()["status"]["sync"]["status"] == "Unknown"
    assert api.get(CMS).json()["items"] == []  # a.yaml is valid, but nothing of a bad revision is applied


def test_unknown_and_unsupported_fields_are_refused_with_their_path(api: Any, tmp_path: Path) -> None:
    body = application("x", str(tmp_path))
    body["spec"]["source"]["helm"] = {"valueFiles": ["values.yaml"]}
    body["spec"]["syncPolicy"] = {"automated": {"selfHeal": True, "heal": True}}
    resp = api.post(APPS, json=body)
    assert resp.status_code == 422
    fields = sorted(c["field"] for c in resp.json()["details"]["causes"])
    assert fields == ["spec.source.helm", "spec.syncPolicy.automated.heal"]
    body = application("y", str(tmp_path))
    body["spec"]["destination"] = {"server": "https://prod.example:6443"}
    resp = api.post(APPS, json=body)
    assert resp.status_code == 422 and "Kaip deploys to itself only" in resp.text


def test_manual_app_diff_then_sync(server: LiveServer, api: Any, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    rev = repo.commit({"deploy/a.yaml": configmap("a", "one")}, "first")
    assert api.post(APPS, json=application("manual", str(repo.path))).status_code == 201
    status = wait_for("comparison", lambda: (s := api.get(f"{APPS}/manual").json().get("status") or {}).get(
        "sync", {}).get("revision") == rev and s)
    assert (status["sync"]["status"], status["health"]["status"]) == ("OutOfSync", "Missing")
    assert api.get(f"{CMS}/a").status_code == 404  # no automated policy: nothing applied

    runner = CliRunner()
    env = {"KAIP_SERVER": server.url, "KAIP_TOKEN": server.token, "KAIP_HOME": "/nonexistent"}
    result = runner.invoke(cli, ["gitops", "diff", "manual", "-n", "argocd"], env=env)
    assert result.exit_code == 1, result.stderr
    assert f"+++ git/deploy/a.yaml@{rev[:7]}/ConfigMap/a" in result.stdout and "+  value: one" in result.stdout

    assert runner.invoke(cli, ["gitops", "sync", "manual", "-n", "argocd"], env=env).exit_code == 0
    wait_for("manual sync", lambda: (api.get(f"{APPS}/manual").json().get("status") or {}).get(
        "health", {}).get("status") == "Healthy")
    assert api.get(f"{CMS}/a").json()["data"] == {"value": "one"}
    assert api.get(f"{APPS}/manual").json()["status"]["sync"]["status"] == "Synced"
    result = runner.invoke(cli, ["gitops", "diff", "manual", "-n", "argocd"], env=env)
    assert result.exit_code == 0 and result.stdout == "", result.stdout


def test_create_namespace_option_and_sync_errors(api: Any, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    rev = repo.commit({"deploy/a.yaml": configmap("a", "one")}, "first")
    body = application("fresh", str(repo.path), syncPolicy={"automated": {}, "syncOptions": ["CreateNamespace=true"]})
    body["spec"]["destination"]["namespace"] = "fresh"
    assert api.post(APPS, json=body).status_code == 201
    body = application("absent", str(repo.path), syncPolicy={"automated": {}, "retry": {"limit": 0}})
    body["spec"]["destination"]["namespace"] = "absent"
    assert api.post(APPS, json=body).status_code == 201
    wait_for("created namespace", lambda: api.get("/api/v1/namespaces/fresh/configmaps/a").status_code == 200)
    status = wait_for("sync error", lambda: (s := api.get(f"{APPS}/absent").json().get("status") or {}).get(
        "operationState", {}).get("phase") == "Failed" and s)
    assert status["operationState"]["syncResult"]["revision"] == rev
    cond = next(c for c in status["conditions"] if c["type"] == "SyncError")
    assert cond["message"] == "ConfigMap absent/a: " + NS_MISSING
    assert status["sync"]["status"] == "OutOfSync"


def test_a_signed_push_webhook_refreshes_the_application_at_once(server: LiveServer, api: Any, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    import hashlib
    import hmac
    import json

    import httpx

    monkeypatch.setenv("KAIP_GITOPS_REFRESH_SECONDS", "3600")  # no polling: only the webhook can bring the change
    repo = Repo(tmp_path / "repo")
    repo.commit({"deploy/a.yaml": configmap("hooked", "one")}, "first")
    app = application("hooked", f"file://{repo.path}", syncPolicy={"automated": {}})
    assert api.post(APPS, json=app).status_code == 201
    wait_for("the first sync", lambda: api.get(f"{CMS}/hooked").status_code == 200)
    repo.commit({"deploy/a.yaml": configmap("hooked", "two")}, "second")
    api.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kaip-system"}})
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "argocd-secret", "namespace": "kaip-system"},
              "data": {"webhook.github.secret": base64.b64encode(b"hook-secret").decode()}}
    assert api.post("/api/v1/namespaces/kaip-system/secrets", json=secret).status_code == 201
    body = json.dumps({"ref": "refs/heads/main", "repository": {"clone_url": f"file://{repo.path}",
                                                                "default_branch": "main"}}).encode()
    with httpx.Client(base_url=server.url) as anonymous:  # no token: only the signature lets it in
        unsigned = anonymous.post("/api/webhook", content=body, headers={"X-GitHub-Event": "push"})
        assert unsigned.status_code == 401
        forged = anonymous.post("/api/webhook", content=body, headers={
            "X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64})
        assert forged.status_code == 401
        signature = "sha256=" + hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()
        r = anonymous.post("/api/webhook", content=body, headers={"X-GitHub-Event": "push",
                                                                  "X-Hub-Signature-256": signature})
        assert r.status_code == 200 and r.json() == {"refreshed": ["argocd/hooked"]}, r.text
    wait_for("the webhook's refresh to sync the new commit",
             lambda: api.get(f"{CMS}/hooked").json()["data"]["value"] == "two", timeout=20)
    assert REFRESH not in (api.get(f"{APPS}/hooked").json()["metadata"].get("annotations") or {})
    other = api.post("/api/webhook", content=json.dumps({"ref": "refs/heads/main", "repository": {
        "clone_url": "https://github.com/someone/else"}}), headers={"X-GitHub-Event": "push"})
    assert other.status_code == 200 and other.json() == {"refreshed": []}  # a Kaip token also lets it in
