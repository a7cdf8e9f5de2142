"""Split documents and conversations into retrievable chunks that point back to their source.

* Documents: split at headings (markdown ``#`` lines) and blank-line paragraphs,
  packed up to ``max_words`` per chunk; the last paragraph of a chunk is
  repeated at the start of the next (``overlap``) so an answer spanning the
  boundary is found from either side. A chunk starts with its heading.
* Conversations: windows of ``window`` turns moving by ``stride`` turns, each
  line ``[t3] Agent: text`` (the renderer's transcript format, speaker labels
  kept); metadata carries the conversation id, turn ids, speakers, channel,
  date and tags so hits can be filtered and cited.

Word counts stand in for tokens (~1.3 tokens per English word); the encoder
reports any chunk it still has to truncate.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from convtune.conversation import Conversation
from convtune.errors import ConfigError
from convtune.renderer import format_turn
from embeddings.index import Chunk

_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*\S)\s*$")


def _words(text: str) -> int:
    return len(text.split())


def _sections(text: str) -> Iterator[tuple[str | None, list[str]]]:
    """(heading, paragraphs) in document order."""
    heading: str | None = None
    paragraphs: list[str] = []
    current: list[str] = []

    def flush_paragraph() -> None:
        if current:
            paragraphs.append(" ".join(s.strip() for s in current))
            current.clear()

    for line in text.splitlines():
        m = _HEADING.match(line)
        if m:
            flush_paragraph()
            if paragraphs:
                yield heading, paragraphs
            heading, paragraphs = m.group(1), []
        elif not line.strip():
            flush_paragraph()
        else:
            current.append(line)
    flush_paragraph()
    if paragraphs:
        yield heading, paragraphs


def _split_long(paragraph: str, max_words: int) -> list[str]:
    words = paragraph.split()
    return [" ".join(words[i:i + max_words]) for i in range(0, len(words), max_words)]


def chunk_document(doc_id: str, text: str, *, max_words: int = 150, overlap: bool = True,
                   metadata: dict | None = None) -> list[Chunk]:
    """A document as chunks ``<doc_id>#<n>`` of at most ~``max_words`` words."""
    if max_words < 10:
        raise ConfigError(f"max_words must be at least 10, got {max_words}")
    chunks: list[Chunk] = []
    for heading, paragraphs in _sections(text):
        pieces = [p for para in paragraphs for p in _split_long(para, max_words)]
        prefix = f"{heading}\n" if heading else ""
        group: list[str] = []
        for piece in pieces:
            if group and _words(prefix) + sum(map(_words, group)) + _words(piece) > max_words:
                chunks.append(_doc_chunk(doc_id, len(chunks), prefix + "\n".join(group), heading, metadata))
                group = [group[-1]] if overlap and _words(group[-1]) + _words(piece) <= max_words else []
            group.append(piece)
        if group:
            chunks.append(_doc_chunk(doc_id, len(chunks), prefix + "\n".join(group), heading, metadata))
    return chunks


def _doc_chunk(doc_id: str, n: int, text: str, heading: str | None, metadata: dict | None) -> Chunk:
    meta = {**(metadata or {}), "source": doc_id, "kind": "document", "chunk": n}
    if heading:
        meta["heading"] = heading
    return Chunk(f"{doc_id}#{n}", text, meta)


def chunk_conversation(conv: Conversation, *, window: int = 6, stride: int = 4) -> list[Chunk]:
    """Windows of ``window`` turns every ``stride`` turns (the last window ends on the last turn)."""
    if window < 1 or not 1 <= stride <= window:
        raise ConfigError(f"need window >= 1 and 1 <= stride <= window, got window={window}, stride={stride}")
    turns = conv.turns
    starts = list(range(0, max(1, len(turns) - window + 1), stride))
    if starts[-1] + window < len(turns):
        starts.append(len(turns) - window)
    md = conv.metadata
    base = {"kind": "conversation", "conversation_id": conv.id, "channel": md.channel,
            "date": md.date.isoformat() if md.date else None, "tags": list(md.tags or [])}
    chunks = []
    for start in starts:
        part = turns[start:start + window]
        text = "\n".join(format_turn(t.id, t.speaker, t.text) for t in part)
        speakers = list(dict.fromkeys(t.speaker for t in part))
        meta = {**base, "turn_ids": [t.id for t in part], "speakers": speakers}
        chunks.append(Chunk(f"{conv.id}#{part[0].id}-{part[-1].id}", text, meta))
    return chunks
