"""``POST /v1/conversations/analyze``: every requested task about one call, in one model pass.

The conversation is PII-redacted first; the deterministic talk-time analytics
come from its timestamps (no model). The tasks are asked one after another in
one chat (the renderer's chained layout, transcript encoded once, KV cache
reused across answers) as one engine request (a ``TaskDialog`` decoded inside
the running batch, so chat is answered while an analysis runs; it ends at the
request's deadline). Classification tasks are constrained to their
labels (confidence = the label's softmax share over the label set) and
structured tasks are decoded guided by their JSON schema, so every output
parses into its typed shape. A tuned run's label tasks are answered by the
predictor its validation chose (:mod:`convtune.predictors`: an encoder head,
k-NN, the LM or their ensemble); each task says which (``predictor``) and how
sure it is (``confidence``). Each output carries the turn ids it rests on
(:mod:`convtune.attribution`).

``POST /v1/conversations/parse`` reads a pasted transcript or an uploaded file's text with the
same importers as ``convtune data import`` (any supported form, detected unless ``format`` is
given) and returns its conversations as analyze takes them, or every problem with its line.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request

from convtune.attribution import evidence, split_sentences
from convtune.errors import ConfigError
from convtune.evaluation.generate import TaskDialog
from convtune.predictors.answer import apply_predictors, lm_tasks_of
from convtune.renderer import TaskTurn
from serve.bridge import answer_dialog, ctx_of, keep_generation, resolve_model, tenant_of
from serve.errors import invalid
from serve.protocol import AnalyzeRequest, ParseRequest

router = APIRouter(tags=["analytics"])


def _conversation(body: AnalyzeRequest) -> Any:
    from pydantic import ValidationError

    from convtune.conversation import Conversation
    from convtune.ingest._common import guess_role

    turns = []
    for i, m in enumerate(body.conversation.messages):
        turn: dict[str, Any] = {"id": m.id or f"m{i + 1}", "speaker": m.speaker, "text": m.text}
        if m.start is not None or m.end is not None:
            turn.update(start=m.start, end=m.end)
        turn["role"] = m.role or guess_role(m.speaker).value  # "Customer", "Agent 2", "IVR" ...
        turns.append(turn)
    meta = {"channel": body.conversation.channel} if body.conversation.channel else {}
    try:
        return Conversation.model_validate(
            {"id": f"conv-{uuid.uuid4().hex[:12]}", "turns": turns, "metadata": meta}
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]).replace("turns", "conversation.messages")
        raise invalid(loc, f"{loc}: {err['msg']}") from None


def _with_evidence(task: Any, value: Any, conv: Any, customer: list[str]) -> Any:
    """The parsed value shaped for clients, each item with ``message_ids``."""
    if value is None:
        return None
    name = task.name
    if name == "summary" and isinstance(value, str):
        return [{"text": s, "message_ids": evidence(s, conv)} for s in split_sentences(value)]
    if isinstance(value, list):
        out = []
        for item in value:
            data = item.model_dump() if hasattr(item, "model_dump") else item
            text = data.get("text") if isinstance(data, dict) else str(data)
            entry = dict(data) if isinstance(data, dict) else {"text": text}
            entry["message_ids"] = evidence(str(text or ""), conv)
            out.append(entry)
        return out
    data = value.model_dump() if hasattr(value, "model_dump") else value
    if isinstance(data, dict):
        return {**data, "message_ids": customer}
    return {
        "label": data,
        "message_ids": evidence(str(data).replace("_", " "), conv) or customer[:1],
    }


@router.post("/v1/conversations/analyze")
async def analyze(body: AnalyzeRequest, request: Request) -> dict[str, Any]:
    from convtune.analytics import analyze as talk_time
    from convtune.data import redact_all
    from convtune.evaluation.evaluate import resolve_tasks

    ctx = ctx_of(request)
    host, engine = ctx.require_engine()
    ref = resolve_model(request, body.model)
    conv = _conversation(body)
    redactions: dict[str, int] = {}
    if body.redact:
        (conv,), counts = redact_all([conv])
        redactions = dict(counts)
    try:
        tasks = resolve_tasks(body.tasks, run_dir=ref.path)
    except (ConfigError, KeyError) as exc:
        raise invalid("tasks", f"tasks: {exc}") from None
    customer = [t.id for t in conv.turns if t.role.value == "customer"] or [conv.turns[0].id]

    state: dict[str, Any] = {}  # what prepare read on the engine thread, for after the answers

    def prepare(generator: Any) -> TaskDialog:  # on the engine thread: adapter state is read here
        context, predictors = (), None
        if ref.adapter_key is not None:
            from embeddings.fewshot import run_context

            adapter = host.adapter(ref.adapter_key)
            predictors = adapter.predictors
            found = run_context(ref.path, adapter.few_shot, [conv], tasks, encoder=ctx.get_encoder())
            context = (found or {}).get(conv.id, ())  # None: the run retrieves no examples
        state["predictors"] = predictors
        # the tasks a head or k-NN answers alone are not asked of the LM; labels are scored and
        # structured answers schema-guided, so every output is valid
        return TaskDialog(generator, host.renderer_for(ref), conv, lm_tasks_of(tasks, predictors),
                          constrained=True, context=context)

    started = time.perf_counter()
    dialog = await answer_dialog(request, ref, prepare)  # decoded in the engine's running batch
    renderer = dialog.renderer
    run = await asyncio.to_thread(apply_predictors, dialog.run(), [conv], tasks, state["predictors"])
    results: dict[str, Any] = {}
    prompt_tokens = completion_tokens = 0
    for task, answer in zip(tasks, run.answers, strict=True):
        parsed = task.parse(answer.text)
        entry: dict[str, Any] = {
            "output": _with_evidence(task, parsed.value if parsed.ok else None, conv, customer),
            "valid": parsed.ok,
            "error": None if parsed.ok else parsed.error,
        }
        entry["predictor"] = answer.predictor  # lm, head, knn, ensemble (chosen on the run's validation)
        if answer.confidence is not None:
            entry["confidence"] = answer.confidence  # the chosen label's probability
        if answer.field_confidence and len(answer.field_confidence) > 1:
            entry["field_confidence"] = answer.field_confidence
        results[task.name] = entry
        prompt_tokens += answer.computed_prompt_tokens
        completion_tokens += len(answer.token_ids)
    tenant = tenant_of(request)
    analysis_id = f"analysis-{uuid.uuid4().hex[:16]}"
    # Each task's prompt as the renderer builds it (transcript, then the task's question), so a
    # preference pair from feedback trains on the tokens training and serving use.
    prompts = {t.name: renderer.messages(conv, [TaskTurn(t.instruction)])[0] for t in tasks}
    outputs = {a.task: a.text for a in run.answers}
    await asyncio.to_thread(keep_generation, request, analysis_id, ref.id, prompts, outputs, "analyze")
    ctx.metrics.tokens.labels("prompt", tenant).inc(prompt_tokens)
    ctx.metrics.tokens.labels("completion", tenant).inc(completion_tokens)
    return {
        "id": analysis_id,
        "object": "conversation.analysis",
        "model": ref.id,
        "created": int(time.time()),
        "conversation_id": conv.id,
        "messages": [{"id": t.id, "speaker": t.speaker, "text": t.text} for t in conv.turns],
        "tasks": results,
        "analytics": talk_time(conv).model_dump(mode="json"),
        "redactions": redactions,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "seconds": round(time.perf_counter() - started, 3),
        },
    }


TURN_FIELDS = {"id", "speaker", "text", "start", "end", "role"}  # what analyze's messages take


@router.get("/v1/conversations/tasks")
async def task_list(request: Request) -> dict[str, Any]:
    """The registered conversation tasks analyze can be asked (``core``: asked when none are named)."""
    ctx_of(request)
    from tasks.registry import CORE_TASKS, default_registry

    return {"object": "list", "data": [
        {"name": t.name, "core": t.name in CORE_TASKS, "instruction": t.instruction}
        for t in default_registry()
    ]}


@router.post("/v1/conversations/parse")
async def parse(body: ParseRequest, request: Request) -> dict[str, Any]:
    ctx_of(request)  # authenticated like every route; nothing else of the server is needed

    def read() -> tuple[str, list[Any]]:
        import tempfile
        from pathlib import Path

        from convtune.ingest import detect_format, read_conversations

        with tempfile.TemporaryDirectory(prefix="convtune-parse-") as tmp:
            path = Path(tmp) / body.filename  # problems are reported against the user's file name
            path.write_text(body.text, encoding="utf-8")
            fmt = body.format or detect_format(path)
            return fmt, read_conversations(path, fmt)

    from dataclasses import replace

    from convtune.errors import DataValidationError

    try:
        fmt, conversations = await asyncio.to_thread(read)
    except DataValidationError as exc:  # located in the user's file, not the temporary copy
        raise DataValidationError([replace(p, file=body.filename) for p in exc.problems],
                                  truncated=exc.truncated) from None
    return {
        "object": "list",
        "format": fmt,
        "data": [
            {
                "id": c.id,
                "messages": [t.model_dump(mode="json", include=TURN_FIELDS, exclude_none=True)
                             for t in c.turns],
            }
            for c in conversations
        ],
    }
