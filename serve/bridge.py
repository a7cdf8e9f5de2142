"""Between async routes and the engine thread: limits, submission, results, streams, retrieval.

Routes stay thin: they turn a request into (prompt ids, model, sampling) with
the renderer, then call :func:`complete` or :func:`stream` here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from convtune.renderer import ContextChunk
from serve.context import ServerContext
from serve.engine import Event, GenRequest, Sampling, TaskRequest
from serve.errors import APIError, invalid, not_found
from serve.models import ModelRef
from serve.protocol import RetrievalSpec


def ctx_of(request: Request) -> ServerContext:
    return request.app.state.ctx


def tenant_of(request: Request) -> str:
    tenant = getattr(request.state, "tenant", None)
    if tenant is None:  # the gate guarantees it on every non-public route
        raise APIError(401, "missing API key", code="missing_api_key")
    return tenant


# ---- limits, checked before tokenising ---------------------------------------------------------


def check_context(ctx: ServerContext, prompt_ids: Sequence[int], sampling: Sampling, window: int) -> None:
    if len(prompt_ids) + sampling.max_tokens > window:
        raise APIError(
            400,
            f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({sampling.max_tokens}) "
            f"exceeds the model's context window of {window} tokens",
            param="messages",
            code="context_length_exceeded",
        )


# ---- generation ------------------------------------------------------------------------------


def _soon(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
    """``fn(*args)`` on ``loop`` from the engine thread; nothing when the loop is gone (a batch
    runner's loop after its batch stopped: nobody waits for the event any more)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass


def _background(request: Request) -> tuple[bool, float]:
    """(background, seconds to its deadline): a batch line (``serve.batches``) runs at background
    priority, under the batch's per-line deadline; everything else is interactive."""
    ctx = ctx_of(request)
    if getattr(request.state, "background", False):
        return True, ctx.settings.batch_line_timeout_s
    return False, ctx.settings.request_timeout_s


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def _requests(
    ctx: ServerContext,
    prompt_ids: list[int],
    ref: ModelRef,
    sampling: Sampling,
    n: int,
    tenant: str,
    emit_for: Any,
    background: tuple[bool, float] = (False, 0.0),
) -> list[GenRequest]:
    low, timeout = background if background[0] else (False, ctx.settings.request_timeout_s)
    deadline = time.monotonic() + timeout
    out = []
    for i in range(n):
        s = (
            sampling
            if sampling.seed is None or i == 0
            else dataclasses.replace(sampling, seed=sampling.seed + i)
        )
        out.append(GenRequest(prompt_ids, ref, s, emit_for(i), deadline, tenant, background=low))
    return out


async def complete(
    request: Request, prompt_ids: list[int], ref: ModelRef, sampling: Sampling, n: int = 1
) -> list[Completion]:
    """``n`` generations of one prompt; cancels them if the client goes away."""
    ctx = ctx_of(request)
    _, engine = ctx.require_engine()
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(n)]
    texts: list[list[str]] = [[] for _ in range(n)]

    def deliver(i: int, ev: Event) -> None:
        fut = futures[i]
        if fut.done():
            return
        if ev.kind == "delta":
            texts[i].append(ev.text)
        elif ev.kind == "done":
            fut.set_result(
                Completion(
                    "".join(texts[i]), ev.finish_reason or "stop", ev.prompt_tokens, ev.completion_tokens
                )
            )
        elif ev.kind == "error":
            fut.set_exception(ev.error)

    def emit_for(i: int) -> Any:
        return lambda ev: _soon(loop, deliver, i, ev)

    reqs = _requests(ctx, prompt_ids, ref, sampling, n, tenant_of(request), emit_for, _background(request))
    engine.submit(reqs)
    watcher = asyncio.create_task(_watch_disconnect(request, reqs))
    try:
        results = await asyncio.gather(*futures)
    finally:
        watcher.cancel()
        for r in reqs:
            r.cancel()  # no-op when finished; stops work when this coroutine was cancelled
    _count_tokens(ctx, tenant_of(request), results)
    return list(results)


