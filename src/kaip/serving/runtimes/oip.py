"""Open Inference Protocol v2 tensors: JSON and binary-extension requests decoded to numpy, outputs encoded back.

Every malformed tensor is a `ProtocolError` naming the input and what is wrong with it; the server answers it
with 400 and `{"error": message}`, the protocol's error shape.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

DTYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}
HEADER_LENGTH = "inference-header-content-length"


class ProtocolError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def datatype_of(arr: np.ndarray) -> str:
    if arr.dtype == np.object_ or arr.dtype.kind in ("U", "S"):
        return "BYTES"
    for name, dtype in DTYPES.items():
        if dtype is not np.object_ and arr.dtype == np.dtype(dtype):
            return name
    raise ProtocolError(f"unsupported output dtype {arr.dtype}", 500)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _check_values(name: str, datatype: str, values: list[Any]) -> None:
    for v in values:
        if datatype == "BOOL":
            ok = isinstance(v, bool)
        elif datatype == "BYTES":
            ok = isinstance(v, str)
        elif datatype.startswith("FP"):
            ok = isinstance(v, int | float) and not isinstance(v, bool)
        else:
            ok = isinstance(v, int) and not isinstance(v, bool)
        if not ok:
            raise ProtocolError(f"input '{name}': value {v!r} is not valid for datatype {datatype}")


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray


def _decode_binary(name: str, datatype: str, count: int, raw: bytes) -> np.ndarray:
    if datatype == "BYTES":
        items, pos = [], 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise ProtocolError(f"input '{name}': truncated BYTES element")
            (n,) = struct.unpack_from("<I", raw, pos)
            items.append(raw[pos + 4:pos + 4 + n])
            pos += 4 + n
        if len(items) != count:
            raise ProtocolError(f"input '{name}': shape needs {count} elements, got {len(items)}")
        return np.array(items, dtype=np.object_)
    dtype = np.dtype(DTYPES[datatype]).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(f"input '{name}': binary data of {len(raw)} bytes does not match shape "
                            f"({count} elements of {datatype} = {count * dtype.itemsize} bytes)")
    return np.frombuffer(raw, dtype=dtype).copy()


def decode_tensor(tensor: Any, binary: bytes | None = None) -> Tensor:
    if not isinstance(tensor, dict):
        raise ProtocolError("each input must be an object with name, shape, datatype and data")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError("input: 'name' is required and must be a string")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise ProtocolError(f"input '{name}': 'shape' must be a list of non-negative integers")
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in DTYPES:  # a list or object is not hashable: 400, not 500
        raise ProtocolError(f"input '{name}': unsupported datatype {datatype!r} (one of {', '.join(DTYPES)})")
    count = math.prod(shape)
    if binary is not None:
        arr = _decode_binary(name, datatype, count, binary)
    else:
        if "data" not in tensor:
            raise ProtocolError(f"input '{name}': 'data' is required")
        values = _flatten(tensor["data"])
        if len(values) != count:
            raise ProtocolError(f"input '{name}': shape {shape} needs {count} elements, got {len(values)}")
        _check_values(name, datatype, values)
        if datatype == "BYTES":
            arr = np.array(values, dtype=np.object_)
        else:
            try:
                arr = np.array(values, dtype=DTYPES[datatype])
            except (OverflowError, ValueError) as err:
                raise ProtocolError(f"input '{name}': {err}") from err
    return Tensor(name, datatype, shape, arr.reshape(shape))


def _parameters(obj: dict[str, Any], what: str) -> dict[str, Any]:
    """The `parameters` of a request, an input or an output: absent (or null) is none; anything but an object is
    a 400 (the protocol's `parameters` is an object)."""
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ProtocolError(f"{what}: 'parameters' must be an object")
    return params


@dataclass
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    parameters: dict[str, Any]
    outputs: list[dict[str, Any]]
    binary_output: bool


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse a JSON request, or a binary-extension one (JSON header of `header_length` bytes, then tensors)."""
    raw_binary = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError as err:
            raise ProtocolError(f"invalid {HEADER_LENGTH} header {header_length!r}") from err
        if n < 0 or n > len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {n} is larger than the body ({len(body)} bytes)")
        body, raw_binary = body[:n], body[n:]
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ProtocolError(f"Unrecognized request format: {err}") from err
    if not isinstance(doc, dict):
        raise ProtocolError("Unrecognized request format: the body must be a JSON object")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("'inputs' is required and must be a non-empty list")
    params = _parameters(doc, "the request")
    outputs = doc.get("outputs")
    if outputs is None:
        outputs = []
    if not isinstance(outputs, list):
        raise ProtocolError("'outputs' must be a list")
    for output in outputs:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise ProtocolError("each requested output must be an object with a string 'name'")
        _parameters(output, f"output '{output['name']}'")
    tensors, pos = [], 0
    for item in inputs:
        size = _parameters(item, f"input '{item.get('name')}'").get("binary_data_size") \
            if isinstance(item, dict) else None
        chunk = None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or pos + size > len(raw_binary):
                raise ProtocolError(f"input '{item.get('name')}': binary_data_size {size!r} is not a size within "
                                    "the binary data")
            chunk, pos = raw_binary[pos:pos + size], pos + size
        tensors.append(decode_tensor(item, chunk))
    binary_out = bool(params.get("binary_data_output")) or any(
        bool((o.get("parameters") or {}).get("binary_data")) for o in outputs)
    req_id = doc.get("id")
    return InferRequest(str(req_id) if req_id is not None else None, tensors, params, outputs, binary_out)


def _to_binary(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for item in arr.reshape(-1):
            b = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(b)) + b)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=np.dtype(DTYPES[datatype]).newbyteorder("<")).tobytes()


def encode_response(model_name: str, model_version: str | None, req: InferRequest,
                    outputs: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """The response body and extra headers (binary extension: JSON header length)."""
    wanted = [o.get("name") for o in req.outputs if isinstance(o, dict)]
    unknown = [w for w in wanted if w not in outputs]
    if unknown:
        raise ProtocolError(f"unknown output {unknown[0]!r} (model outputs: {', '.join(outputs)})")
    names = wanted or list(outputs)
    doc: dict[str, Any] = {"model_name": model_name, "outputs": []}
    if model_version:
        doc["model_version"] = model_version
    if req.id is not None:
        doc["id"] = req.id
    buffers: list[bytes] = []
    per_output = {o.get("name"): bool((o.get("parameters") or {}).get("binary_data"))
                  for o in req.outputs if isinstance(o, dict)}
    for name in names:
        arr = np.asarray(outputs[name])
        datatype = datatype_of(arr)
        item: dict[str, Any] = {"name": name, "shape": list(arr.shape), "datatype": datatype}
        if per_output.get(name, bool(req.parameters.get("binary_data_output"))):
            raw = _to_binary(arr, datatype)
            item["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        else:
            flat = arr.reshape(-1)
            item["data"] = [x.decode() if isinstance(x, bytes) else x for x in flat.tolist()]
        doc["outputs"].append(item)
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not buffers:
        return header, {"content-type": "application/json"}
    return header + b"".join(buffers), {"content-type": "application/octet-stream",
                                        HEADER_LENGTH: str(len(header))}
