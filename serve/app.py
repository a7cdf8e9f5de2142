"""The app factory: ``create_app(settings)``; models load in the lifespan, never at import.

    uvicorn --factory serve.app:app_from_env     (what `convtune serve` runs)

Everything a route needs hangs off one :class:`serve.context.ServerContext` on
``app.state.ctx`` (its own module, so routes and helpers import it without
importing the app). Tests build the context themselves (tiny model, temporary
home) and pass it in. Here: the lifespan, the middlewares (body limit and
hostile text, request id + API key + metrics) and the routers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import JSONResponse, Response

from serve.context import ServerContext, build_context
from serve.errors import APIError, error_response, from_exception, install_error_handlers
from serve.routes import (
    analyze,
    batches,
    feedback,
    files,
    health,
    jobs,
    nebula,
    openai_api,
    playground,
    retrieval,
)
from serve.settings import ServerSettings, load_settings

log = logging.getLogger("convtune.serve")

PUBLIC = {"/live", "/ready"}  # probes and the playground's static files; everything else needs an API key


def _on_own_thread(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` on a fresh thread that exits afterwards: the model loads on it, and a live
    thread holding an OpenMP team would slow the engine's kernels (``engine_thread_setup``)."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="convtune-load") as pool:
        return pool.submit(fn, *args).result()


def create_app(settings: ServerSettings | None = None, *, context: ServerContext | None = None) -> FastAPI:
    """The FastAPI app. ``context`` (tests) replaces what the lifespan would build from ``settings``."""
    if settings is None and context is None:
        raise ValueError("pass settings or a context")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = context or await asyncio.to_thread(_on_own_thread, build_context, settings)
        app.state.ctx = ctx
        from convtune.inference.quantize import single_openmp_thread, uses_packed_weights

        if ctx.host is not None and uses_packed_weights(ctx.host.model):
            # helper threads start no OpenMP team: the engine's packed kernels stay fast
            asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(
                thread_name_prefix="convtune-io", initializer=single_openmp_thread))
        if ctx.engine is not None:
            ctx.engine.start()
        runner = None
        if ctx.engine is not None and ctx.settings.batch_runner:
            from serve.batches import BatchRunner

            runner = ctx.batch_runner = BatchRunner(ctx)
            runner.start()
        ctx.ready = True
        log.info("convtune server ready (model %s)", ctx.settings.base_model if ctx.host else "none")
        try:
            yield
        finally:
            ctx.ready = False  # /ready answers 503 while draining
            if runner is not None:
                await asyncio.to_thread(runner.stop)  # lines in flight are left to the next runner
            if ctx.engine is not None:
                await asyncio.to_thread(ctx.engine.stop, ctx.settings.drain_timeout_s)

    app = FastAPI(
        title="convtune",
        version="0.1.0",
        lifespan=lifespan,
        description="OpenAI- and Nebula-compatible API for tenants' tuned conversation models.",
    )
    if context is not None:
        app.state.ctx = context  # routes can be called before the lifespan runs (schema tools)
    install_error_handlers(app)
    app.add_middleware(_Gate)
    app.add_middleware(_BodyLimit)  # outermost: counts bytes however the body is sent

    routers = (health, openai_api, nebula, analyze, retrieval, files, jobs, batches, feedback, playground)
    for module in routers:
        app.include_router(module.router)
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory``: settings from ``CONVTUNE_SERVE_*`` / ``CONVTUNE_HOME``."""
    return create_app(load_settings())


