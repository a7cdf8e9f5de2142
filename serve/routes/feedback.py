"""``POST /v1/feedback``: thumbs, ratings, corrections and preferences on returned generations.

Every generation the server returns is kept (PII-redacted) under its response
id for ``--feedback-retention-days``; feedback names that id. An unknown,
expired or another tenant's id answers 404. ``convtune feedback export`` turns
the feedback into preference pairs and KTO labels (:mod:`rlhf.feedback`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from rlhf.feedback import FeedbackRequest, add_feedback
from serve.bridge import ctx_of, tenant_of

router = APIRouter(tags=["feedback"])


@router.post("/v1/feedback", status_code=201)
async def feedback(body: FeedbackRequest, request: Request) -> dict[str, Any]:
    return await asyncio.to_thread(add_feedback, ctx_of(request).jobs_db, tenant_of(request), body)
