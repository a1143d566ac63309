"""List pagination with `limit` and `continue`, as client-go's pager uses it."""

from __future__ import annotations

import httpx

from kaip.testing.live import LiveServer


def _make(c: httpx.Client, ns: str, names: list[str]) -> None:
    r = c.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    assert r.status_code == 201, r.text
    for name in names:
        r = c.post(f"/api/v1/namespaces/{ns}/configmaps", json={"metadata": {"name": name}, "data": {"k": name}})
        assert r.status_code == 201, r.text


def test_pages_cover_every_object_once_and_keep_the_first_version(server: LiveServer) -> None:
    with server.client() as c:
        _make(c, "pages", [f"cm-{i:02d}" for i in range(7)])
        seen: list[str] = []
        token = None
        versions = set()
        while True:
            params = {"limit": "3", **({"continue": token} if token else {})}
            body = c.get("/api/v1/namespaces/pages/configmaps", params=params).json()
            seen += [o["metadata"]["name"] for o in body["items"]]
            versions.add(body["metadata"]["resourceVersion"])
            token = body["metadata"].get("continue")
            if not token:
                break
            # A write between pages does not change the version the list is reported at.
            c.post("/api/v1/namespaces/pages/configmaps", json={"metadata": {"name": f"zz-{len(seen)}"}})
        assert seen[:7] == [f"cm-{i:02d}" for i in range(7)]
        assert len(seen) == len(set(seen))
        assert len(versions) == 1


def test_bad_or_compacted_continue_tokens(server: LiveServer) -> None:
    with server.client() as c:
        _make(c, "pages2", ["a", "b", "c"])
        assert c.get("/api/v1/namespaces/pages2/configmaps", params={"continue": "not-a-token"}).status_code == 400
        assert c.get("/api/v1/namespaces/pages2/configmaps", params={"limit": "-1"}).status_code == 400
        token = c.get("/api/v1/namespaces/pages2/configmaps", params={"limit": "1"}).json()["metadata"]["continue"]
        for i in range(3):
            c.post("/api/v1/namespaces/pages2/configmaps", json={"metadata": {"name": f"more-{i}"}})
        server.server.store.compact(0)
        r = c.get("/api/v1/namespaces/pages2/configmaps", params={"limit": "1", "continue": token})
        assert r.status_code == 410
        assert r.json()["reason"] == "Expired"
