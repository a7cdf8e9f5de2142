"""Ingestion pipeline: read any supported format, validate, redact PII, write native JSONL.

This is the one path by which a company's files become training data, so the
order matters: everything is read and validated first (one report listing
every problem), then redacted, then written atomically. A failure at any step
leaves no output file.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from convtune.conversation import Conversation
from convtune.ingest import CsvMapping, Limits, detect_format, read_conversations, write_conversations
from convtune.pii import redact_conversation


@dataclass
class ImportResult:
    """What an import did, for the CLI summary and for the jobs API later."""

    source: Path
    output: Path | None
    format: str
    conversations: int
    turns: int
    redacted: bool
    redactions: Counter = field(default_factory=Counter)  # entity type -> count


def load_conversations(
    path: str | Path,
    fmt: str | None = None,
    *,
    mapping: CsvMapping | None = None,
    limits: Limits | None = None,
) -> tuple[str, list[Conversation]]:
    """Read and validate a file. Returns ``(format, conversations)``.

    Raises:
        DataValidationError: listing every problem in the file.
    """
    path = Path(path)
    fmt = fmt or detect_format(path)
    convs = read_conversations(path, fmt, mapping=mapping, limits=limits or Limits())
    return fmt, convs


def redact_all(convs: list[Conversation]) -> tuple[list[Conversation], Counter]:
    """Redact every conversation; returns the new list and counts per entity type."""
    counts: Counter = Counter()
    out = []
    for conv in convs:
        red, spans = redact_conversation(conv)
        counts.update(s.entity for s in spans)
        out.append(red)
    return out, counts


def import_file(
    source: str | Path,
    output: str | Path | None,
    fmt: str | None = None,
    *,
    mapping: CsvMapping | None = None,
    limits: Limits | None = None,
    redact: bool = True,
) -> tuple[ImportResult, list[Conversation]]:
    """Validate, redact (unless ``redact=False``, an explicit opt-out) and write.

    ``output=None`` validates and redacts without writing (``data validate``).
    """
    source = Path(source)
    fmt, convs = load_conversations(source, fmt, mapping=mapping, limits=limits)
    counts: Counter = Counter()
    if redact:
        convs, counts = redact_all(convs)
    out_path = Path(output) if output is not None else None
    if out_path is not None:
        write_conversations(out_path, convs)
    result = ImportResult(
        source=source,
        output=out_path,
        format=fmt,
        conversations=len(convs),
        turns=sum(len(c.turns) for c in convs),
        redacted=redact,
        redactions=counts,
    )
    return result, convs


@dataclass
class DatasetStats:
    conversations: int
    turns: int
    words: int
    turns_min: int
    turns_median: float
    turns_max: int
    timed_share: float
    channels: Counter
    industries: Counter
    label_coverage: Counter  # task name -> conversations carrying that label
    intents: Counter

    def format(self) -> str:
        def counter(c: Counter) -> str:
            return ", ".join(f"{k}={v}" for k, v in c.most_common()) or "-"

        rows = [
            ("conversations", str(self.conversations)),
            ("turns", f"{self.turns} (min {self.turns_min}, median {self.turns_median:g}, "
                      f"max {self.turns_max})"),
            ("words", str(self.words)),
            ("timed", f"{self.timed_share:.0%} of conversations have turn timestamps"),
            ("channels", counter(self.channels)),
            ("industries", counter(self.industries)),
            ("labels", counter(self.label_coverage)),
            ("intents", counter(self.intents)),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def dataset_stats(convs: list[Conversation]) -> DatasetStats:
    if not convs:
        raise ValueError("no conversations")
    lengths = [len(c.turns) for c in convs]
    return DatasetStats(
        conversations=len(convs),
        turns=sum(lengths),
        words=sum(len(t.text.split()) for c in convs for t in c.turns),
        turns_min=min(lengths),
        turns_median=statistics.median(lengths),
        turns_max=max(lengths),
        timed_share=sum(c.timed for c in convs) / len(convs),
        channels=Counter(c.metadata.channel or "unknown" for c in convs),
        industries=Counter(c.metadata.industry or "unknown" for c in convs),
        label_coverage=Counter(k for c in convs for k in c.labels),
        intents=Counter(str(c.labels["intent"]) for c in convs if "intent" in c.labels),
    )
