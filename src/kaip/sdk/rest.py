"""The REST layer under the SDK and the CLI: the resource API at Kubernetes paths.

Kinds are resolved through the server's discovery documents, as kubectl does, so the client needs no
list of kinds of its own. Every error the server answers with is raised as a typed `kaip.sdk.errors.ApiError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from kaip import config
from kaip.sdk.errors import ApiError, Unreachable, from_status

ClientError = ApiError  # the name the CLI has always used


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


def watch_params(resource_version: str | None, selector: str | None, timeout: float | None) -> dict[str, str]:
    """The query of a Kubernetes watch (with bookmarks), for the sync and the async client alike."""
    params: dict[str, str] = {"watch": "true", "allowWatchBookmarks": "true"}
    if resource_version:
        params["resourceVersion"] = resource_version
    if selector:
        params["labelSelector"] = selector
    if timeout:
        params["timeoutSeconds"] = str(int(timeout))
    return params


class RestClient:
    """The resource API over HTTP (httpx), with the server URL and token from `kaip.config`."""

    def __init__(self, server: str | None = None, token: str | None = None, *, timeout: float = 30.0) -> None:
        cfg = config.client_config()
        self.server = (server or cfg.server).rstrip("/")
        self.token = token if token is not None else cfg.token
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)
        self._resources: list[Resource] | None = None

    def close(self) -> None:
        self.http.close()

    # ---- discovery ----------------------------------------------------------------------------------

    def resources(self) -> list[Resource]:
        if self._resources is None:
            found: list[Resource] = []
            docs = [("", self._json("GET", "/api/v1"))]
            for group in self._json("GET", "/apis").get("groups", []):
                gv = group["preferredVersion"]
                docs.append((group["name"], self._json("GET", f"/apis/{gv['groupVersion']}")))
            for group_name, doc in docs:
                version = doc["groupVersion"].rpartition("/")[2]
                for r in doc.get("resources", []):
                    if "/" in r["name"]:
                        continue
                    found.append(Resource(group_name, version, r["kind"], r["name"], r.get("singularName", ""),
                                          r["namespaced"], tuple(r.get("shortNames") or ())))
            self._resources = found
        return self._resources

    def resolve(self, name: str) -> Resource:
        lowered = name.lower()
        resource, _, group = lowered.partition(".")
        matches = [r for r in self.resources()
                   if resource in {r.plural, r.singular, r.kind.lower(), *r.short_names}
                   and (not group or group == r.group)]
        if not matches:
            raise from_status({"code": 404, "reason": "NotFound",
                               "message": f'the server doesn\'t have a resource type "{name}"'})
        matches.sort(key=lambda r: (r.group != "", r.group))
        return matches[0]

    def for_kind(self, api_version: str, kind: str) -> Resource:
        group, _, version = api_version.rpartition("/")
        for r in self.resources():
            if r.group == group and r.kind == kind:
                return Resource(group, version, r.kind, r.plural, r.singular, r.namespaced, r.short_names)
        raise from_status({"code": 404, "reason": "NotFound",
                           "message": f'no matches for kind "{kind}" in version "{api_version}"'})

    # ---- requests -----------------------------------------------------------------------------------

    def path(self, res: Resource, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        base = f"/apis/{res.group}/{res.version}" if res.group else f"/api/{res.version}"
        if res.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{res.plural}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise Unreachable({"code": 0, "reason": "Unreachable",
                               "message": f"cannot reach the Kaip server at {self.server}: is `kaip up` running?"}
                              ) from err
        return self._check(resp).json()

    @staticmethod
    def _check(resp: httpx.Response) -> httpx.Response:
        if resp.status_code >= 400:
            try:
                status = resp.json()
            except ValueError:
                status = {"code": resp.status_code, "message": resp.text or resp.reason_phrase}
            if not isinstance(status, dict) or not ("message" in status or "error_code" in status):
                status = {"code": resp.status_code, "message": str(status)}
            raise from_status(status, resp.status_code)
        return resp

    def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self._json("GET", self.path(res, namespace, name))

    def list(self, res: Resource, namespace: str | None = None, *, selector: str | None = None) -> dict[str, Any]:
        params = {"labelSelector": selector} if selector else {}
        return self._json("GET", self.path(res, namespace), params=params)

    def table(self, res: Resource, namespace: str | None = None, name: str | None = None, *,
              selector: str | None = None) -> dict[str, Any]:
        params = {"labelSelector": selector} if selector else {}
        return self._json("GET", self.path(res, namespace, name), params=params,
                          headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})

    def create(self, res: Resource, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        return self._json("POST", self.path(res, namespace), json=obj)

    def apply(self, res: Resource, obj: dict[str, Any], namespace: str | None, *,
              dry_run: bool = False) -> tuple[dict[str, Any], int]:
        """Server-side apply; returns the object and the HTTP status (201 created, 200 otherwise)."""
        name = obj["metadata"]["name"]
        resp = self.http.patch(self.path(res, namespace, name), content=json.dumps(obj),
                               params={"dryRun": "All"} if dry_run else {},
                               headers={"Content-Type": "application/apply-patch+yaml"})
        self._check(resp)
        return resp.json(), resp.status_code

    def merge_patch(self, res: Resource, name: str, patch: dict[str, Any], namespace: str | None = None,
                    subresource: str | None = None) -> dict[str, Any]:
        return self._json("PATCH", self.path(res, namespace, name, subresource), content=json.dumps(patch),
                          headers={"Content-Type": "application/merge-patch+json"})

    def delete(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self._json("DELETE", self.path(res, namespace, name))

    def watch(self, res: Resource, namespace: str | None = None, *, resource_version: str | None = None,
              selector: str | None = None, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        params = watch_params(resource_version, selector, timeout)
        with self.http.stream("GET", self.path(res, namespace), params=params,
                              timeout=httpx.Timeout(10.0, read=None)) as resp:
            if resp.status_code >= 400:
                resp.read()
                self._check(resp)
            for line in resp.iter_lines():
                if line.strip():
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        raise from_status(event["object"])
                    yield event

    def logs(self, namespace: str, pod: str, *, container: str | None = None, follow: bool = False,
             tail: int | None = None, previous: bool = False) -> Iterator[bytes]:
        params: dict[str, str] = {}
        if container:
            params["container"] = container
        if follow:
            params["follow"] = "true"
        if tail is not None:
            params["tailLines"] = str(tail)
        if previous:
            params["previous"] = "true"
        res = self.resolve("pods")
        with self.http.stream("GET", self.path(res, namespace, pod, "log"), params=params,
                              timeout=httpx.Timeout(10.0, read=None)) as resp:
            if resp.status_code >= 400:
                resp.read()
                self._check(resp)
            yield from resp.iter_bytes()

    def request_token(self, namespace: str, service_account: str, *, seconds: int | None = None) -> str:
        body: dict[str, Any] = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
        if seconds:
            body["spec"]["expirationSeconds"] = seconds
        res = self.resolve("serviceaccounts")
        return self._json("POST", self.path(res, namespace, service_account, "token"), json=body)["status"]["token"]

    def server_version(self) -> dict[str, Any]:
        return self._json("GET", "/version")
