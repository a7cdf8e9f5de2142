"""Feedback on served generations -> preference data.

Every generation the server returns (chat, generate, analyze) is kept under its
response id, PII-redacted, for ``--feedback-retention-days``. ``POST
/v1/feedback`` records, per tenant:

* ``thumbs``: ``value`` true (up) or false (down);
* ``rating``: ``value`` 1-5;
* ``correction``: ``value`` the corrected output;
* ``preference``: this response (``choice``) was preferred over ``other_response_id``
  (``other_choice``), e.g. two drafts shown side by side.

``export`` turns it into training data:

* preference pairs, in the OpenAI/TRL preference format (``input.messages``,
  ``preferred_output``, ``non_preferred_output``): corrected > original, explicit
  preferences, and on the same prompt up > down and higher > lower rating;
* unpaired labels for KTO (``prompt``, ``completion``, ``label``): thumbs, and
  ratings >= 4 (true) or <= 2 (false).
"""

from __future__ import annotations

import hashlib
import json
import time
from itertools import product
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from convtune.errors import ConvtuneError
from convtune.jobs.db import JobsDB, new_id

KINDS = ("thumbs", "rating", "correction", "preference")


class FeedbackError(ConvtuneError):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    response_id: str = Field(min_length=1, max_length=64)
    type: Literal["thumbs", "rating", "correction", "preference"]
    value: bool | int | str | None = None
    choice: int | str = Field(0, description="choice index (chat, n > 1) or task name (analyze)")
    other_response_id: str | None = Field(None, max_length=64)
    other_choice: int | str = 0


def redact_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    from convtune.pii import redact_text

    return [{"role": m["role"], "content": redact_text(m["content"])[0]} for m in messages]


def record_generation(
    db: JobsDB,
    tenant: str,
    response_id: str,
    model: str,
    messages: list[dict[str, str]] | dict[str, list[dict[str, str]]],
    outputs: list[str] | dict[str, str],
    *,
    task: str | None = None,
    retention_days: float = 30,
) -> None:
    """Keep a returned generation (redacted) so feedback can refer to it. Analyze keeps one prompt
    and one output per task (``messages`` and ``outputs`` keyed by task name)."""
    from convtune.pii import redact_text

    prompt: Any = (
        {k: redact_messages(m) for k, m in messages.items()}
        if isinstance(messages, dict)
        else redact_messages(messages)
    )
    if isinstance(outputs, dict):
        kept: Any = {k: redact_text(v)[0] for k, v in outputs.items()}
    else:
        kept = [redact_text(o)[0] for o in outputs]
    now = int(time.time())
    digest = hashlib.sha256(json.dumps([model, task, prompt], sort_keys=True).encode()).hexdigest()
    db.add_generation(
        {
            "id": response_id,
            "tenant": tenant,
            "model": model,
            "task": task,
            "prompt": prompt,
            "outputs": kept,
            "prompt_hash": digest,
            "created_at": now,
            "expires_at": now + int(retention_days * 86400),
        }
    )


def _output(gen: dict[str, Any], choice: int | str, param: str) -> str:
    outs = gen["outputs"]
    try:
        return outs[choice] if isinstance(outs, dict) else outs[int(choice)]
    except (KeyError, IndexError, ValueError, TypeError):
        raise FeedbackError(400, f"response {gen['id']!r} has no choice {choice!r}", param) from None


def _check_value(req: FeedbackRequest) -> None:
    v = req.value
    if req.type == "thumbs" and not isinstance(v, bool):
        raise FeedbackError(400, "thumbs feedback needs value true (up) or false (down)", "value")
    if req.type == "rating" and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 5):
        raise FeedbackError(400, "rating feedback needs an integer value from 1 to 5", "value")
    if req.type == "correction" and (not isinstance(v, str) or not v.strip() or len(v) > 20_000):
        raise FeedbackError(
            400, "correction feedback needs the corrected output as value (1-20000 chars)", "value"
        )
    if req.type == "preference" and req.other_response_id is None:
        raise FeedbackError(
            400,
            "preference feedback needs other_response_id (the response it was preferred over)",
            "other_response_id",
        )


