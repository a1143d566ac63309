"""The resource API: Kubernetes REST paths over the store, for every registered kind."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import yaml
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from kaip import __version__
from kaip.api import errors
from kaip.api.core import NAMESPACE, POD, SERVICE_ACCOUNT
from kaip.api.kinds import KindInfo
from kaip.api.selectors import matches, parse_selector
from kaip.api.validation import validate_document
from kaip.server import paths, tables
from kaip.server.auth import Identity, service_account_user
from kaip.server.context import ServerContext
from kaip.server.patch import apply_config, json_patch, merge_patch
from kaip.store.store import Obj

JSON_TYPES = ("application/json", "")
MERGE_PATCH = ("application/merge-patch+json", "application/strategic-merge-patch+json")


def status_response(err: errors.ApiError) -> JSONResponse:
    return JSONResponse(err.to_status(), status_code=err.code)


class _YamlLoader(yaml.SafeLoader):
    """YAML read as Kubernetes reads it (sigs.k8s.io/yaml): an unquoted date stays a string."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _parse_body(raw: bytes, content_type: str) -> Any:
    ctype = content_type.split(";")[0].strip().lower()
    if not raw.strip():
        raise errors.bad_request("the request body is empty")
    if "yaml" in ctype:
        try:
            doc = yaml.load(raw, Loader=_YamlLoader)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise errors.bad_request(f"the request body is not valid YAML{where}: "
                                     f"{getattr(err, 'problem', err)}") from err
    else:
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as err:
            raise errors.bad_request(f"the request body is not valid JSON at line {err.lineno}, column {err.colno}: "
                                     f"{err.msg}") from err
        except UnicodeDecodeError as err:
            raise errors.bad_request(f"the request body is not valid UTF-8: {err}") from err
    try:
        # Only what JSON can carry may be stored: NaN, Infinity or YAML's binary values would be written and
        # then break every read of the object.
        json.dumps(doc, allow_nan=False)
    except (ValueError, TypeError) as err:
        raise errors.bad_request(f"the request body holds a value JSON cannot represent: {err}") from err
    return doc


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise errors.bad_request(f"{what} must be an object")
    return value


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("true", "1")


