"""Nebula-compatible routes (Symbl.ai's retired API): generate, chat, embed, with ``stats``.

A ``prompt`` with a ``conversation`` is parsed as a ``Speaker: text``
transcript and rendered exactly like convtune's conversation tasks (the
format tuned adapters learned); a plain string prompt is a one-message chat.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from convtune.errors import DataValidationError
from serve.bridge import check_context, complete, ctx_of, resolve_model, retrieve, stream
from serve.errors import APIError, from_exception
from serve.protocol import NebulaChatRequest, NebulaEmbedRequest, NebulaGenerateRequest
from serve.routes.openai_api import EMBEDDING_MODEL, _embed

router = APIRouter(tags=["nebula"])


def _n_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0


async def _generate_prompt(request: Request, body: NebulaGenerateRequest) -> tuple[Any, list[int], dict]:
    ctx = ctx_of(request)
    ref = resolve_model(request, body.model)
    host = ctx.host
    tok = host.tokenizer
    if isinstance(body.prompt, str):
        context = await retrieve(request, body.retrieval, body.prompt)
        ids = (await asyncio.to_thread(host.renderer.encode_chat, [{"role": "user", "content": body.prompt}],
                                       context)).input_ids  # tokenizing: off the event loop
        stats = {"instruction_tokens": await asyncio.to_thread(_n_tokens, tok, body.prompt),
                 "conversation_tokens": 0}
        return ref, ids, stats
    instruction = body.prompt.instruction
    if body.prompt.conversation is None:
        context = await retrieve(request, body.retrieval, instruction)
        ids = (await asyncio.to_thread(host.renderer.encode_chat, [{"role": "user", "content": instruction}],
                                       context)).input_ids
        return ref, ids, {"instruction_tokens": _n_tokens(tok, instruction), "conversation_tokens": 0}
    from convtune.ingest.transcript import conversation_from_text

    text = body.prompt.conversation.text
    try:
        conv = conversation_from_text(text, source="prompt.conversation.text")
    except DataValidationError as exc:
        raise APIError(
            400, exc.report(), param="prompt.conversation.text", code="invalid_conversation"
        ) from None
    context = await retrieve(request, body.retrieval, instruction)
    renderer = host.renderer_for(ref)
    ids = (await asyncio.to_thread(renderer.prompt, conv, instruction, context=context)).input_ids
    counts = await asyncio.to_thread(lambda: (_n_tokens(tok, instruction), _n_tokens(tok, text)))
    return ref, ids, {"instruction_tokens": counts[0], "conversation_tokens": counts[1]}


def _stats(base: dict, prompt_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        **base,
        "output_tokens": output_tokens,
        "total_input_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + output_tokens,
    }


async def _prepared(request: Request, body: Any, build: Any) -> tuple[Any, Any, list[int], dict]:
    """Limits first, then the prompt (``build``), then the context-window check."""
    sampling = body.to_sampling(ctx_of(request).settings)
    ref, ids, stats = await build(request, body)
    check_context(ctx_of(request), ids, sampling, ctx_of(request).host.context_window)
    return sampling, ref, ids, stats


async def _streaming(request: Request, body: Any, build: Any) -> StreamingResponse:
    sampling, ref, ids, stats = await _prepared(request, body, build)
    events = await stream(request, ids, ref, sampling)
    return StreamingResponse(
        _sse(events, lambda n: {"model": ref.id, "stats": _stats(stats, len(ids), n)}),
        media_type="text/event-stream",
    )


@router.post("/v1/model/generate")
async def generate(body: NebulaGenerateRequest, request: Request) -> dict[str, Any]:
    sampling, ref, ids, stats = await _prepared(request, body, _generate_prompt)
    (r,) = await complete(request, ids, ref, sampling)
    return {
        "model": ref.id,
        "output": {"text": r.text},
        "stats": _stats(stats, len(ids), r.completion_tokens),
    }


@router.post("/v1/model/generate/streaming", response_model=None)
async def generate_streaming(body: NebulaGenerateRequest, request: Request) -> StreamingResponse:
    return await _streaming(request, body, _generate_prompt)


def _chat_messages(body: NebulaChatRequest) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": body.system_prompt}] if body.system_prompt else []
    msgs += [{"role": "user" if m.role == "human" else "assistant", "content": m.text} for m in body.messages]
    if msgs[-1]["role"] != "user":
        raise APIError(400, "the last message must be from the human", param="messages", code="invalid_value")
    return msgs


async def _chat_prompt(request: Request, body: NebulaChatRequest) -> tuple[Any, list[int], dict]:
    ctx = ctx_of(request)
    if len(body.messages) > ctx.settings.max_messages:
        raise APIError(
            400, f"at most {ctx.settings.max_messages} messages", param="messages", code="invalid_value"
        )
    ref = resolve_model(request, body.model)
    msgs = _chat_messages(body)
    context = await retrieve(request, body.retrieval, msgs[-1]["content"])
    try:
        ids = (await asyncio.to_thread(ctx.host.renderer.encode_chat, msgs, context)).input_ids
    except ValueError as exc:
        raise APIError(400, str(exc), param="messages", code="invalid_value") from None
    return ref, ids, {}


@router.post("/v1/model/chat")
async def chat(body: NebulaChatRequest, request: Request) -> dict[str, Any]:
    sampling, ref, ids, stats = await _prepared(request, body, _chat_prompt)
    (r,) = await complete(request, ids, ref, sampling)
    messages = [m.model_dump() for m in body.messages] + [{"role": "assistant", "text": r.text}]
    return {"model": ref.id, "messages": messages, "stats": _stats(stats, len(ids), r.completion_tokens)}


@router.post("/v1/model/chat/streaming", response_model=None)
async def chat_streaming(body: NebulaChatRequest, request: Request) -> StreamingResponse:
    return await _streaming(request, body, _chat_prompt)


async def _sse(events: AsyncIterator[Any], final: Any) -> AsyncIterator[str]:
    """``data: {"delta": "..."}`` per piece of text, then one event with the stats, then [DONE]."""
    try:
        async for _, ev in events:
            if ev.kind == "delta":
                yield f"data: {json.dumps({'delta': ev.text}, ensure_ascii=False)}\n\n"
            elif ev.kind == "done":
                last = {"delta": "", "finish_reason": ev.finish_reason, **final(ev.completion_tokens)}
                yield f"data: {json.dumps(last)}\n\n"
            else:
                yield f"data: {json.dumps(ev.error.body())}\n\n"
                return
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        yield f"data: {json.dumps(from_exception(exc).body())}\n\n"
        return
    yield "data: [DONE]\n\n"


@router.post("/v1/model/embed")
async def embed(body: NebulaEmbedRequest, request: Request) -> dict[str, Any]:
    if body.model not in (None, EMBEDDING_MODEL):
        raise APIError(
            404,
            f"embedding model {body.model!r} not found (available: {EMBEDDING_MODEL})",
            param="model",
            code="model_not_found",
        )
    if not body.text:
        raise APIError(400, "text must not be empty", param="text", code="invalid_value")
    vectors, _ = await asyncio.to_thread(_embed, ctx_of(request), [body.text])
    return {"model": EMBEDDING_MODEL, "embedding": [float(x) for x in vectors[0]]}
