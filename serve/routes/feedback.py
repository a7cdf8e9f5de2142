"""``POST /v1/feedback``: thumbs, ratings, corrections and preferences on returned generations;
``GET /v1/feedback`` lists the tenant's, ``GET /v1/feedback/export`` returns it as training data.

Every generation the server returns is kept (PII-redacted) under its response
id for ``--feedback-retention-days``; feedback names that id. An unknown,
expired or another tenant's id answers 404. ``convtune feedback export`` turns
the feedback into preference pairs and KTO labels (:mod:`rlhf.feedback`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request

from rlhf.feedback import FeedbackRequest, add_feedback, export, list_feedback
from serve.bridge import ctx_of, tenant_of

router = APIRouter(tags=["feedback"])


@router.post("/v1/feedback", status_code=201)
async def feedback(body: FeedbackRequest, request: Request) -> dict[str, Any]:
    return await asyncio.to_thread(add_feedback, ctx_of(request).jobs_db, tenant_of(request), body)


@router.get("/v1/feedback")
async def feedback_list(request: Request, limit: int = Query(100, ge=1, le=1000),
                        after: str | None = Query(None, max_length=64)) -> dict[str, Any]:
    return await asyncio.to_thread(list_feedback, ctx_of(request).jobs_db, tenant_of(request),
                                   limit=limit, after=after)


@router.get("/v1/feedback/export")
async def feedback_export(request: Request) -> dict[str, Any]:
    """What ``convtune feedback export`` writes: preference pairs and KTO examples."""
    pairs, kto = await asyncio.to_thread(export, ctx_of(request).jobs_db, tenant_of(request))
    return {"object": "feedback.export", "preferences": pairs, "kto": kto}
