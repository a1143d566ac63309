"""Kaip's OpenAPI document (`/openapi.json`): FastAPI's own routes, and the resource API at its Kubernetes REST
paths — for every kind, in the version it is stored in, the operations Kubernetes' own document lists (list,
create, read, replace, patch, delete, and the status subresource), with the statuses Kaip answers and the full
object schema of the kind: the envelope (apiVersion, kind, metadata, status) around the kind's own strict schema.

Watches (`?watch=true`, a stream of events), pod logs, TokenRequests, discovery and server-side tables are described
in docs/core.md and left out here. Named like Kubernetes' definitions and operation ids
(`io.k8s.api.core.v1.ConfigMap`, `listCoreV1NamespacedConfigMap`), so that generated clients read familiarly.
"""

from __future__ import annotations

import re
from typing import Any

from kaip.api.kinds import KindInfo
from kaip.api.meta import ObjectMeta

META = "io.k8s.apimachinery.pkg.apis.meta.v1"
OBJECT_META = f"{META}.ObjectMeta"
STATUS = f"{META}.Status"
DELETE_OPTIONS = f"{META}.DeleteOptions"
PATCH = f"{META}.Patch"
JSON_PATCH = f"{META}.JsonPatch"
REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
           410: "Gone", 413: "RequestEntityTooLarge", 415: "UnsupportedMediaType", 422: "Invalid"}
# What each verb may answer besides its success (every call needs a token, and may be refused by RBAC, or address
# a namespace, kind or object that is not there).
FAILURES = {
    "list": (400, 410),
    "create": (400, 409, 413, 422),
    "read": (),
    "replace": (400, 409, 413, 422),
    "patch": (400, 409, 413, 415, 422),
    "delete": (400, 409, 413, 422),
}
ALWAYS = (401, 403, 404)


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def definition_prefix(info: KindInfo) -> str:
    """Kubernetes' naming of definitions: `io.k8s.api.core` for the core group, else the group reversed."""
    return ".".join(reversed(info.group.split("."))) if info.group else "io.k8s.api.core"


def definition_name(info: KindInfo, name: str | None = None) -> str:
    return f"{definition_prefix(info)}.{info.version}.{name or info.kind}"


def _camel(group: str, version: str) -> str:
    words = re.split(r"[.\-]", group) if group else ["core"]
    return "".join(w[:1].upper() + w[1:] for w in [*words, version] if w)


