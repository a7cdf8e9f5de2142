"""``/v1/files``: the caller's tenant's files (OpenAI's Files API): training files, batch input
files (``purpose=batch``, every line checked against its route) and batch results.

An upload is streamed to disk under ``--files-max-bytes``, validated and
PII-redacted before the response (:mod:`convtune.jobs.files`): ``status`` is
``processed``, or ``error`` with every problem (line and field) in
``status_details``. Ids are server-generated; another tenant's id is 404.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse

from convtune.jobs.files import PURPOSES, file_dir, file_object, processed_path, store_upload
from serve.bridge import ctx_of, tenant_of
from serve.errors import APIError, invalid, not_found

router = APIRouter(tags=["files"])


@router.post("/v1/files")
async def create_file(
    request: Request,
    file: UploadFile = File(description="the training file (JSONL or CSV)"),
    purpose: str = Form(description="fine-tune, or batch (a Batch API input file)"),
    mapping: str | None = Form(None, max_length=2000,
                               description="convtune: CSV column mapping, e.g. text=utterance,speaker=role"),
) -> dict[str, Any]:
    ctx = ctx_of(request)
    if purpose not in PURPOSES:
        raise invalid("purpose", f"purpose must be one of: {', '.join(PURPOSES)}")
    from serve.batches import check_body

    row = await asyncio.to_thread(
        store_upload, ctx.jobs_db, ctx.settings.home, tenant_of(request), file.filename or "upload.jsonl",
        purpose, file.file, max_bytes=ctx.settings.files_max_bytes, mapping=mapping, check_batch=check_body,
    )
    return file_object(row)


@router.get("/v1/files")
async def list_files(request: Request, purpose: str | None = None, limit: int = 10_000) -> dict[str, Any]:
    if not 1 <= limit <= 10_000:
        raise invalid("limit", "limit must be between 1 and 10000")
    rows = ctx_of(request).jobs_db.list_files(tenant_of(request), purpose=purpose, limit=limit)
    return {"object": "list", "data": [file_object(r) for r in rows], "has_more": False}


def _file(request: Request, file_id: str) -> dict[str, Any]:
    row = ctx_of(request).jobs_db.get_file(tenant_of(request), file_id)
    if row is None:
        raise not_found("file", file_id, param="file_id")
    return row


@router.get("/v1/files/{file_id}")
async def retrieve_file(file_id: str, request: Request) -> dict[str, Any]:
    return file_object(_file(request, file_id))


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, request: Request) -> FileResponse:
    """The processed (validated, redacted) content, as JSONL."""
    row = _file(request, file_id)
    path = processed_path(ctx_of(request).settings.home, row["tenant"], row["id"])
    if row["status"] != "processed" or not path.is_file():
        raise APIError(409, f"file {file_id!r} has no processed content (status {row['status']})",
                       param="file_id", code="file_not_processed")
    return FileResponse(path, media_type="application/jsonl", filename=row["filename"])


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, request: Request) -> dict[str, Any]:
    ctx = ctx_of(request)
    row = _file(request, file_id)
    import shutil

    ctx.jobs_db.delete_file(row["tenant"], file_id)
    shutil.rmtree(file_dir(ctx.settings.home, row["tenant"], file_id), ignore_errors=True)
    return {"id": file_id, "object": "file", "deleted": True}
