"""OpenAI-compatible routes: ``/v1/models``, ``/v1/chat/completions`` (+ SSE), ``/v1/embeddings``."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from embeddings.grounding import last_user_message
from serve.bridge import (
    Completion,
    check_context,
    complete,
    ctx_of,
    keep_generation,
    resolve_model,
    retrieve,
    stream,
    tenant_of,
)
from serve.errors import APIError, from_exception, invalid
from serve.protocol import BestOf, ChatCompletionRequest, EmbeddingRequest

router = APIRouter(tags=["openai"])

EMBEDDING_MODEL = "all-minilm-l6-v2"  # the packaged sentence encoder's id


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    ctx = ctx_of(request)
    data = ctx.host.list(tenant_of(request)) if ctx.host is not None else []
    data.append(
        {
            "id": EMBEDDING_MODEL,
            "object": "model",
            "created": 0,
            "owned_by": "convtune",
            "root": EMBEDDING_MODEL,
            "parent": None,
        }
    )
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    for m in (await list_models(request))["data"]:
        if m["id"] == model_id:
            return m
    raise APIError(404, f"model {model_id!r} not found", param="model", code="model_not_found")


# ---- chat -------------------------------------------------------------------------------------


def _chat_messages(body: ChatCompletionRequest) -> list[dict[str, str]]:
    return [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages
    ]


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    ctx = ctx_of(request)
    if body.tools:
        raise invalid("tools", "tools are not supported by convtune", code="unsupported_parameter")
    if body.logprobs:
        raise invalid("logprobs", "logprobs are not supported by convtune", code="unsupported_parameter")
    if len(body.messages) > ctx.settings.max_messages:
        raise invalid("messages", f"at most {ctx.settings.max_messages} messages")
    if not any(m.role == "user" for m in body.messages):
        raise invalid("messages", "messages must include a user message")
    sampling = body.to_sampling(ctx.settings)
    ref = resolve_model(request, body.model)
    host = ctx.host
    messages = _chat_messages(body)
    query = last_user_message(messages)
    context = await retrieve(request, body.retrieval, query)
    try:
        # tokenizing a long prompt takes a while: off the event loop, which serves every request
        encoded = await asyncio.to_thread(host.renderer.encode_chat, messages, context,
                                          json_schema=sampling.schema)
        prompt = encoded.input_ids
    except ValueError as exc:
        raise invalid("messages", str(exc)) from None
    check_context(ctx, prompt, sampling, host.context_window)
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    # convtune extension: the chunks a grounded answer was given (None without retrieval)
    grounding = [{"text": c.text, "source": c.source} for c in context] if body.retrieval else None
    best_of = body.best_of or _model_best_of(ref, body)
    if best_of is not None:
        return await _best_of(body, best_of, request, messages, prompt, sampling, ref, cid, created)
    if body.stream:
        events = await stream(request, prompt, ref, sampling, body.n)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def keep(texts: list[str]) -> None:
            keep_generation(request, cid, body.model, messages, texts)

        return StreamingResponse(
            _sse_chat(events, cid, created, body.model, body.n, include_usage, keep, grounding),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    results = await complete(request, prompt, ref, sampling, body.n)
    await asyncio.to_thread(keep_generation, request, cid, body.model, messages, [r.text for r in results])
    out = _completion(cid, created, body.model, results, _usage(results))
    return out if grounding is None else {**out, "grounding": grounding}


def _model_best_of(ref: Any, body: ChatCompletionRequest) -> BestOf | None:
    """The model's registered best-of-n default (``convtune models add --best-of N --reward-model R``,
    read when the model id was resolved); it applies to plain requests (n = 1, not streamed), which
    return one answer either way."""
    if body.n != 1 or body.stream or ref.best_of is None:
        return None
    n, reward_model = ref.best_of
    return BestOf(n=n, reward_model=reward_model)


async def _best_of(
    body: ChatCompletionRequest,
    spec: BestOf,
    request: Request,
    messages: list[dict[str, str]],
    prompt: list[int],
    sampling: Any,
    ref: Any,
    cid: str,
    created: int,
) -> dict[str, Any]:
    """Sample ``best_of.n`` answers (temperature 0.8 unless one is given: greedy would repeat one
    answer), score each with the tenant's reward model on the engine thread, return the best."""
    import dataclasses

    from rlhf.reward import RewardScorer, is_reward_model, reward_input_ids

    ctx = ctx_of(request)
    if body.n != 1 or body.stream:
        raise invalid("best_of", "best_of returns one answer: use it with n = 1 and without stream")
    found = ctx.models.get(tenant_of(request), spec.reward_model)
    if found is None:
        raise APIError(
            404,
            f"reward model {spec.reward_model!r} not found",
            param="best_of.reward_model",
            code="model_not_found",
        )
    if not is_reward_model(found.path):
        raise invalid("best_of.reward_model", f"{spec.reward_model!r} is not a reward model")
    if sampling.temperature == 0:
        sampling = dataclasses.replace(sampling, temperature=0.8)
    host, engine = ctx.require_engine()
    results = await complete(request, prompt, ref, sampling, spec.n)  # the prompt as served (context, JSON)
    seqs = [reward_input_ids(host.renderer, host.tokenizer, messages, r.text) for r in results]

    def score() -> list[float]:
        key = str(found.path)
        if key not in ctx.scorers:
            ctx.scorers[key] = RewardScorer(found.path)
        return ctx.scorers[key].score(seqs)

    rewards = await asyncio.wrap_future(engine.run_job(score))
    best = max(range(len(results)), key=lambda i: rewards[i])
    await asyncio.to_thread(keep_generation, request, cid, body.model, messages, [results[best].text])
    return {
        **_completion(cid, created, body.model, [results[best]], _usage(results)),
        "best_of": {
            "n": spec.n,
            "reward_model": spec.reward_model,
            "rewards": [round(x, 4) for x in rewards],
            "chosen": best,
        },
    }