def _rename_refs(node: Any, renames: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {k: _rename_refs(v, renames) for k, v in node.items()}
        target = out.get("$ref")
        if isinstance(target, str) and target.startswith("#/components/schemas/"):
            name = target.removeprefix("#/components/schemas/")
            if name in renames:
                out["$ref"] = f"#/components/schemas/{renames[name]}"
        return out
    if isinstance(node, list):
        return [_rename_refs(v, renames) for v in node]
    return node


def _meta_schemas() -> dict[str, Any]:
    meta = ObjectMeta.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = meta.pop("$defs", {})
    renames = {name: f"{META}.{name}" for name in defs}
    out = {renames[name]: _rename_refs(sub, renames) for name, sub in defs.items()}
    out[OBJECT_META] = _rename_refs(meta, renames)
    cause = {"type": "object", "properties": {"reason": {"type": "string"}, "message": {"type": "string"},
                                              "field": {"type": "string"}}}
    out[STATUS] = {
        "type": "object", "description": "The answer to a failed call (Kubernetes' Status).",
        "required": ["kind", "apiVersion", "status", "message", "reason", "code"],
        "properties": {
            "kind": {"enum": ["Status"]}, "apiVersion": {"enum": ["v1"]}, "metadata": {"type": "object"},
            "status": {"enum": ["Failure"]}, "message": {"type": "string"}, "reason": {"type": "string"},
            "code": {"type": "integer"},
            "details": {"type": "object", "properties": {
                "name": {"type": "string"}, "group": {"type": "string"}, "kind": {"type": "string"},
                "causes": {"type": "array", "items": cause}}}}}
    out[DELETE_OPTIONS] = {
        "type": "object", "properties": {
            "apiVersion": {"type": "string"}, "kind": {"type": "string"},
            "propagationPolicy": {"enum": ["Background", "Foreground", "Orphan"]},
            "dryRun": {"type": "array", "items": {"enum": ["All"]}},
            "preconditions": {"type": "object", "properties": {"uid": {"type": "string"},
                                                               "resourceVersion": {"type": "string"}}}}}
    out[PATCH] = {"type": "object", "description": "A JSON merge patch (RFC 7386) of the object."}
    out[JSON_PATCH] = {"type": "array", "description": "A JSON patch (RFC 6902).", "items": {
        "type": "object", "required": ["op", "path"], "properties": {
            "op": {"enum": ["add", "remove", "replace", "move", "copy", "test"]}, "path": {"type": "string"},
            "from": {"type": "string"}, "value": {}}}}
    return out


def kind_schemas(info: KindInfo, taken: dict[str, Any]) -> dict[str, Any]:
    """The kind's object and list schemas, and the definitions they use. A definition whose name another kind
    already uses for a different shape is named after this kind's group and version instead."""
    body = info.schema.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = body.pop("$defs", {})
    renames = {name: definition_name(info, name) for name, sub in defs.items() if name in taken and taken[name] != sub}
    out = {renames.get(name, name): _rename_refs(sub, renames) for name, sub in defs.items()}
    body = _rename_refs(body, renames)
    gvk = [{"group": info.group, "version": info.version, "kind": info.kind}]
    properties = {
        "apiVersion": {"type": "string", "enum": [info.api_version]},
        "kind": {"type": "string", "enum": [info.kind]},
        "metadata": ref(OBJECT_META),
        **body.get("properties", {}),
        "status": {"type": "object", "description": "Observed state, written by the kind's controller."},
    }
    obj = {**{k: v for k, v in body.items() if k not in ("properties", "title")}, "type": "object",
           "title": info.kind, "properties": properties, "x-kubernetes-group-version-kind": gvk}
    out[definition_name(info)] = obj
    out[definition_name(info, f"{info.kind}List")] = {
        "type": "object", "title": f"{info.kind}List", "required": ["apiVersion", "kind", "metadata", "items"],
        "properties": {
            "apiVersion": {"enum": [info.api_version]}, "kind": {"enum": [f"{info.kind}List"]},
            "metadata": {"type": "object", "properties": {"resourceVersion": {"type": "string"},
                                                          "continue": {"type": "string"}}},
            "items": {"type": "array", "items": ref(definition_name(info))}},
        "x-kubernetes-group-version-kind": [{**gvk[0], "kind": f"{info.kind}List"}]}
    return out


def _responses(verb: str, success: dict[int, str]) -> dict[str, Any]:
    out: dict[str, Any] = {str(code): {"description": "OK" if code == 200 else "Created",
                                       "content": {"application/json": {"schema": ref(name)}}}
                           for code, name in success.items()}
    for code in sorted({*FAILURES[verb], *ALWAYS}):
        out[str(code)] = {"description": REASONS[code], "content": {"application/json": {"schema": ref(STATUS)}}}
    return out


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


DRY_RUN = _query("dryRun", {"type": "string", "enum": ["All"]}, "All: validate and answer, persist nothing")
LIST_QUERY = [
    _query("labelSelector", {"type": "string"}, "equality- and set-based label requirements"),
    _query("limit", {"type": "integer", "minimum": 0}, "at most this many items; `continue` gets the next page"),
    _query("continue", {"type": "string"}, "the `metadata.continue` of the previous page"),
]


def resource_paths(info: KindInfo) -> dict[str, Any]:
    """The path items of one kind (its storage version)."""
    base = f"/apis/{info.group}/{info.version}" if info.group else f"/api/{info.version}"
    scoped = f"{base}/namespaces/{{namespace}}/{info.plural}" if info.namespaced else f"{base}/{info.plural}"
    ns = "Namespaced" if info.namespaced else ""
    gv = _camel(info.group, info.version)
    tag = f"{info.group or 'core'}_{info.version}"
    obj, lst = definition_name(info), definition_name(info, f"{info.kind}List")
    body = {"required": True, "content": {"application/json": {"schema": ref(obj)},
                                          "application/yaml": {"schema": ref(obj)}}}
    patches = {"application/merge-patch+json": {"schema": ref(PATCH)},
               "application/strategic-merge-patch+json": {"schema": ref(PATCH)},
               "application/json-patch+json": {"schema": ref(JSON_PATCH)}}
    patch_body = {"required": True, "content": {**patches, "application/apply-patch+yaml": {"schema": ref(obj)}}}
    status_patch_body = {"required": True, "content": patches}  # server-side apply is not taken on status

    def op(verb: str, what: str, success: dict[int, str], *, query: list[dict[str, Any]] | None = None,
           request: dict[str, Any] | None = None, suffix: str = "", operation_id: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {"operationId": operation_id or f"{verb}{gv}{ns}{info.kind}{suffix}", "tags": [tag],
                               "summary": f"{what} {info.kind}", "security": [{"BearerToken": []}],
                               "responses": _responses(verb, success)}
        if query:
            out["parameters"] = query
        if request:
            out["requestBody"] = request
        return out

    name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                  "description": f"name of the {info.kind}"}
    common = [{"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"},
               "description": "the object's namespace"}] if info.namespaced else []
    delete_body = {"required": False, "content": {"application/json": {"schema": ref(DELETE_OPTIONS)}}}
    delete_query = [DRY_RUN, _query("propagationPolicy", {"enum": ["Background", "Foreground", "Orphan"]},
                                    "what happens to the object's dependents")]
    paths: dict[str, Any] = {
        scoped: {"parameters": common,
                 "get": op("list", "list objects of kind", {200: lst}, query=LIST_QUERY),
                 "post": op("create", "create a", {201: obj}, query=[DRY_RUN], request=body)},
        f"{scoped}/{{name}}": {"parameters": [*common, name_param],
                               "get": op("read", "read the specified", {200: obj}),
                               "put": op("replace", "replace the specified", {200: obj}, query=[DRY_RUN],
                                         request=body),
                               "patch": op("patch", "partially update (or apply) the specified",
                                           {200: obj, 201: obj}, query=[DRY_RUN], request=patch_body),
                               "delete": op("delete", "delete a", {200: obj}, query=delete_query,
                                            request=delete_body)},
        f"{scoped}/{{name}}/status": {"parameters": [*common, name_param],
                                      "get": op("read", "read status of the specified", {200: obj}, suffix="Status"),
                                      "put": op("replace", "replace status of the specified", {200: obj},
                                                query=[DRY_RUN], request=body, suffix="Status"),
                                      "patch": op("patch", "partially update status of the specified", {200: obj},
                                                  query=[DRY_RUN], request=status_patch_body, suffix="Status")},
    }
    if info.namespaced:
        paths[f"{base}/{info.plural}"] = {"get": op("list", "list objects (in every namespace) of kind", {200: lst},
                                                    query=LIST_QUERY,
                                                    operation_id=f"list{gv}{info.kind}ForAllNamespaces")}
    return paths


def add_resource_api(doc: dict[str, Any], kinds: list[KindInfo]) -> dict[str, Any]:
    """Add the resource API of `kinds` to a FastAPI OpenAPI document (in place; returned too)."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(_meta_schemas())
    for info in kinds:
        for name, schema in kind_schemas(info, schemas).items():
            schemas.setdefault(name, schema)
        doc.setdefault("paths", {}).update(resource_paths(info))
    doc["components"]["securitySchemes"] = {"BearerToken": {
        "type": "http", "scheme": "bearer", "description": "a Kaip token (`kaip up` writes the admin's)"}}
    return doc
