from kaip.testing.live import LiveServer


def test_server_serves_namespaces(server: LiveServer) -> None:
    with server.client() as c:
        r = c.get("/api/v1/namespaces")
        assert r.status_code == 200
        assert {"default", "kaip-system"} <= {n["metadata"]["name"] for n in r.json()["items"]}


def test_pg_server_serves_namespaces(pg_server: LiveServer) -> None:
    with pg_server.client() as c:
        r = c.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
        assert r.status_code == 201, r.text
