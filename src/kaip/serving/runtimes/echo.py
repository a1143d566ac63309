"""`echo`: a trivial runtime answering every POST with its body; the gateway benchmark's zero-cost model."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kaip.serving.runtimes.server import parse_args, serve


async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type=request.headers.get("content-type", "application/json"))


async def ready(_: Request) -> Response:
    return JSONResponse({"ready": True})


def main() -> None:
    args = parse_args("Kaip echo runtime")
    app = Starlette(routes=[Route("/v2/health/ready", ready), Route("/{path:path}", echo, methods=["POST"])])
    serve(app, args.host, args.http_port)


if __name__ == "__main__":
    main()
