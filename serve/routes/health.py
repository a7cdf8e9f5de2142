"""``/live`` (process up, no key), ``/ready`` (model loaded, not draining), ``/metrics`` (Prometheus)."""

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
    body = {"status": "ready", "model": ctx.host.base_name if ctx.host else None}
    if ctx.engine is not None:
        body.update(inflight=ctx.engine.inflight, queued=ctx.engine.queued)
    return JSONResponse(body)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    ctx = ctx_of(request)
    if ctx.engine is not None:
        ctx.metrics.queue.set(ctx.engine.queued)
        ctx.metrics.inflight.set(ctx.engine.inflight)
    return Response(ctx.metrics.render(), media_type="text/plain; version=0.0.4")
