"""Kaip's explainer runtime: per-instance feature attributions for tabular models, model-agnostic (the model is only
called, through the predictor's KServe v1 `:predict`, as KServe's explainers call it).

For each instance x and a baseline b (`--baseline`, else zeros), rows that take some features from x and the rest
from b are sent to the predictor in batches. What is explained, per instance, is read from the prediction of x:

- a list of numbers (class probabilities, e.g. the sklearn runtime with `PREDICT_PROBA=true`, or scores): the entry
  of x's top class, in every row;
- a class label (an integer, a string or a boolean): 1 for a row predicted as x's label, else 0;
- a float (a regressor): the output itself.

Methods (`--method`):

- `shapley`: exact Shapley values of the game v(S) = output of the row with the features in S from x and the others
  from b (2^d rows per instance). They add up to output(x) − output(b), and equal features get equal shares.
- `occlusion`: output(x) − output(x with feature i from b), d + 2 rows per instance.
- `auto` (default): shapley up to 10 features, occlusion above.

A positive attribution means that the feature's value, rather than the baseline's, pushes the explained output up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kaip.serving.runtimes.server import error, health_routes, parse_args, serve

METHODS = ("auto", "shapley", "occlusion")
MAX_SHAPLEY_FEATURES = 10  # 1,024 rows per instance
MAX_ROWS = 100_000  # predictions one request may cost
BATCH_BYTES = 1 << 20  # per call to the predictor: well under the gateway's 3 MiB body limit
BYTES_PER_VALUE = 25  # a float's longest JSON form and its comma: a bound, so batches never overrun
PARALLEL_CALLS = 4
FORWARD_HEADERS = ("x-request-id", "ce-id", "traceparent")


class ExplainError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


# ---- configuration (pure) ------------------------------------------------------------------------------------

def parse_numbers(text: str | None, what: str) -> list[float] | None:
    """`--baseline`: a JSON list or comma-separated numbers; None when not given."""
    if text is None or not text.strip():
        return None
    try:
        values = json.loads(text) if text.lstrip().startswith("[") else [float(v) for v in text.split(",")]
    except ValueError as err:
        raise ValueError(f"{what} must be numbers separated by commas or a JSON list: {err}") from err
    if not isinstance(values, list) or not values or not all(_is_number(v) for v in values):
        raise ValueError(f"{what} must be a non-empty list of finite numbers, got {_short(text)}")
    return [float(v) for v in values]


def parse_names(text: str | None) -> list[str] | None:
    if text is None or not text.strip():
        return None
    names = json.loads(text) if text.lstrip().startswith("[") else [n.strip() for n in text.split(",")]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"--feature_names must be names separated by commas or a JSON list, got {_short(text)}")
    if len(set(names)) != len(names):
        raise ValueError("--feature_names has a name twice")
    return names


@dataclass(frozen=True)
class Settings:
    baseline: list[float] | None = None
    feature_names: list[str] | None = None
    method: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.baseline is not None and self.feature_names is not None \
                and len(self.baseline) != len(self.feature_names):
            raise ValueError(f"--baseline has {len(self.baseline)} values but --feature_names names "
                             f"{len(self.feature_names)} features")


# ---- the request and the rows it costs (pure) -----------------------------------------------------------------

def read_instances(doc: Any) -> list[list[float]]:
    """The rows of a KServe v1 request (`instances`, or `inputs`): equal-length lists of finite numbers."""
    if not isinstance(doc, dict):
        raise ExplainError("Unrecognized request format: the body must be a JSON object")
    instances = doc.get("instances", doc.get("inputs"))
    if not isinstance(instances, list) or not instances:
        raise ExplainError('Expected "instances" (or "inputs") to be a non-empty list of rows of numbers')
    rows: list[list[float]] = []
    for i, inst in enumerate(instances):
        if not isinstance(inst, list) or not inst or not all(_is_number(v) for v in inst):
            raise ExplainError(f"instance {i}: expected a row of numbers (this explainer explains tabular "
                               f"models), got {_short(inst)}")
        if rows and len(inst) != len(rows[0]):
            raise ExplainError(f"instance {i} has {len(inst)} features, instance 0 has {len(rows[0])}")
        rows.append([float(v) for v in inst])
    return rows


@dataclass(frozen=True)
class Plan:
    method: str  # "shapley" or "occlusion"
    baseline: list[float]
    masks: list[int]  # per instance, the rows to predict: bit i set = feature i from the instance
    rows: list[list[float]]  # every instance's rows, instance after instance


def plan(instances: list[list[float]], settings: Settings) -> Plan:
    width = len(instances[0])
    for what, given in (("--baseline", settings.baseline), ("--feature_names", settings.feature_names)):
        if given is not None and len(given) != width:
            raise ExplainError(f"the instances have {width} features; the explainer's {what} has {len(given)}")
    baseline = settings.baseline if settings.baseline is not None else [0.0] * width
    method = settings.method
    if method == "auto":
        method = "shapley" if width <= MAX_SHAPLEY_FEATURES else "occlusion"
    if method == "shapley" and width > MAX_SHAPLEY_FEATURES:
        raise ExplainError(f"exact Shapley values of {width} features need 2^{width} predictions per instance; "
                           f"this explainer computes them for up to {MAX_SHAPLEY_FEATURES} features "
                           "(run it with --method=occlusion)")
    full = (1 << width) - 1
    masks = list(range(full + 1)) if method == "shapley" else [full, 0, *(full ^ (1 << i) for i in range(width))]
    total = len(masks) * len(instances)
    if total > MAX_ROWS:
        raise ExplainError(f"explaining {len(instances)} instances by {method} needs {total} predictions, more than "
                           f"{MAX_ROWS}: send fewer instances")
    rows = [[x[i] if m >> i & 1 else baseline[i] for i in range(width)] for x in instances for m in masks]
    return Plan(method, baseline, masks, rows)


def batches(rows: list[list[float]], limit: int = BATCH_BYTES) -> list[list[list[float]]]:
    """Rows cut into requests whose JSON stays under `limit` bytes."""
    per = max(1, limit // (BYTES_PER_VALUE * len(rows[0]) + 2))
    return [rows[i:i + per] for i in range(0, len(rows), per)]


# ---- attributions (pure) --------------------------------------------------------------------------------------

def scorer(prediction: Any) -> tuple[str, Any, Callable[[Any], float]]:
    """(what is explained, its target, the function reading it from any row's output) for one instance's
    prediction."""
    if isinstance(prediction, list) and prediction and all(_is_number(v) for v in prediction):
        target = max(range(len(prediction)), key=prediction.__getitem__)

        def class_score(out: Any) -> float:
            if not isinstance(out, list) or len(out) != len(prediction) or not _is_number(out[target]):
                raise ExplainError(f"the predictor answered {_short(out)} for a row, {_short(prediction)} for the "
                                   "instance: its outputs differ in shape", 502)
            return float(out[target])
        return "class_score", target, class_score
    if isinstance(prediction, bool | int | str):
        return "label", prediction, lambda out: 1.0 if out == prediction else 0.0
    if isinstance(prediction, float) and math.isfinite(prediction):
        def value(out: Any) -> float:
            if not _is_number(out):
                raise ExplainError(f"the predictor answered {_short(out)} for a row, a number for the instance", 502)
            return float(out)
        return "value", None, value
    raise ExplainError(f"cannot explain the prediction {_short(prediction)}: expected a list of class scores, a "
                       "class label or a number", 502)


def shapley_values(values: list[float], width: int) -> list[float]:
    """Exact Shapley values from v(S) for every coalition S (`values[mask]`)."""
    weights = [math.factorial(s) * math.factorial(width - s - 1) / math.factorial(width) for s in range(width)]
    phi = [0.0] * width
    for mask, v in enumerate(values):
        size = mask.bit_count()
        if size == width:
            continue
        for i in range(width):
            if not mask >> i & 1:
                phi[i] += weights[size] * (values[mask | 1 << i] - v)
    return phi


def attribute(p: Plan, predictions: list[Any], feature_names: list[str] | None = None) -> dict[str, Any]:
    """The response: one explanation per instance, from the predictions of `p.rows` (in order)."""
    per = len(p.masks)
    if len(predictions) != len(p.rows):
        raise ExplainError(f"the predictor answered {len(predictions)} predictions for {len(p.rows)} rows", 502)
    width = len(p.baseline)
    at_x, at_b = p.masks.index((1 << width) - 1), p.masks.index(0)  # the instance's row and the baseline's
    names: list[Any] = feature_names or list(range(width))
    explanations = []
    for k in range(len(p.rows) // per):
        outs = predictions[k * per:(k + 1) * per]
        kind, target, read = scorer(outs[at_x])
        values = [read(o) for o in outs]
        if p.method == "shapley":
            phi = shapley_values(values, width)  # the plan's masks are 0 … 2^d − 1 in order
        else:
            phi = [values[at_x] - values[2 + i] for i in range(width)]  # after the instance's and baseline's rows
        order = sorted(range(width), key=lambda i: -abs(phi[i]))
        explanations.append({
            "prediction": outs[at_x], "explained": kind, "target": target, "value": values[at_x],
            "baseline_value": values[at_b], "attributions": phi, "ranking": [names[i] for i in order]})
    return {"explanations": explanations,
            "meta": {"explainer": "kaip", "method": p.method, "baseline": p.baseline,
                     "feature_names": feature_names, "predictions": len(p.rows)}}


# ---- the server ------------------------------------------------------------------------------------------------

def predictor_url(predictor_host: str, model_name: str) -> str:
    """KServe's explainer contract: `http://{predictor_host}/v1/models/{name}:predict`."""
    base = predictor_host if predictor_host.startswith(("http://", "https://")) else f"http://{predictor_host}"
    return f"{base.rstrip('/')}/v1/models/{model_name}:predict"


class Explainer:
    def __init__(self, name: str, url: str, token: str | None, settings: Settings) -> None:
        self.name = name
        self.url = url
        self.settings = settings
        self.auth = {"authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(None), trust_env=False)

    async def _predict(self, rows: list[list[float]], headers: dict[str, str]) -> list[Any]:
        gate = asyncio.Semaphore(PARALLEL_CALLS)

        async def call(chunk: list[list[float]]) -> list[Any]:
            async with gate:
                try:
                    resp = await self.client.post(self.url, json={"instances": chunk},
                                                  headers={**headers, **self.auth})
                except httpx.HTTPError as err:
                    raise ExplainError(f"the predictor did not answer: {err!r}", 502) from err
            try:
                doc = resp.json()
            except ValueError:
                doc = None
            message = doc.get("error") if isinstance(doc, dict) else None
            if resp.status_code != 200:
                # Bad rows are the caller's (KServe's 400); anything else is the explainer's upstream failing.
                status = resp.status_code if resp.status_code in (400, 413, 422) else 502
                raise ExplainError(f"the predictor answered {resp.status_code}: {message or resp.text[:200]}", status)
            predictions = doc.get("predictions") if isinstance(doc, dict) else None
            if not isinstance(predictions, list) or len(predictions) != len(chunk):
                raise ExplainError(f"the predictor's answer has no list of {len(chunk)} 'predictions': "
                                   f"{_short(doc)}", 502)
            return predictions

        parts = await asyncio.gather(*(call(chunk) for chunk in batches(rows)))
        return [out for part in parts for out in part]

    async def explain(self, doc: Any, headers: dict[str, str]) -> dict[str, Any]:
        p = plan(read_instances(doc), self.settings)
        return attribute(p, await self._predict(p.rows, headers), self.settings.feature_names)


def build_app(explainer: Explainer, registry: CollectorRegistry) -> Starlette:
    explain_seconds = Histogram("request_explain_seconds", "Time spent in explain", ["model_name"],
                                registry=registry)

    async def live(_: Request) -> Response:
        return JSONResponse({"live": True})

    async def model(request: Request) -> Response:
        name = request.path_params["name"]
        if name != explainer.name:
            return error(f"Model with name {name} does not exist.", 404)
        return JSONResponse({"name": name, "ready": True})

    async def verb(request: Request) -> Response:
        name, _, action = request.path_params["name_verb"].rpartition(":")
        if action != "explain":
            return error(f"this is the explainer of {explainer.name}: it answers :explain only", 404)
        if name != explainer.name:
            return error(f"Model with name {name} does not exist.", 404)
        try:
            doc = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            return error(f"Unrecognized request format: {err}", 400)
        started = time.perf_counter()
        headers = {k: v for k, v in request.headers.items() if k in FORWARD_HEADERS}
        try:
            out = await explainer.explain(doc, headers)
        except ExplainError as err:
            return error(str(err), err.status)
        explain_seconds.labels(explainer.name).observe(time.perf_counter() - started)
        return JSONResponse(out)

    return Starlette(routes=[
        Route("/", live), *health_routes(registry), Route("/v1/models/{name}", model),
        Route("/v1/models/{name_verb}", verb, methods=["POST"]),
    ])


def main(argv: list[str] | None = None) -> None:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--predictor_host", required=True)
        parser.add_argument("--baseline", default=os.environ.get("EXPLAINER_BASELINE"))
        parser.add_argument("--feature_names", default=os.environ.get("EXPLAINER_FEATURE_NAMES"))
        parser.add_argument("--method", default=os.environ.get("EXPLAINER_METHOD", "auto"))

    args = parse_args("Kaip explainer", extra, argv)
    try:
        settings = Settings(parse_numbers(args.baseline, "--baseline"), parse_names(args.feature_names),
                            args.method)
    except ValueError as err:
        print(f"kaip-explainer: cannot start the explainer of {args.model_name!r}: {err}", file=sys.stderr,
              flush=True)
        sys.exit(1)
    url = predictor_url(args.predictor_host, args.model_name)
    print(f"kaip-explainer: {settings.method} attributions for {args.model_name} on {args.host}:{args.http_port}, "
          f"predictor {url}", flush=True)
    explainer = Explainer(args.model_name, url, os.environ.get("KAIP_PREDICTOR_TOKEN"), settings)
    serve(build_app(explainer, CollectorRegistry()), args.host, args.http_port)


if __name__ == "__main__":
    main()
