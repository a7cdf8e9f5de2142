"""``/live`` (process up) and ``/ready`` (model loaded, not draining): no key, they say nothing else,
so orchestrators' probes (which send no header) can use them; ``/metrics`` (Prometheus, keyed)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from serve.bridge import ctx_of

router = APIRouter(tags=["health"])


@router.get("/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    ctx = ctx_of(request)
    if not ctx.ready:
        return JSONResponse({"status": "not ready"}, status_code=503, headers={"Retry-After": "2"})
    return JSONResponse({"status": "ready"})  # load figures are on /metrics, behind a key


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    ctx = ctx_of(request)
    if ctx.engine is not None:
        ctx.metrics.queue.set(ctx.engine.queued)
        ctx.metrics.inflight.set(ctx.engine.inflight)
    return Response(ctx.metrics.render(), media_type="text/plain; version=0.0.4")
