"""Plugging tracking into a Kaip server: the MLflow-compatible REST API and the lineage endpoint (issue 3)."""

from __future__ import annotations

from typing import Any

from kaip.tracking.api import TrackingAPI


def install(server: Any) -> TrackingAPI:
    api = TrackingAPI(server.ctx, server.home / "artifacts")
    server.app.include_router(api.router)
    return api