class ResourceAPI:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.router = APIRouter()
        for prefix, with_group in (("/api/{version}", False), ("/apis/{group}/{version}", True)):
            for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                self.router.add_api_route(prefix + "/{rest:path}", self._handler(with_group), methods=[method],
                                          include_in_schema=False)

    def _handler(self, with_group: bool) -> Any:
        async def handle(request: Request, version: str, rest: str, group: str = "") -> Response:
            started = time.perf_counter()
            verb, resource, code = request.method.lower(), "", 500
            try:
                ident = self.ctx.authorizer.authenticate_cached(request.headers.get("authorization")) or \
                    await run_in_threadpool(self.ctx.authorizer.authenticate, request.headers.get("authorization"))
                target = paths.parse(group if with_group else "", version, rest)
                info = self.ctx.registry.for_path(target.group, target.version, target.plural)
                resource = info.plural
                response, verb = await self._dispatch(request, ident, target, info)
                code = response.status_code
                return response
            except errors.ApiError as err:
                code = err.code
                return status_response(err)
            finally:
                self.ctx.metrics.observe_request(verb, group, resource, code, time.perf_counter() - started)
        return handle

    async def _dispatch(self, request: Request, ident: Identity, t: paths.Target,
                        info: KindInfo) -> tuple[Response, str]:
        method = request.method
        if info.namespaced and t.namespace is None and (t.name or method != "GET"):
            raise errors.ApiError(404, "NotFound", f"{info.plural} is namespaced: use /namespaces/{{ns}}/{info.plural}")
        if not info.namespaced and t.namespace is not None:
            raise errors.ApiError(404, "NotFound", f"{info.plural} is not namespaced")
        if t.subresource:
            return await self._subresource(request, ident, t, info), method.lower()
        if t.name is None:
            if method == "GET":
                verb = "watch" if _flag(request, "watch") else "list"
                self.ctx.authorizer.check(ident, verb, info, t.namespace)
                if verb == "watch":
                    return await self._watch(request, ident, t, info), verb
                return await self._list(request, ident, t, info), verb
            if method == "POST":
                self.ctx.authorizer.check(ident, "create", info, t.namespace)
                return await self._create(request, ident, t, info), "create"
            raise errors.ApiError(405, "MethodNotAllowed", f"{method} is not supported on a collection")
        verb = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
        if verb is None:
            raise errors.ApiError(405, "MethodNotAllowed", f"{method} is not supported on an object")
        if method == "PATCH" and "apply-patch" in request.headers.get("content-type", ""):
            # Server-side apply may create the object, so it needs the right to create as well.
            self.ctx.authorizer.check(ident, "create", info, t.namespace, name=t.name)
        self.ctx.authorizer.check(ident, verb, info, t.namespace, name=t.name)
        handler = {"GET": self._get, "PUT": self._replace, "PATCH": self._patch, "DELETE": self._delete}[method]
        return await handler(request, ident, t, info), verb

    # ---- helpers ------------------------------------------------------------------------------------

    def _out(self, info: KindInfo, t: paths.Target, obj: Obj) -> Obj:
        """Serve an object in the version the request addressed."""
        if t.version == info.version:
            return obj
        _to, from_storage = info.other_versions[t.version]
        out = from_storage(copy.deepcopy(obj))
        out["apiVersion"] = info.api_version_for(t.version)
        return out

    def _in(self, info: KindInfo, doc: Any, t: paths.Target) -> Any:
        """Check a body's apiVersion/kind against the path and convert it to the storage version."""
        if not isinstance(doc, dict):
            raise errors.bad_request("the request body must be an object")
        api_version = doc.get("apiVersion") or info.api_version_for(t.version)
        if doc.get("kind", info.kind) != info.kind or api_version != info.api_version_for(t.version):
            raise errors.bad_request(f"the body's apiVersion/kind ({api_version}, {doc.get('kind')}) does not match "
                                     f"the path ({info.api_version_for(t.version)}, {info.kind})")
        doc = dict(doc, apiVersion=api_version, kind=info.kind)
        if t.version != info.version:
            to_storage, _ = info.other_versions[t.version]
            doc = to_storage(copy.deepcopy(doc))
            doc["apiVersion"] = info.api_version
        return doc

    async def _body(self, request: Request) -> Any:
        return _parse_body(await request.body(), request.headers.get("content-type", "application/json"))

    def _validate(self, info: KindInfo, doc: Any, t: paths.Target) -> Obj:
        doc = self._in(info, doc, t)
        self._check_name(doc, t)
        return validate_document(info, doc, namespace=t.namespace)

    @staticmethod
    def _check_name(doc: Obj, t: paths.Target) -> None:
        """The name in a body sent to an object's URL must be that object's; a body without one gets it."""
        meta = doc.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            raise errors.invalid(doc.get("kind") or "", t.name, [errors.Cause("metadata", "must be an object")])
        name = (meta or {}).get("name")
        if t.name and name and name != t.name:
            raise errors.bad_request(f"the name of the object ({name}) does not match the name on the URL ({t.name})")
        if t.name and not name:
            doc["metadata"] = {**(meta or {}), "name": t.name}  # `metadata: null` is no metadata

    def _json(self, obj: Any, code: int = 200) -> JSONResponse:
        return JSONResponse(obj, status_code=code)

    # ---- verbs --------------------------------------------------------------------------------------

    async def _list(self, request: Request, ident: Identity, t: paths.Target, info: KindInfo) -> Response:
        reqs = parse_selector(request.query_params.get("labelSelector"))
        limit, page = _page_params(request)
        if page is not None and page["rv"] < await run_in_threadpool(self.ctx.store.compacted_rv):
            raise errors.gone("The provided continue parameter is too old to display a consistent list result. "
                              "You can start a new list without the continue parameter.")
        after = (page["ns"], page["name"]) if page else None
        items, rv = await self._visible_list(ident, t, info, after=after, limit=limit)
        meta: dict[str, Any] = {"resourceVersion": str(page["rv"] if page else rv)}
        if limit is not None and len(items) == limit:
            # Pages after the first are read when asked for; a watch from the first page's version replays
            # whatever changed in between, so a client that lists page by page and then watches converges.
            last = items[-1]["metadata"]
            meta["continue"] = _encode_continue(page["rv"] if page else rv, last.get("namespace", ""), last["name"])
        items = [self._out(info, t, o) for o in items if matches(reqs, o["metadata"].get("labels"))]
        if tables.wants_table(request.headers.get("accept")):
            return self._json(tables.table(info, items, meta["resourceVersion"]))
        return self._json({"apiVersion": info.api_version_for(t.version), "kind": f"{info.kind}List",
                           "metadata": meta, "items": items})

    async def _visible_list(self, ident: Identity, t: paths.Target, info: KindInfo, *,
                            after: tuple[str, str] | None = None, limit: int | None = None) -> tuple[list[Obj], int]:
        visible = self.ctx.authorizer.visible_namespaces(ident.user, info)
        if info is NAMESPACE and visible is not None:
            items, rv = await run_in_threadpool(self.ctx.store.list, info)
            return [o for o in items if o["metadata"]["name"] in visible], rv
        namespaces = visible if info.namespaced and t.namespace is None else None
        return await run_in_threadpool(lambda: self.ctx.store.list(info, t.namespace, namespaces=namespaces,
                                                                   after=after, limit=limit))

    async def _create(self, request: Request, ident: Identity, t: paths.Target, info: KindInfo) -> Response:
        obj = self._validate(info, await self._body(request), t)
        obj.pop("status", None)  # status is observed by controllers, never declared (Kubernetes drops it too)
        created = await run_in_threadpool(self.ctx.store.create, info, obj, dry_run=_flag_dry(request))
        return self._json(self._out(info, t, created), 201)

    async def _get(self, request: Request, ident: Identity, t: paths.Target, info: KindInfo) -> Response:
        obj = await run_in_threadpool(self.ctx.store.get, info, t.namespace, t.name)
        if tables.wants_table(request.headers.get("accept")):
            return self._json(tables.table(info, [obj], obj["metadata"]["resourceVersion"]))
        return self._json(self._out(info, t, obj))

    async def _replace(self, request: Request, ident: Identity, t: paths.Target, info: KindInfo) -> Response:
        body = await self._body(request)
        declares_finalizers = isinstance(body, dict) and isinstance(body.get("metadata"), dict) and \
            "finalizers" in body["metadata"]
        obj = self._validate(info, body, t)
        updated = await run_in_threadpool(lambda: self.ctx.store.update(
            info, obj, dry_run=_flag_dry(request), keep_finalizers=not declares_finalizers))
        return self._json(self._out(info, t, updated))

    async def _patch(self, request: Request, ident: Identity, t: paths.Target, info: KindInfo,
                     subresource: str | None = None) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        patch = await self._body(request)
        dry_run = _flag_dry(request)
        if ctype == "application/apply-patch+yaml":
            if subresource:
                raise errors.bad_request("apply is not supported on subresources")
            applied = self._validate(info, patch, t)  # the applied configuration must itself be valid
            raw = self._in(info, patch, t)
            return await run_in_threadpool(self._apply, info, t, raw, applied, dry_run)
        if ctype not in MERGE_PATCH and ctype != "application/json-patch+json":
            raise errors.ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format "
                                  f"- accepted media types include: application/json-patch+json, "
                                  f"application/merge-patch+json, application/apply-patch+yaml (got {ctype!r})")

        def mutate() -> Obj:
            for attempt in range(8):
                live = self.ctx.store.get(info, t.namespace, t.name)
                view = self._out(info, t, live)
                patched = json_patch(view, patch) if ctype == "application/json-patch+json" else \
                    merge_patch(view, patch)
                if subresource == "status":
                    new = copy.deepcopy(live)
                    if not isinstance(patched, dict):
                        raise errors.bad_request("the patched object must be an object")
                    status = _status_of(info, t, patched)
                    if status is None:
                        new.pop("status", None)  # no status, not a null one: readers expect an object
                    else:
                        new["status"] = status
                else:
                    new = self._validate(info, patched, t)
                if not (isinstance(patch, dict) and isinstance(patch.get("metadata"), dict)
                        and patch["metadata"].get("resourceVersion")):
                    new["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
                try:
                    return self.ctx.store.update(info, new, subresource=subresource, dry_run=dry_run)
                except errors.ApiError as err:
                    if err.code != 409 or attempt == 7 or err.reason != "Conflict":
                        raise
            raise AssertionError("unreachable")

        return self._json(self._out(info, t, await run_in_threadpool(mutate)))

    def _apply(self, info: KindInfo, t: paths.Target, raw: Obj, applied: Obj, dry_run: bool) -> Response:
        for attempt in range(8):
            live = self.ctx.store.try_get(info, t.namespace, t.name)
            if live is None:
                fresh = apply_config({"metadata": {}}, raw)
                obj = validate_document(info, merge_patch(applied, {"metadata": fresh["metadata"]}),
                                        namespace=t.namespace)
                obj.pop("status", None)
                try:
                    return self._json(self._out(info, t, self.ctx.store.create(info, obj, dry_run=dry_run)), 201)
                except errors.ApiError as err:
                    if err.code != 409 or attempt == 7:
                        raise
                    continue
            new = validate_document(info, apply_config(live, raw), namespace=t.namespace)
            new["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
            try:
                return self._json(self._out(info, t, self.ctx.store.update(info, new, dry_run=dry_run)))
            except errors.ApiError as err:
                if err.code != 409 or attempt == 7:
                    raise
        raise AssertionError("unreachable")

    async def _delete(self, request: Request, ident: Identity, t: paths.Target, info: KindInfo) -> Response:
        raw = await request.body()
        opts = _object(_parse_body(raw, "application/json") if raw.strip() else {}, "DeleteOptions")
        pre = _object(opts.get("preconditions") or {}, "preconditions")
        dry_run = _flag_dry(request) or "All" in (opts.get("dryRun") or [])
        policy = request.query_params.get("propagationPolicy") or opts.get("propagationPolicy") or "Background"
        if policy not in ("Background", "Foreground", "Orphan"):
            raise errors.invalid("DeleteOptions", t.name, [errors.Cause(
                "propagationPolicy", f"Unsupported value: {policy!r}: supported values: \"Background\", "
                                     "\"Foreground\", \"Orphan\"", "FieldValueNotSupported")])

        def delete() -> tuple[Obj, bool]:
            if policy == "Orphan" and not dry_run:
                self._orphan(info, t)
            return self.ctx.store.delete(info, t.namespace, t.name, uid=pre.get("uid"),
                                         resource_version=pre.get("resourceVersion"), dry_run=dry_run,
                                         foreground=policy == "Foreground")
        obj, _removed = await run_in_threadpool(delete)
        return self._json(self._out(info, t, obj))

    def _orphan(self, info: KindInfo, t: paths.Target) -> None:
        """Orphan propagation: dependents lose their reference to the owner, so the collector leaves them be."""
        uid = self.ctx.store.get(info, t.namespace, t.name)["metadata"]["uid"]
        for kind_key, namespace, name in self.ctx.store.dependents(uid):
            def drop(obj: Obj) -> Obj:
                refs = [r for r in obj["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
                if refs:
                    obj["metadata"]["ownerReferences"] = refs
                else:
                    obj["metadata"].pop("ownerReferences", None)
                return obj
            try:
                self.ctx.store.mutate(self.ctx.registry.by_key(kind_key), namespace or None, name, drop)
            except errors.ApiError as err:
                if err.code != 404:
                    raise

    # ---- subresources -------------------------------------------------------------------------------

    async def _subresource(self, request: Request, ident: Identity, t: paths.Target, info: KindInfo) -> Response:
        sub, method = t.subresource, request.method
        if sub == "status":
            verb = {"GET": "get", "PUT": "update", "PATCH": "patch"}.get(method)
            if verb is None:
                raise errors.ApiError(405, "MethodNotAllowed", f"{method} is not supported on status")
            self.ctx.authorizer.check(ident, verb, info, t.namespace, name=t.name, subresource="status")
            if method == "GET":
                return await self._get(request, ident, t, info)
            if method == "PATCH":
                return await self._patch(request, ident, t, info, subresource="status")
            doc = self._in(info, await self._body(request), t)
            self._check_name(doc, t)
            doc["metadata"]["namespace"] = t.namespace
            if _status_of(info, t, doc) is None:
                doc.pop("status", None)
            updated = await run_in_threadpool(lambda: self.ctx.store.update(
                info, doc, subresource="status", dry_run=_flag_dry(request)))
            return self._json(self._out(info, t, updated))
        if sub == "log" and info is POD and method == "GET":
            self.ctx.authorizer.check(ident, "get", info, t.namespace, name=t.name, subresource="log")
            return await self.ctx.logs.response(request, t.namespace or "", t.name or "")
        if sub == "token" and info is SERVICE_ACCOUNT and method == "POST":
            self.ctx.authorizer.check(ident, "create", info, t.namespace, name=t.name, subresource="token")
            return await self._token(request, t)
        raise errors.ApiError(404, "NotFound", f"{info.plural}/{sub} does not support {method}")

    async def _token(self, request: Request, t: paths.Target) -> Response:
        """TokenRequest, as `kubectl create token` sends it."""
        raw = await request.body()
        body = _object(_parse_body(raw, "application/json") if raw.strip() else {}, "TokenRequest")
        spec = _object(body.get("spec") or {}, "spec")
        ttl = spec.get("expirationSeconds")
        if ttl is not None and (not isinstance(ttl, int) or ttl < 600):
            raise errors.invalid("TokenRequest", t.name, [errors.Cause(
                "spec.expirationSeconds", "may not specify a duration less than 10 minutes")])
        await run_in_threadpool(self.ctx.store.get, SERVICE_ACCOUNT, t.namespace, t.name)
        token, expires = await run_in_threadpool(
            lambda: self.ctx.authorizer.issue(service_account_user(t.namespace or "", t.name or ""), t.namespace or "",
                                              ttl_seconds=ttl, description="TokenRequest"))
        status: dict[str, Any] = {"token": token}
        if expires:
            status["expirationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
        return self._json({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                           "metadata": {"name": t.name, "namespace": t.namespace},
                           "spec": {"expirationSeconds": ttl} if ttl else {}, "status": status}, 201)

    # ---- watch --------------------------------------------------------------------------------------

    async def _watch(self, request: Request, ident: Identity, t: paths.Target, info: KindInfo) -> Response:
        reqs = parse_selector(request.query_params.get("labelSelector"))
        rv_param = request.query_params.get("resourceVersion", "")
        bookmarks = _flag(request, "allowWatchBookmarks")
        raw_timeout = request.query_params.get("timeoutSeconds") or "1800"
        if not (raw_timeout.isascii() and raw_timeout.isdigit()):
            raise errors.bad_request(f"timeoutSeconds must be a non-negative integer, not {raw_timeout!r}")
        timeout = float(raw_timeout)
        visible = self.ctx.authorizer.visible_namespaces(ident.user, info)
        initial: list[Obj] = []
        if rv_param in ("", "0"):
            # No version given: the current state first, as synthetic ADDED events, then changes.
            initial, start_rv = await self._visible_list(ident, t, info)
        else:
            if not (rv_param.isascii() and rv_param.isdigit()) or int(rv_param) >= 2 ** 63:
                raise errors.bad_request(f"invalid resourceVersion {rv_param!r}")
            start_rv = int(rv_param)
            # Fail before streaming starts if the log no longer reaches back that far.
            await run_in_threadpool(self.ctx.store.changes_since, start_rv, kind_keys=[info.key], limit=1)

        def visible_to(obj: Obj) -> bool:
            meta = obj["metadata"]
            if t.namespace and meta.get("namespace") != t.namespace:
                return False
            if visible is not None:
                ns = meta.get("name") if info is NAMESPACE else meta.get("namespace")
                if (info.namespaced or info is NAMESPACE) and ns not in visible:
                    return False
            return matches(reqs, meta.get("labels"))

        async def stream() -> AsyncIterator[bytes]:
            last = start_rv
            deadline = time.monotonic() + timeout
            for obj in initial:
                if matches(reqs, obj["metadata"].get("labels")):
                    yield _event("ADDED", self._out(info, t, obj))
            wake = self.ctx.broadcaster.subscribe()
            try:
                last_sent = time.monotonic()
                while time.monotonic() < deadline and not self.ctx.stopping.is_set():
                    try:
                        changes = await run_in_threadpool(self.ctx.store.changes_since, last,
                                                          kind_keys=[info.key], limit=500)
                    except errors.ApiError as err:
                        yield _event("ERROR", err.to_status())
                        return
                    for change in changes:
                        last = change.rv
                        if visible_to(change.object):
                            self.ctx.metrics.watch_events.labels(info.plural).inc()
                            yield _event(change.type, self._out(info, t, change.object))
                            last_sent = time.monotonic()
                    if len(changes) == 500:
                        continue
                    if await request.is_disconnected():
                        return
                    if bookmarks and time.monotonic() - last_sent > self.ctx.bookmark_seconds:
                        yield _event("BOOKMARK", {"apiVersion": info.api_version_for(t.version), "kind": info.kind,
                                                  "metadata": {"resourceVersion": str(last)}})
                        last_sent = time.monotonic()
                    wake.clear()
                    if self.ctx.store_rv_hint() > last:
                        continue
                    try:
                        await asyncio.wait_for(wake.wait(), timeout=min(1.0, max(0.01, deadline - time.monotonic())))
                    except TimeoutError:
                        pass
            finally:
                self.ctx.broadcaster.unsubscribe(wake)

        return StreamingResponse(stream(), media_type="application/json")


def _status_of(info: KindInfo, t: paths.Target, doc: dict[str, Any]) -> dict[str, Any] | None:
    """The status a write to the status subresource sets: an object (or null, none); anything else would be
    stored and break every reader that expects an object."""
    status = doc.get("status")
    if status is not None and not isinstance(status, dict):
        raise errors.invalid(info.kind, t.name, [errors.Cause("status", "must be an object")])
    return status


def _event(type_: str, obj: Any) -> bytes:
    return (json.dumps({"type": type_, "object": obj}, separators=(",", ":")) + "\n").encode()


def _encode_continue(rv: int, namespace: str, name: str) -> str:
    raw = json.dumps({"rv": rv, "ns": namespace, "name": name}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _page_params(request: Request) -> tuple[int | None, dict[str, Any] | None]:
    """`limit` and a decoded `continue` token from a list request; 400 for malformed ones."""
    raw_limit, token = request.query_params.get("limit"), request.query_params.get("continue")
    limit = None
    if raw_limit:
        if not (raw_limit.isascii() and raw_limit.isdigit()) or int(raw_limit) >= 2 ** 63:
            raise errors.bad_request(f"limit must be a non-negative 64-bit integer, not {raw_limit!r}")
        limit = int(raw_limit) or None
    if not token:
        return limit, None
    try:
        page = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        page = {"rv": int(page["rv"]), "ns": str(page["ns"]), "name": str(page["name"])}
    except (ValueError, KeyError, TypeError) as err:
        raise errors.bad_request("continue key is not valid") from err
    return limit, page


def _flag_dry(request: Request) -> bool:
    return request.query_params.get("dryRun") == "All"


def discovery_router(ctx: ServerContext) -> APIRouter:
    """API discovery, so that clients resolve kinds, plurals and short names the way kubectl does."""
    router = APIRouter()

    def resources(group: str, version: str) -> list[dict[str, Any]]:
        out = []
        for info in ctx.registry.all():
            if info.group == group and version in info.versions:
                out.append({"name": info.plural, "singularName": info.singular_name, "namespaced": info.namespaced,
                            "kind": info.kind, "shortNames": list(info.short_names),
                            "categories": list(info.categories),
                            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]})
                if info.kind == "Pod":
                    out.append({"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod",
                                "verbs": ["get"]})
                out.append({"name": f"{info.plural}/status", "singularName": "", "namespaced": info.namespaced,
                            "kind": info.kind, "verbs": ["get", "patch", "update"]})
        return out

    @router.get("/api", include_in_schema=False)
    def api_versions() -> dict[str, Any]:
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}

    @router.get("/api/v1", include_in_schema=False)
    def core_resources() -> dict[str, Any]:
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": resources("", "v1")}

    def group_doc(group: str, kinds: list[KindInfo]) -> dict[str, Any]:
        versions = sorted({v for k in kinds for v in k.versions}, reverse=True)
        preferred = kinds[0].version
        return {"name": group, "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
                "preferredVersion": {"groupVersion": f"{group}/{preferred}", "version": preferred}}

    @router.get("/apis", include_in_schema=False)
    def groups() -> dict[str, Any]:
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [group_doc(g, kinds) for g, kinds in sorted(ctx.registry.groups().items()) if g]}

    @router.get("/apis/{group}", include_in_schema=False)
    def group(group: str) -> Response:
        kinds = ctx.registry.groups().get(group)
        if not kinds or not group:
            return status_response(errors.ApiError(404, "NotFound", f"the server could not find group {group!r}"))
        return JSONResponse({"kind": "APIGroup", "apiVersion": "v1", **group_doc(group, kinds)})

    @router.get("/apis/{group}/{version}", include_in_schema=False)
    def group_resources(group: str, version: str) -> Response:
        found = resources(group, version)
        if not found:
            return status_response(errors.ApiError(404, "NotFound", f"the server could not find {group}/{version}"))
        return JSONResponse({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}",
                             "resources": found})

    @router.get("/version", include_in_schema=False)
    def version() -> dict[str, str]:
        return {"major": "1", "minor": "31", "gitVersion": f"v1.31.0-kaip.{__version__}", "platform": "kaip/local",
                "kaipVersion": __version__}

    return router