class _BodyLimit:
    """Refuse bodies over ``max_body_bytes`` also when sent chunked (no Content-Length).

    The body is read here (it is at most the limit) and replayed to the app; past the
    limit the request is answered 413 before any route sees it.
    """

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        ctx = getattr(scope["app"].state, "ctx", None) if scope["type"] == "http" and "app" in scope else None
        if ctx is None:
            return await self.app(scope, receive, send)
        if scope["path"] == "/v1/files" and scope["method"] == "POST":
            return await self._upload(ctx, scope, receive, send)
        limit = ctx.settings.max_body_bytes
        too_large = APIError(413, f"request body over {limit} bytes", code="payload_too_large")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):  # declared: no need to read
            return await JSONResponse(too_large.body(), status_code=413)(scope, receive, send)
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > limit:
                return await JSONResponse(too_large.body(), status_code=413)(scope, receive, send)
            if not message.get("more_body", False):
                break

        refused = _hostile_text(scope, b"".join(m.get("body", b"") for m in messages))
        if refused is not None:
            return await JSONResponse(refused.body(), status_code=400)(scope, receive, send)

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _upload(self, ctx: ServerContext, scope: dict, receive: Any, send: Any) -> None:
        """File uploads stream through (not buffered here) under their own, larger limit."""
        from convtune.jobs.files import FileTooLarge

        limit = ctx.settings.files_max_bytes
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit + 64 * 1024):
            err = from_exception(FileTooLarge(limit))
            return await JSONResponse(err.body(), status_code=413)(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit + 64 * 1024:  # multipart framing on top of the file
                raise FileTooLarge(limit)
            return message

        await self.app(scope, counted, send)


def _hostile_text(scope: dict, body: bytes) -> APIError | None:
    """A 400 naming the field when the query string or a JSON body holds text a tokenizer or
    database cannot take (:mod:`convtune.text`); None otherwise (bad JSON is the route's to report)."""
    import json
    from urllib.parse import parse_qsl

    from convtune.text import first_text_problem, text_problem

    found = None
    for key, value in parse_qsl(scope.get("query_string", b"").decode("utf-8", "replace")):
        if problem := text_problem(key) or text_problem(value):
            found = (key, problem)
            break
    content_type = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip()
    if found is None and body and content_type in (b"application/json", b""):
        try:
            found = first_text_problem(json.loads(body))
        except (ValueError, RecursionError):
            return None
    if found is None:
        return None
    param, problem = found
    return APIError(400, f"{param}: {problem}; send plain text without it", param=param, code="invalid_text")


class _Gate(BaseHTTPMiddleware):
    """Request id, API-key check (the tenant lands on ``request.state``), metrics."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        rid = request.headers.get("x-request-id") or f"req-{uuid.uuid4().hex[:16]}"
        request.state.request_id = rid
        request.state.tenant = None
        ctx: ServerContext | None = getattr(request.app.state, "ctx", None)
        started = time.perf_counter()
        route = request.url.path
        try:
            if ctx is None:
                raise APIError(503, "the server is starting", code="starting", headers={"Retry-After": "2"})
            if route not in PUBLIC and not playground.is_playground(route):
                request.state.tenant = _authenticate(request, ctx)
            response = await call_next(request)
        except APIError as err:
            response = error_response(err, request)
        except Exception as exc:  # answered here, not re-raised: the client's connection stays usable
            log.exception("request %s failed", rid, exc_info=exc)
            response = error_response(from_exception(exc), request)
        response.headers["x-request-id"] = rid
        if ctx is not None:
            tenant = request.state.tenant or "-"
            template = _route_template(request)
            ctx.metrics.requests.labels(template, str(response.status_code), tenant).inc()
            ctx.metrics.latency.labels(template).observe(time.perf_counter() - started)
            if response.status_code in (429, 503):
                ctx.metrics.rejections.labels(str(response.status_code), tenant).inc()
        return response


def _authenticate(request: Request, ctx: ServerContext) -> str:
    auth = request.headers.get("authorization", "")
    key = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("apikey")
    if not key:
        raise APIError(
            401,
            "missing API key: send 'Authorization: Bearer <key>' or 'ApiKey: <key>'",
            code="missing_api_key",
        )
    tenant = ctx.keys.tenant_of(key.strip())
    if tenant is None:
        raise APIError(401, "invalid API key", code="invalid_api_key")
    return tenant


def _route_template(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")
