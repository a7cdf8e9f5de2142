"""Knowledge grounding: retrieved chunks of a collection as the renderer's reference material.

    chunks = retrieve_context(collection, "what is the refund window for opened items?", k=4)
    prompt = renderer.encode_chat(messages, chunks)      # chat / generate
    prompt = renderer.prompt(conv, instruction, context=chunks)  # a task about a conversation

Chunks come back most relevant first (the renderer shows the most relevant last,
next to the question, and drops what does not fit its ``max_context_tokens``).
Each chunk's source names the chunk id so an answer can be traced to the
document or conversation turns it rests on.
"""

from __future__ import annotations

from typing import Any

from convtune.renderer import ContextChunk
from embeddings.index import Collection, Filter, Hit


def context_chunk(hit: Hit) -> ContextChunk:
    """A retrieved chunk as reference material; its source is the chunk id (``doc#n``, ``conv#t1-t6``)."""
    return ContextChunk(hit.text, source=hit.id)


def retrieve_context(collection: Collection, query: str, k: int = 4, *, where: Filter | None = None,
                     min_score: float | None = None) -> list[ContextChunk]:
    """The ``k`` chunks most similar to ``query`` (cosine at least ``min_score``), most relevant first."""
    (hits,) = collection.search(query, k=k, where=where)
    return [context_chunk(h) for h in hits if min_score is None or h.score >= min_score]


def last_user_message(messages: list[dict[str, Any]]) -> str:
    """The retrieval query of a chat: its last user message."""
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content", ""))
    raise ValueError("retrieval needs a user message to search with")
