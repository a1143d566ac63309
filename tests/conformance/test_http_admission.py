"""The harness validates in-process (`kaip_validate`); this checks that the resource API answers the same over
HTTP: a manifest both sides take is created (201), and a mutation upstream rejects gets a 422 whose causes name the
same fields, for one manifest of each kind with generated checks; and an update that breaks one of upstream's CEL
transition rules (a field immutable once set, data/cel_violations.yaml) gets a 422 naming the field."""

from __future__ import annotations

from typing import Any

import httpx

from conformance.harness import (
    causes,
    generated_kinds,
    kaip_validate,
    manifests_of,
    object_schema,
    upstream_errors,
)
from conformance.mutations import mutants
from kaip.api.kinds import KindInfo
from kaip.testing.live import LiveServer
from serving_fixtures import delete_all


def _path(info: KindInfo, doc: dict[str, Any]) -> str:
    version = doc["apiVersion"].rpartition("/")[2]
    ns = f"/namespaces/{doc['metadata'].get('namespace', 'default')}" if info.namespaced else ""
    return f"/apis/{info.group}/{version}{ns}/{info.plural}"


def test_http_admission_matches_the_harness(server: LiveServer) -> None:
    checked = 0
    with server.client() as c:
        try:
            checked = _check_each_kind(c)
            updates = _check_updates(c)
        finally:
            delete_all(c)  # the InferenceService may have started a replica process: stop it before the server
    assert checked == len(generated_kinds())
    assert updates >= 6


def _check_updates(c: httpx.Client) -> int:
    """Each transition-rule update of the data that Kaip refuses in its update check (the stored object and the
    new document both valid alone, no stored status to set up), created and then replaced over HTTP."""
    from conformance.test_cel import UPDATES, _update_documents

    checked = 0
    for case in UPDATES:
        if case.status_subresource or case.entry.get("status") is not None:
            continue
        info = case.info
        old, new, _ = _update_documents(case)
        if kaip_validate(info, old)[1] is not None or kaip_validate(info, new)[1] is not None:
            continue
        for doc in (old, new):  # a name of its own: a deleted object may linger while its finalizers run
            doc["metadata"] = {**doc["metadata"], "name": f"{doc['metadata']['name']}-{checked}"}
        created = c.post(_path(info, old), json=old)
        assert created.status_code == 201, created.text
        url = f"{_path(info, old)}/{old['metadata']['name']}"
        resp = c.put(url, json=new)
        assert resp.status_code == 422, (str(case), resp.text)
        fields = [cause["field"] for cause in resp.json()["details"]["causes"]]
        assert any(f == case.entry["at"] or f.startswith(case.entry["at"] + ".") for f in fields), (str(case), fields)
        assert c.delete(url).status_code == 200
        checked += 1
    return checked


def _check_each_kind(c: httpx.Client) -> int:
    checked = 0
    for info in generated_kinds():
        seeds = [m.doc for m in manifests_of(info) if m.doc["apiVersion"] == info.api_version
                 and kaip_validate(info, m.doc)[1] is None and not upstream_errors(info, info.version, m.doc)]
        assert seeds, info.key
        seed = seeds[0]
        mutant = next(m for m in mutants(seed, object_schema(info, info.version))
                      if upstream_errors(info, info.version, m.doc))
        _, err = kaip_validate(info, mutant.doc)
        assert err is not None
        ns = seed["metadata"].get("namespace")
        if info.namespaced and ns:  # the seed's namespace (a queue example's own) must exist for a 201
            c.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        resp = c.post(_path(info, mutant.doc), json=mutant.doc)
        assert resp.status_code == err.code, (mutant.what, resp.text)
        fields = sorted(cause["field"] for cause in resp.json()["details"]["causes"])
        assert fields == sorted(cause["field"] for cause in causes(err)), mutant.what
        resp = c.post(_path(info, seed), json=seed)
        assert resp.status_code == 201, resp.text
        checked += 1
    return checked
