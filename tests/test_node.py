"""The machine is the node: its capacity is recorded as node `localhost`."""

from __future__ import annotations

import os

from kaip.executor.node import detect
from kaip.testing.live import LiveServer


def test_local_node_reports_this_machines_capacity(server: LiveServer) -> None:
    with server.client() as c:
        node = c.get("/api/v1/nodes/localhost").json()
    cap = node["status"]["allocatable"]
    assert cap["cpu"] == str(len(os.sched_getaffinity(0)))
    mem_mib = int(cap["memory"].removesuffix("Mi"))
    assert abs(mem_mib * 1024 * 1024 - detect().memory_bytes) < 1024 * 1024
    assert node["status"]["conditions"][0]["type"] == "Ready"


def test_nodes_are_cluster_scoped_and_admin_only_to_change(server: LiveServer) -> None:
    with server.client() as c:
        assert c.get("/api/v1/namespaces/default/nodes").status_code == 404
        assert c.patch("/api/v1/nodes/localhost", json={"spec": {"unschedulable": True}},
                       headers={"Content-Type": "application/merge-patch+json"}).status_code == 200
        assert c.get("/api/v1/nodes/localhost").json()["spec"]["unschedulable"] is True