def _completion(
    cid: str, created: int, model: str, results: list[Completion], usage: dict[str, int]
) -> dict[str, Any]:
    """The chat.completion object, one choice per result."""
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": r.text},
                "finish_reason": r.finish_reason,
                "logprobs": None,
            }
            for i, r in enumerate(results)
        ],
        "usage": usage,
    }


def _usage(results: list[Completion]) -> dict[str, int]:
    prompt = results[0].prompt_tokens if results else 0
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _sse_chat(
    events: AsyncIterator[Any],
    cid: str,
    created: int,
    model: str,
    n: int,
    include_usage: bool,
    keep: Any = None,
    grounding: list[dict[str, str]] | None = None,
) -> AsyncIterator[str]:
    def chunk(i: int, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        return _sse(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": i, "delta": delta, "finish_reason": finish, "logprobs": None}],
                **extra,
            }
        )

    for i in range(n):  # the first chunk carries the retrieved chunks (convtune extension)
        extra = {"grounding": grounding} if grounding is not None and i == 0 else {}
        yield chunk(i, {"role": "assistant", "content": ""}, **extra)
    prompt_tokens = completion_tokens = 0
    texts = [""] * n
    try:
        async for i, ev in events:
            if ev.kind == "delta":
                texts[i] += ev.text
                yield chunk(i, {"content": ev.text})
            elif ev.kind == "done":
                prompt_tokens = ev.prompt_tokens
                completion_tokens += ev.completion_tokens
                yield chunk(i, {}, ev.finish_reason)
            elif ev.kind == "error":
                yield _sse(ev.error.body())
                return
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # mid-stream: the status line is gone, the error goes in the stream
        yield _sse(from_exception(exc).body())
        return
    if include_usage:
        yield _sse(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )
    if keep is not None:  # finished normally: kept for feedback before the client hears [DONE], so
        await asyncio.to_thread(keep, texts)  # feedback sent right after it finds the response
    yield "data: [DONE]\n\n"


# ---- embeddings ---------------------------------------------------------------------------------


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    ctx = ctx_of(request)
    s = ctx.settings
    if body.model != EMBEDDING_MODEL:
        raise APIError(
            404,
            f"embedding model {body.model!r} not found (available: {EMBEDDING_MODEL})",
            param="model",
            code="model_not_found",
        )
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise invalid("input", "input must not be empty")
    if not all(isinstance(t, str) for t in texts):
        raise invalid("input", "token-id input is not supported; send text", code="unsupported_parameter")
    if len(texts) > s.embed_max_inputs:
        raise invalid("input", f"at most {s.embed_max_inputs} inputs per request")
    if any(not t for t in texts):
        raise invalid("input", "inputs must not be empty strings")
    vectors, tokens = await asyncio.to_thread(_embed, ctx, texts)
    if body.dimensions is not None and body.dimensions != vectors.shape[1]:
        raise invalid(
            "dimensions", f"{EMBEDDING_MODEL} has {vectors.shape[1]} dimensions and cannot be shortened"
        )
    ctx.metrics.tokens.labels("embedding", tenant_of(request)).inc(tokens)
    data = []
    for i, v in enumerate(vectors):
        emb: Any = (
            base64.b64encode(v.astype("<f4").tobytes()).decode()
            if body.encoding_format == "base64"
            else [float(x) for x in v]
        )
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {
        "object": "list",
        "data": data,
        "model": EMBEDDING_MODEL,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _embed(ctx: Any, texts: list[str]) -> tuple[np.ndarray, int]:
    """Vectors and token count. Inputs past the encoder's window (256 tokens for MiniLM) are
    embedded from their beginning, as sentence-transformers does."""
    s = ctx.settings
    encoder = ctx.get_encoder()
    counts = encoder.count_tokens(texts)
    for i, c in enumerate(counts):
        if c > s.embed_max_input_tokens:
            raise invalid("input", f"input {i} has {c} tokens; at most {s.embed_max_input_tokens}")
    if sum(counts) > s.embed_max_total_tokens:
        raise invalid("input", f"{sum(counts)} tokens in the request; at most {s.embed_max_total_tokens}")
    return encoder.encode(texts).vectors, sum(counts)