async def stream(
    request: Request, prompt_ids: list[int], ref: ModelRef, sampling: Sampling, n: int = 1
) -> AsyncIterator[tuple[int, Event]]:
    """Submit now (so over-capacity is a plain 429) and return the events as they come:
    ``(choice index, event)``; the generator's close (client gone) cancels the work."""
    ctx = ctx_of(request)
    _, engine = ctx.require_engine()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

    def emit_for(i: int) -> Any:
        return lambda ev: _soon(loop, queue.put_nowait, (i, ev))

    tenant = tenant_of(request)
    reqs = _requests(ctx, prompt_ids, ref, sampling, n, tenant, emit_for)
    engine.submit(reqs)

    async def events() -> AsyncIterator[tuple[int, Event]]:
        remaining = n
        try:
            while remaining:
                i, ev = await queue.get()
                if ev.kind in ("done", "error"):
                    remaining -= 1
                    if ev.kind == "done":
                        _count_tokens(ctx, tenant, [ev])
                yield i, ev
        finally:
            for r in reqs:
                r.cancel()

    return events()


async def answer_dialog(request: Request, ref: ModelRef, prepare: Any) -> Any:
    """Several tasks about one conversation as one engine request (:class:`TaskRequest`):
    ``prepare(generator)`` builds its :class:`~convtune.evaluation.generate.TaskDialog` on the
    engine thread; returns the dialog with every task answered. Cancelled if the client goes."""
    ctx = ctx_of(request)
    _, engine = ctx.require_engine()
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def deliver(ev: Event) -> None:
        if fut.done():
            return
        if ev.kind == "error":
            fut.set_exception(ev.error)
        elif ev.kind == "done":
            fut.set_result(ev.result)

    background, timeout = _background(request)
    req = TaskRequest(ref, prepare, lambda ev: _soon(loop, deliver, ev),
                      time.monotonic() + timeout, tenant_of(request), background=background)
    engine.submit([req])
    watcher = asyncio.create_task(_watch_disconnect(request, [req]))
    try:
        return await fut
    finally:
        watcher.cancel()
        req.cancel()  # no-op when finished


async def _watch_disconnect(request: Request, reqs: list[GenRequest] | list[TaskRequest]) -> None:
    while True:
        if await request.is_disconnected():
            for r in reqs:
                r.cancel()
            return
        await asyncio.sleep(0.25)


def _count_tokens(ctx: ServerContext, tenant: str, results: Sequence[Any]) -> None:
    m = ctx.metrics.tokens
    m.labels("prompt", tenant).inc(sum(r.prompt_tokens for r in results))
    m.labels("completion", tenant).inc(sum(r.completion_tokens for r in results))


# ---- models and retrieval ----------------------------------------------------------------------


def resolve_model(request: Request, model_id: str | None) -> ModelRef:
    host, _ = ctx_of(request).require_engine()
    return host.resolve(tenant_of(request), model_id or host.base_name)


def open_tenant_collection(request: Request, name: str, *, create: bool = False) -> Any:
    from convtune.errors import ConfigError
    from embeddings.store import collection_dir, open_collection

    ctx = ctx_of(request)
    tenant = tenant_of(request)
    root = ctx.settings.home / "collections"
    try:
        folder = collection_dir(name, tenant, root)
    except ConfigError as exc:
        raise invalid("collection", str(exc)) from None
    if not create and not (folder / "docs.sqlite").is_file():
        raise not_found("collection", name, param="collection")
    return open_collection(name, tenant, encoder=ctx.get_encoder(), root=root)


async def retrieve(request: Request, spec: RetrievalSpec | None, query: str) -> list[ContextChunk]:
    """The ``spec.k`` chunks of the caller's collection most similar to ``query`` (most relevant first)."""
    if spec is None:
        return []
    ctx = ctx_of(request)
    if spec.k > ctx.settings.retrieval_max_k:
        raise invalid("retrieval.k", f"retrieval.k must be <= {ctx.settings.retrieval_max_k}")

    def run() -> list[ContextChunk]:
        from embeddings.grounding import retrieve_context

        coll = open_tenant_collection(request, spec.collection)
        try:
            return retrieve_context(coll, query, k=spec.k)
        finally:
            coll.close()

    return await asyncio.to_thread(run)


def keep_generation(request: Request, response_id: str, model: str, messages: list[dict[str, str]],
                    outputs: list[str] | dict[str, str], task: str | None = None) -> None:
    """Keep a returned generation (PII-redacted) so ``POST /v1/feedback`` can refer to it."""
    ctx = ctx_of(request)
    days = ctx.settings.feedback_retention_days
    if days <= 0:
        return
    from rlhf.feedback import record_generation

    record_generation(ctx.jobs_db, tenant_of(request), response_id, model, messages, outputs, task=task,
                      retention_days=days)
