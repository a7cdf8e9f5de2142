"""Few-shot context: the k most similar labelled conversations, shown with their labels.

The tenant's labelled training conversations go into a collection (one chunk
per conversation: its transcript lines, capped at ``max_words``, with the
task's rendered gold answer in the metadata). For a new conversation the k
nearest are retrieved and handed to the renderer as reference material::

    (example telecom-012)
    [t1] Customer: my bill doubled this month
    ...
    Answer (intent): billing_dispute

They are data, not instructions: the renderer delimits them as untrusted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from convtune.conversation import Conversation
from convtune.renderer import ContextChunk, format_example, format_turn
from embeddings.index import Chunk, Collection


def example_text(conv: Conversation, max_words: int = 120) -> str:
    """The conversation's transcript lines, cut after ``max_words`` words (whole turns kept)."""
    lines, used = [], 0
    for t in conv.turns:
        line = format_turn(t.id, t.speaker, t.text)
        n = len(line.split())
        if lines and used + n > max_words:
            break
        lines.append(line)
        used += n
    return "\n".join(lines)


def index_examples(collection: Collection, conversations: Sequence[Conversation], task: Any, *,
                   max_words: int = 120) -> int:
    """Add every conversation labelled for ``task``; returns how many."""
    chunks = [Chunk(f"{conv.id}", example_text(conv, max_words),
                    {"conversation_id": conv.id, "task": task.name,
                     "answer": task.render_target(task.gold(conv))})
              for conv in conversations if task.has_label(conv)]
    collection.add(chunks)
    return len(chunks)


def few_shot_context(collection: Collection, conversations: Sequence[Conversation], task: Any, k: int = 4, *,
                     max_words: int = 120) -> dict[str, list[ContextChunk]]:
    """For each conversation, its ``k`` nearest labelled examples of ``task`` (never itself),
    most similar last (closest to the question)."""
    queries = [example_text(conv, max_words) for conv in conversations]
    hits = collection.search(queries, k=k + 1) if queries else []
    out: dict[str, list[ContextChunk]] = {}
    for conv, found in zip(conversations, hits, strict=True):
        chosen = [h for h in found if h.metadata.get("conversation_id") != conv.id
                  and h.metadata.get("task") == task.name][:k]
        out[conv.id] = [ContextChunk(format_example(h.text, task.name, h.metadata["answer"]),
                                     source=f"example {h.metadata['conversation_id']}")
                        for h in reversed(chosen)]
    return out
