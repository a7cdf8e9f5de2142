"""Few-shot context: the k most similar labelled conversations, shown with their labels.

The tenant's labelled training conversations go into a collection (one chunk
per conversation: its transcript lines, capped at ``max_words``, with each
few-shot task's rendered gold answer in the metadata). For a new conversation
the k nearest are retrieved and handed to the renderer as reference material::

    (example telecom-012)
    [t1] Customer: my bill doubled this month
    ...
    Answer (intent): billing_dispute

They are data, not instructions: the renderer delimits them as untrusted.

A training run with ``data.few_shot: K`` trains on prompts that carry K
retrieved examples (never the conversation itself) and keeps its example index
in ``RUN_DIR/examples``; evaluation and serving retrieve from it, so the model
sees the same kind of prompt it was trained on, and new labelled conversations
can be added to the index without retraining.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from convtune.conversation import Conversation
from convtune.renderer import ContextChunk, format_example, format_turn
from embeddings.index import Chunk, Collection

MAX_WORDS = 120


def example_text(conv: Conversation, max_words: int = MAX_WORDS) -> str:
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


def few_shot_tasks(tasks: Sequence[Any]) -> list[Any]:
    """The tasks few-shot examples are shown for: those with a label set (classification);
    long answers (summaries, lists) would eat the context budget."""
    return [t for t in tasks if getattr(t, "labels", None)]


def _tasks(tasks: Any) -> list[Any]:
    return list(tasks) if isinstance(tasks, (list, tuple)) else [tasks]


def index_examples(collection: Collection, conversations: Sequence[Conversation], tasks: Any, *,
                   max_words: int = MAX_WORDS) -> int:
    """Add every conversation labelled for at least one of ``tasks`` (a task or a list);
    returns how many. Re-adding unchanged examples costs nothing (content hash)."""
    chunks = []
    for conv in conversations:
        answers = {t.name: t.render_target(t.gold(conv)) for t in _tasks(tasks) if t.has_label(conv)}
        if answers:
            chunks.append(Chunk(conv.id, example_text(conv, max_words),
                                {"conversation_id": conv.id, "answers": answers}))
    collection.add(chunks)
    return len(chunks)


def few_shot_context(collection: Collection, conversations: Sequence[Conversation], tasks: Any, k: int = 4, *,
                     max_words: int = MAX_WORDS) -> dict[str, list[ContextChunk]]:
    """For each conversation, its ``k`` nearest labelled examples (never itself), most
    similar first (the renderer shows it last, closest to the question), each with its
    answers to ``tasks``."""
    names = [t.name for t in _tasks(tasks)]
    queries = [example_text(conv, max_words) for conv in conversations]
    hits = collection.search(queries, k=k + 1) if queries else []
    out: dict[str, list[ContextChunk]] = {}
    for conv, found in zip(conversations, hits, strict=True):
        chosen = []
        for h in found:
            stored = h.metadata.get("answers", {})
            answers = {n: stored[n] for n in names if n in stored}
            if h.metadata.get("conversation_id") != conv.id and answers:
                chosen.append(ContextChunk(format_example(h.text, answers),
                                           source=f"example {h.metadata['conversation_id']}"))
        out[conv.id] = chosen[:k]
    return out


def run_context(run_dir: str | Path, few_shot: dict[str, Any] | None, conversations: Sequence[Conversation],
                tasks: Sequence[Any], *, encoder: Any = None) -> dict[str, list[ContextChunk]] | None:
    """Few-shot context from a run trained with ``data.few_shot`` (``few_shot``: the run's
    ``{"k", "tasks", "index"}`` record), as at training time; None when it has none."""
    wanted = [t for t in tasks if few_shot and t.name in few_shot["tasks"]]
    if not wanted:
        return None
    if encoder is None:
        from embeddings.encoder import Encoder

        encoder = Encoder()
    coll = Collection(Path(run_dir) / few_shot["index"], encoder)
    try:
        return few_shot_context(coll, conversations, wanted, few_shot["k"])
    finally:
        coll.close()


def build_example_index(folder: str | Path, conversations: Sequence[Conversation], tasks: Any, *,
                        encoder: Any = None, max_words: int = MAX_WORDS) -> Collection:
    """A collection of labelled examples at ``folder`` (default encoder: the packaged MiniLM)."""
    if encoder is None:
        from embeddings.encoder import Encoder

        encoder = Encoder()
    coll = Collection(folder, encoder)
    index_examples(coll, conversations, tasks, max_words=max_words)
    coll.index()
    return coll
