"""``/v1/batches`` (OpenAI's Batch API): create, retrieve, list, cancel; the lines are processed by
the server's batch runner (:mod:`serve.batches`), not by these request handlers. Results are
files (``output_file_id``, ``error_file_id``) read through ``/v1/files/{id}/content``. Another
tenant's batch or file is 404. ``GET /v1/webhook_secret``: the key batch webhooks are signed with."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request

from serve import batches
from serve.bridge import ctx_of, tenant_of
from serve.errors import APIError
from serve.protocol import BatchCreate

router = APIRouter(tags=["batches"])


@router.post("/v1/batches")
async def create_batch(body: BatchCreate, request: Request) -> dict[str, Any]:
    return await asyncio.to_thread(batches.create_batch, ctx_of(request).jobs_db, tenant_of(request), body)


@router.get("/v1/batches")
async def list_batches(
    request: Request, after: str | None = Query(None, max_length=48), limit: int = Query(20, ge=1, le=100)
) -> dict[str, Any]:
    db = ctx_of(request).jobs_db
    rows, more = await asyncio.to_thread(db.list_batches, tenant_of(request), after=after, limit=limit)
    data = [batches.batch_object(db, r) for r in rows]
    return {
        "object": "list",
        "data": data,
        "has_more": more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(batch_id: str, request: Request) -> dict[str, Any]:
    db = ctx_of(request).jobs_db
    row = await asyncio.to_thread(db.get_batch, batch_id, tenant_of(request))
    if row is None:
        raise APIError(404, f"batch {batch_id!r} not found", param="batch_id", code="batch_not_found")
    return batches.batch_object(db, row)


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, request: Request) -> dict[str, Any]:
    return await asyncio.to_thread(
        batches.cancel_batch, ctx_of(request).jobs_db, tenant_of(request), batch_id
    )


@router.get("/v1/webhook_secret")
async def webhook_secret(request: Request) -> dict[str, Any]:
    """convtune: verify a webhook by recomputing ``X-Convtune-Signature`` (HMAC-SHA256 of the body)."""
    secret = await asyncio.to_thread(
        batches.webhook_secret, ctx_of(request).settings.home, tenant_of(request)
    )
    return {
        "object": "webhook_secret",
        "secret": secret,
        "header": "X-Convtune-Signature",
        "algorithm": "sha256=hex(HMAC-SHA256(secret, body))",
    }
