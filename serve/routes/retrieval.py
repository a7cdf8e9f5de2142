"""Retrieval collections of the caller's tenant: create, list, add documents/conversations, search.

Collections are named identifiers under the tenant (never paths); another
tenant's collection of the same name is a different collection, and a name
the caller does not have answers 404. Conversations are PII-redacted before
they are chunked and embedded.
"""

from __future__ import annotations

import asyncio
import shutil
from datetime import date
from typing import Any

from fastapi import APIRouter, Request

from serve.bridge import ctx_of, open_tenant_collection, tenant_of
from serve.errors import invalid
from serve.protocol import CollectionCreate, DocumentsAdd, SearchRequest

router = APIRouter(tags=["retrieval"])


def _describe(coll: Any, name: str) -> dict[str, Any]:
    stats = coll.stats()
    return {
        "object": "collection",
        "name": name,
        "count": stats["count"],
        "encoder": stats["encoder"]["name"],
    }


@router.post("/v1/collections", status_code=201)
async def create_collection(body: CollectionCreate, request: Request) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        coll = open_tenant_collection(request, body.name, create=True)
        try:
            return _describe(coll, body.name)
        finally:
            coll.close()

    return await asyncio.to_thread(run)


@router.get("/v1/collections")
async def list_collections(request: Request) -> dict[str, Any]:
    from embeddings.store import list_collections as names

    root = ctx_of(request).settings.home / "collections"
    found = names(tenant_of(request), root)
    return {"object": "list", "data": [{"object": "collection", "name": n} for n in found]}


@router.get("/v1/collections/{name}")
async def get_collection(name: str, request: Request) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        coll = open_tenant_collection(request, name)
        try:
            return _describe(coll, name)
        finally:
            coll.close()

    return await asyncio.to_thread(run)


@router.delete("/v1/collections/{name}")
async def delete_collection(name: str, request: Request) -> dict[str, Any]:
    coll = open_tenant_collection(request, name)
    folder = coll.folder
    coll.close()
    await asyncio.to_thread(shutil.rmtree, folder)
    return {"object": "collection", "name": name, "deleted": True}


@router.post("/v1/collections/{name}/documents")
async def add_documents(name: str, body: DocumentsAdd, request: Request) -> dict[str, Any]:
    from pydantic import ValidationError

    from convtune.conversation import Conversation
    from convtune.data import redact_all
    from embeddings.chunking import chunk_conversation, chunk_document

    if not body.documents and not body.conversations:
        raise invalid("documents", "nothing to add: send documents and/or conversations")
    chunks = [c for d in body.documents for c in chunk_document(d.id, d.text, metadata=d.metadata)]
    convs = []
    for i, raw in enumerate(body.conversations):
        try:
            convs.append(Conversation.model_validate(raw))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise invalid(f"conversations.{i}.{where}", f"conversations.{i}.{where}: {err['msg']}") from None
    if convs:
        convs, _ = redact_all(convs)
        chunks += [c for conv in convs for c in chunk_conversation(conv)]

    def run() -> dict[str, Any]:
        coll = open_tenant_collection(request, name)
        try:
            rep = coll.add(chunks)
            coll.index()
            return {
                "object": "collection.add",
                "name": name,
                "added": rep.added,
                "updated": rep.updated,
                "unchanged": rep.unchanged,
                "truncated": rep.truncated,
                "count": len(coll),
            }
        finally:
            coll.close()

    return await asyncio.to_thread(run)


@router.post("/v1/collections/{name}/search")
async def search(name: str, body: SearchRequest, request: Request) -> dict[str, Any]:
    from embeddings.index import Filter

    dates = {}
    for key in ("date_from", "date_to"):
        value = getattr(body, key)
        try:
            dates[key] = date.fromisoformat(value) if value else None
        except ValueError:
            raise invalid(key, f"{key}: {value!r} is not a date") from None
    where = Filter(speaker=body.speaker, channel=body.channel, tags=body.tags, **dates)

    def run() -> list[Any]:
        coll = open_tenant_collection(request, name)
        try:
            return coll.search(body.query, k=body.k, where=where)[0]
        finally:
            coll.close()

    hits = await asyncio.to_thread(run)
    return {
        "object": "list",
        "data": [
            {"id": h.id, "score": round(h.score, 4), "text": h.text, "metadata": h.metadata} for h in hits
        ],
    }
