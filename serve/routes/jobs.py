"""``/v1/fine_tuning/jobs``: the caller's fine-tuning jobs (OpenAI's fine-tuning API).

Creating a job validates it at once and queues it; a worker process trains it
(:mod:`convtune.jobs.worker`). ``fine_tuned_model`` and every checkpoint's
``fine_tuned_model_checkpoint`` are model ids this server serves at once.
Lists are newest first and page with ``after`` (the last id seen) + ``limit``.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request

from convtune.jobs.service import (
    JobRequest,
    checkpoint_object,
    create_job,
    event_object,
    get_job,
    job_object,
    request_stop,
    resume_job,
)
from serve.bridge import ctx_of, tenant_of
from serve.errors import invalid

router = APIRouter(tags=["fine-tuning"])


def _limit(limit: int, most: int = 100) -> int:
    if not 1 <= limit <= most:
        raise invalid("limit", f"limit must be between 1 and {most}")
    return limit


def _page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": items, "has_more": has_more,
            "first_id": items[0]["id"] if items else None, "last_id": items[-1]["id"] if items else None}


@router.post("/v1/fine_tuning/jobs")
async def create(body: JobRequest, request: Request) -> dict[str, Any]:
    ctx = ctx_of(request)
    base = ctx.host.base_name if ctx.host is not None else ctx.settings.base_model

    def tenant_model(tenant: str, model_id: str) -> Any:
        found = ctx.models.get(tenant, model_id)
        return found.path if found is not None else None

    job = create_job(ctx.jobs_db, tenant_of(request), body, base_name=base, base_spec=ctx.base_spec or base,
                     tenant_model=tenant_model)
    return job_object(job)


@router.get("/v1/fine_tuning/jobs")
async def list_jobs(request: Request, after: str | None = None, limit: int = 20,
                    metadata: str | None = None) -> dict[str, Any]:
    wanted = None
    if metadata:
        try:
            wanted = {str(k): str(v) for k, v in json.loads(metadata).items()}
        except (ValueError, AttributeError):
            raise invalid("metadata", "metadata must be a JSON object of strings") from None
    rows, more = ctx_of(request).jobs_db.list_jobs(tenant_of(request), after=after, limit=_limit(limit),
                                                   metadata_filter=wanted)
    return _page([job_object(r) for r in rows], more)


@router.get("/v1/fine_tuning/jobs/{fine_tuning_job_id}")
async def retrieve(fine_tuning_job_id: str, request: Request) -> dict[str, Any]:
    return job_object(get_job(ctx_of(request).jobs_db, tenant_of(request), fine_tuning_job_id))


@router.post("/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel")
async def cancel(fine_tuning_job_id: str, request: Request) -> dict[str, Any]:
    return job_object(request_stop(ctx_of(request).jobs_db, tenant_of(request), fine_tuning_job_id, "cancel"))


@router.post("/v1/fine_tuning/jobs/{fine_tuning_job_id}/pause")
async def pause(fine_tuning_job_id: str, request: Request) -> dict[str, Any]:
    return job_object(request_stop(ctx_of(request).jobs_db, tenant_of(request), fine_tuning_job_id, "pause"))


@router.post("/v1/fine_tuning/jobs/{fine_tuning_job_id}/resume")
async def resume(fine_tuning_job_id: str, request: Request) -> dict[str, Any]:
    return job_object(resume_job(ctx_of(request).jobs_db, tenant_of(request), fine_tuning_job_id))


@router.get("/v1/fine_tuning/jobs/{fine_tuning_job_id}/events")
async def events(fine_tuning_job_id: str, request: Request, after: str | None = None,
                 limit: int = 20) -> dict[str, Any]:
    db = ctx_of(request).jobs_db
    get_job(db, tenant_of(request), fine_tuning_job_id)
    rows, more = db.list_events(fine_tuning_job_id, after=after, limit=_limit(limit, 1000))
    return _page([event_object(r) for r in rows], more)


@router.get("/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints")
async def checkpoints(fine_tuning_job_id: str, request: Request, after: str | None = None,
                      limit: int = 10) -> dict[str, Any]:
    db = ctx_of(request).jobs_db
    get_job(db, tenant_of(request), fine_tuning_job_id)
    rows, more = db.list_checkpoints(fine_tuning_job_id, after=after, limit=_limit(limit))
    return _page([checkpoint_object(r) for r in rows], more)
