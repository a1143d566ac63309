"""The pure parts of GitOps: health roll-up, the sync decision, and loading manifests with precise errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaip.api import core  # noqa: F401
from kaip.api.kinds import REGISTRY
from kaip.gitops.sync import (
    Comparison,
    ResourceStatus,
    app_of,
    compare,
    health_of,
    load_desired,
    should_sync,
    tracking_id,
)


def test_health_of_resources() -> None:
    assert health_of(None) == ("Missing", "not found")
    assert health_of({"kind": "ConfigMap", "data": {}}) == ("Healthy", "")
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert health_of(ready) == ("Healthy", "")
    waiting = {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Waiting", "message": "w"}]}}
    assert health_of(waiting) == ("Progressing", "w")
    failed = {"status": {"conditions": [{"type": "Succeeded", "status": "False", "reason": "TaskFailed",
                                         "message": "load failed"}]}}
    assert health_of(failed) == ("Degraded", "load failed")
    assert health_of({"kind": "RecurringRun", "spec": {"mode": "DISABLE"}}) == ("Suspended", "disabled")


def test_rollup_is_the_worst_state_and_ignores_what_awaits_pruning() -> None:
    key = ("", "ConfigMap", "ns", "a")
    comp = Comparison([ResourceStatus(key, "v1", "Synced", "Healthy"),
                       ResourceStatus(("", "Pod", "ns", "p"), "v1", "Synced", "Progressing", "starting"),
                       ResourceStatus(("", "ConfigMap", "ns", "old"), "v1", "OutOfSync", "Degraded",
                                      requires_pruning=True)])
    assert comp.health == ("Progressing", "Pod/p: starting")
    assert comp.sync_status == "OutOfSync"


def test_sync_decision_follows_argo_cd() -> None:
    out_of_sync = Comparison([ResourceStatus(("", "ConfigMap", "ns", "a"), "v1", "OutOfSync", "Healthy")])
    synced = Comparison([ResourceStatus(("", "ConfigMap", "ns", "a"), "v1", "Synced", "Healthy")])
    args = {"revision": "abc", "operation": False}
    assert should_sync(automated=True, self_heal=False, comparison=out_of_sync, last_synced_revision="old", **args)
    # The same revision drifted: only selfHeal syncs it again.
    assert not should_sync(automated=True, self_heal=False, comparison=out_of_sync, last_synced_revision="abc", **args)
    assert should_sync(automated=True, self_heal=True, comparison=out_of_sync, last_synced_revision="abc", **args)
    assert not should_sync(automated=True, self_heal=True, comparison=synced, last_synced_revision="old", **args)
    assert not should_sync(automated=False, self_heal=False, comparison=out_of_sync, last_synced_revision=None,
                           **args)
    assert should_sync(automated=False, self_heal=False, comparison=synced, last_synced_revision="abc",
                       revision="abc", operation=True)


def test_load_desired_validates_every_document_and_compare_detects_drift() -> None:
    files = {"deploy/a.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: v}\n---\n"
                              "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
             "deploy/b.yaml": "apiVersion: v1\nkind: Widget\nmetadata: {name: w}\n",
             "deploy/c.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {k: 1, j: {x: 1}}\n"}
    desired, errs = load_desired(files, REGISTRY, "team")
    assert [d.key for d in desired] == [("", "ConfigMap", "team", "a")]
    assert errs[0] == "deploy/a.yaml (document 2): ConfigMap team/a is also defined in deploy/a.yaml (document 1)"
    assert errs[1] == 'deploy/b.yaml (document 1): no matches for kind "Widget" in version "v1"'
    assert errs[2] == ('deploy/c.yaml (document 1): ConfigMap "c" is invalid: data.k: Input should be a valid string; '
                       'data.j: Input should be a valid string')
    live = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "team"},
            "data": {"k": "v"}}
    assert compare(desired, {desired[0].key: live}, []).sync_status == "Synced"
    drifted = {**live, "data": {"k": "edited"}}
    gone = ("", "ConfigMap", "team", "old")
    comp = compare(desired, {desired[0].key: drifted, gone: live}, [gone])
    assert [(r.key[3], r.status, r.requires_pruning) for r in comp.resources] == [
        ("a", "OutOfSync", False), ("old", "OutOfSync", True)]


def test_tracking_id_round_trip() -> None:
    tid = tracking_id("argocd", "cfg", ("", "ConfigMap", "team", "a"))
    assert tid == "argocd_cfg:/ConfigMap:team/a"
    assert app_of({"metadata": {"annotations": {"argocd.argoproj.io/tracking-id": tid}}}) == ("argocd", "cfg")
    assert app_of({"metadata": {}}) is None


def _model_paths(model: type, prefix: str = "") -> list[str]:
    """Every field path of a pydantic model, descending into nested models (and optional / list of them)."""
    from typing import get_args

    from pydantic import BaseModel

    out = []
    for name, f in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        out.append(path)
        stack = [f.annotation]
        while stack:
            t = stack.pop()
            if isinstance(t, type) and issubclass(t, BaseModel):
                out += _model_paths(t, path)
            else:
                stack += list(get_args(t))
    return out


def test_application_fields_are_named_exactly_as_the_argo_cd_crd() -> None:
    from pathlib import Path

    import yaml

    from kaip.api.gitops import ApplicationBody

    crd_file = Path(__file__).resolve().parents[1].parent / "shared" / "crds" / "argo-cd" / "application-crd.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    paths = _model_paths(ApplicationBody)
    assert "spec.source.directory.recurse" in paths and "operation.sync.revision" in paths
    for path in paths:
        node = root
        for part in path.split("."):
            node = node.get("items", node)
            assert part in node.get("properties", {}), f"{path}: {part!r} is not in the Argo CD CRD"
            node = node["properties"][part]


# ---- the webhook (pure parts) -------------------------------------------------------------------------------------

def test_repository_urls_normalise_to_one_spelling(tmp_path: Path) -> None:
    from kaip.gitops.webhook import normalise_repo

    spellings = ["https://github.com/Org/repo.git", "https://user:tok@github.com/Org/repo/",
                 "git@github.com:Org/repo.git", "ssh://git@GitHub.com:22/Org/repo"]
    assert {normalise_repo(u) for u in spellings} == {"github.com/Org/repo"}
    assert normalise_repo(f"file://{tmp_path}/r/") == normalise_repo(str(tmp_path / "r")) == str(tmp_path / "r")


def test_a_push_moves_the_applications_tracking_its_ref() -> None:
    from kaip.gitops.webhook import Push, moves

    push = Push("github", frozenset({"github.com/org/repo"}), "refs/heads/main", "main")
    assert moves(push, "https://github.com/org/repo.git", "main")
    assert moves(push, "git@github.com:org/repo.git", "refs/heads/main")
    assert moves(push, "https://github.com/org/repo", "HEAD") and moves(push, "https://github.com/org/repo", None)
    assert not moves(push, "https://github.com/org/repo", "release")
    assert not moves(push, "https://github.com/org/repo", "3f2c1a9")  # a pinned commit does not move
    assert not moves(push, "https://github.com/org/other", "main")
    feature = Push("github", frozenset({"github.com/org/repo"}), "refs/heads/feature", "main")
    assert not moves(feature, "https://github.com/org/repo", "HEAD")


def test_push_payloads_and_signatures_of_each_provider() -> None:
    import hashlib
    import hmac
    import json

    from kaip.gitops.webhook import WebhookError, parse_push, provider_of, verify

    body = json.dumps({"ref": "refs/heads/main", "repository": {
        "html_url": "https://github.com/org/repo", "clone_url": "https://github.com/org/repo.git",
        "default_branch": "main"}}).encode()
    headers = {"x-github-event": "push",
               "x-hub-signature-256": "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()}
    assert provider_of(headers) == "github"
    push = parse_push("github", headers, body)
    assert push is not None and push.repos == {"github.com/org/repo"} and push.default_branch == "main"
    assert verify("github", headers, body, "s3cret") and not verify("github", headers, body, "other")
    assert not verify("github", headers, body + b" ", "s3cret")
    assert parse_push("github", {"x-github-event": "ping"}, b"{}") is None
    gitlab = json.dumps({"ref": "refs/heads/main", "project": {"git_http_url": "https://gitlab.com/g/p.git",
                                                               "default_branch": "main"}}).encode()
    assert parse_push("gitlab", {"x-gitlab-event": "Push Hook"}, gitlab).repos == {"gitlab.com/g/p"}
    assert verify("gitlab", {"x-gitlab-token": "t"}, gitlab, "t") and not verify("gitlab", {}, gitlab, "t")
    with pytest.raises(WebhookError, match="not JSON"):
        parse_push("github", {"x-github-event": "push"}, b"{oops")
    with pytest.raises(WebhookError, match="names no repository"):
        parse_push("github", {"x-github-event": "push"}, b"{}")