def add_feedback(db: JobsDB, tenant: str, req: FeedbackRequest) -> dict[str, Any]:
    _check_value(req)
    gen = db.get_generation(tenant, req.response_id)
    if gen is None:
        raise FeedbackError(
            404,
            f"response {req.response_id!r} not found (unknown, expired or another tenant's)",
            "response_id",
        )
    _output(gen, req.choice, "choice")
    if req.other_response_id is not None:
        other = db.get_generation(tenant, req.other_response_id)
        if other is None:
            raise FeedbackError(404, f"response {req.other_response_id!r} not found", "other_response_id")
        _output(other, req.other_choice, "other_choice")
    row = {
        "id": new_id("fb"),
        "tenant": tenant,
        "response_id": req.response_id,
        "choice": str(req.choice),
        "kind": req.type,
        "value": req.value,
        "other_response_id": req.other_response_id,
        "other_choice": str(req.other_choice) if req.other_response_id else None,
        "created_at": int(time.time()),
    }
    if req.type == "correction":
        from convtune.pii import redact_text

        row["value"] = redact_text(str(req.value))[0]
    db.add_feedback(row)
    return {
        "id": row["id"],
        "object": "feedback",
        "response_id": req.response_id,
        "type": req.type,
        "created_at": row["created_at"],
    }


def feedback_object(row: dict[str, Any]) -> dict[str, Any]:
    """One feedback row as the API lists it (with the answer it was given on)."""
    try:
        gen = {"id": row["response_id"], "outputs": row["outputs"]}
        answer = _output(gen, _choice(row["choice"]), "choice")
    except FeedbackError:
        answer = None
    return {
        "id": row["id"], "object": "feedback", "response_id": row["response_id"], "type": row["kind"],
        "value": row["value"], "choice": row["choice"], "model": row["model"], "task": row["task"],
        "answer": answer, "created_at": row["created_at"],
    }


def list_feedback(db: JobsDB, tenant: str, *, limit: int = 100, after: str | None = None) -> dict[str, Any]:
    """A tenant's feedback, newest first, in OpenAI's list shape (``after``: an id of the previous page)."""
    rows = [feedback_object(r) for r in reversed(db.tenant_feedback(tenant))]
    if after is not None:
        at = next((i for i, r in enumerate(rows) if r["id"] == after), None)
        if at is None:
            raise FeedbackError(404, f"feedback {after!r} not found", "after")
        rows = rows[at + 1:]
    page = rows[:limit]
    return {"object": "list", "data": page, "has_more": len(rows) > limit,
            "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None}


def export(db: JobsDB, tenant: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(preference pairs, KTO examples) from a tenant's feedback; duplicates removed."""
    rows = db.tenant_feedback(tenant)
    pairs: dict[str, dict[str, Any]] = {}
    kto: dict[str, dict[str, Any]] = {}

    def pair(prompt: list[dict[str, str]], good: str, bad: str) -> None:
        if good.strip() and good != bad:
            rec = {
                "input": {"messages": prompt},
                "preferred_output": [{"role": "assistant", "content": good}],
                "non_preferred_output": [{"role": "assistant", "content": bad}],
            }
            pairs.setdefault(json.dumps(rec, sort_keys=True), rec)

    def label(prompt: list[dict[str, str]], completion: str, ok: bool) -> None:
        rec = {"prompt": prompt, "completion": [{"role": "assistant", "content": completion}], "label": ok}
        kto.setdefault(json.dumps(rec, sort_keys=True), rec)

    scored: dict[str, list[tuple[float, str, list[dict[str, str]]]]] = {}
    for r in rows:
        out = _output({"id": r["response_id"], "outputs": r["outputs"]}, _choice(r["choice"]), "choice")
        prompt = _prompt(r)
        if r["kind"] == "correction":
            pair(prompt, r["value"], out)
            label(prompt, r["value"], True)
        elif r["kind"] == "preference":
            other = db.get_generation(tenant, r["other_response_id"])
            if other is not None:
                pair(prompt, out, _output(other, _choice(r["other_choice"]), "other_choice"))
        elif r["kind"] in ("thumbs", "rating"):
            score = (5.0 if r["value"] else 1.0) if r["kind"] == "thumbs" else float(r["value"])
            scored.setdefault(r["prompt_hash"], []).append((score, out, prompt))
            if score >= 4 or score <= 2:
                label(prompt, out, score >= 4)
    for items in scored.values():  # same prompt: every better-rated output over every worse one
        for (sa, a, prompt), (sb, b, _) in product(items, items):
            if sa > sb:
                pair(prompt, a, b)
    return list(pairs.values()), list(kto.values())


def _choice(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def _prompt(row: dict[str, Any]) -> list[dict[str, str]]:
    """The prompt a pair trains on (an analyze answer: its task's prompt, as the renderer built it)."""
    prompt = row["prompt"]
    return list(prompt[row["choice"]] if isinstance(prompt, dict) else prompt)
