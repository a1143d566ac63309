"""Credentials for the service account a pod runs as — the local counterpart of Kubernetes' projected
service-account token: a workload that calls the API (a pipeline step creating a TrainJob, registering a model
through the MLflow protocol) authenticates as its own service account and can do exactly what that account's
RoleBindings allow, never more than the server's admin credentials would let it.

The token is short-lived, issued per container start, and reaches the process only through its environment
(`KAIP_SERVER`, `KAIP_TOKEN`, and the MLflow client's `MLFLOW_TRACKING_URI` / `MLFLOW_TRACKING_TOKEN`); nothing
is written to disk or logged. A pod that sets `automountServiceAccountToken: false` (or whose service account
does), or whose service account does not exist, gets none.
"""

from __future__ import annotations

from typing import Any

from kaip.api.core import SERVICE_ACCOUNT
from kaip.server.auth import Authorizer, service_account_user
from kaip.store.store import Store

DEFAULT_TTL_SECONDS = 24 * 3600


class PodCredentials:
    def __init__(self, store: Store, authorizer: Authorizer, ttl_seconds: int = DEFAULT_TTL_SECONDS) -> None:
        self.store = store
        self.authorizer = authorizer
        self.ttl_seconds = ttl_seconds
        self.server_url: str | None = None  # known once the server listens (`KaipServer.bootstrap`)

    def env(self, pod: dict[str, Any]) -> dict[str, str]:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        if self.server_url is None:
            return {}
        namespace, account = meta["namespace"], spec.get("serviceAccountName") or "default"
        sa = self.store.try_get(SERVICE_ACCOUNT, namespace, account)
        # As in Kubernetes: the pod's setting wins over its service account's; both default to mounting.
        mount = spec.get("automountServiceAccountToken")
        if sa is None or (mount if mount is not None else sa.get("automountServiceAccountToken")) is False:
            return {}
        token, _ = self.authorizer.issue(service_account_user(namespace, account), namespace,
                                         ttl_seconds=self.ttl_seconds, description=f"pod {namespace}/{meta['name']}")
        return {"KAIP_SERVER": self.server_url, "KAIP_TOKEN": token, "KAIP_NAMESPACE": namespace,
                "MLFLOW_TRACKING_URI": self.server_url, "MLFLOW_TRACKING_TOKEN": token}
