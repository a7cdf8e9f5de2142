"""Importers: raw customer-service files -> validated :class:`Conversation` objects.

>>> convs = read_conversations("calls.csv", mapping=CsvMapping.parse("text=utterance"))

Every reader validates the whole file and reports all problems at once
(:class:`DataValidationError`, each :class:`Problem` with file, 1-based line or CSV
row, and field); nothing is returned or written for a file with any problem.
Limits (:class:`Limits`) are enforced while streaming.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from convtune.conversation import Conversation
from convtune.errors import ConfigError, DataValidationError, Problem
from convtune.ingest import csv_rows, native, openai_jsonl, symbl, transcript
from convtune.ingest._common import FORMATS, Limits, Problems, StopReading, stat_or_raise
from convtune.ingest.csv_rows import CsvMapping
from convtune.ingest.detect import detect_format
from convtune.ingest.writer import write_conversations

__all__ = ["FORMATS", "CsvMapping", "Limits", "detect_format", "iter_conversations",
           "read_conversations", "write_conversations"]

_Reader = Callable[..., Iterator[tuple[Conversation, int]]]
_READERS: dict[str, _Reader] = {"convtune": native.read, "openai": openai_jsonl.read,
                                "csv": csv_rows.read, "transcript": transcript.read,
                                "symbl": symbl.read}
assert set(_READERS) == set(FORMATS)


def iter_conversations(path: str | os.PathLike[str], fmt: str | None = None, *,
                       mapping: CsvMapping | str | None = None, limits: Limits = Limits()
                       ) -> Iterator[Conversation]:
    """Yield valid conversations; at the end raise DataValidationError if anything was wrong.

    What was yielded before the error is only provisional: consumers must not keep
    it unless the iteration finishes (``write_conversations`` and
    ``read_conversations`` honour that). Arguments are checked eagerly, before the
    first ``next()``.
    """
    p = Path(path)
    stat_or_raise(p)  # a missing file is an argument error, not a data problem
    fmt = fmt or detect_format(p)
    if fmt not in _READERS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if isinstance(mapping, str):
        mapping = CsvMapping.parse(mapping)
    if mapping is not None and fmt != "csv":
        raise ConfigError(f"a column mapping only applies to csv files, not {fmt}")
    return _iterate(p, _READERS[fmt], mapping, limits, "row" if fmt == "csv" else "line")


def read_conversations(path: str | os.PathLike[str], fmt: str | None = None, *,
                       mapping: CsvMapping | str | None = None, limits: Limits = Limits()
                       ) -> list[Conversation]:
    """All conversations in ``path``, or DataValidationError listing every problem."""
    return list(iter_conversations(path, fmt, mapping=mapping, limits=limits))


def _iterate(path: Path, reader: _Reader, mapping: CsvMapping | None, limits: Limits,
             unit: str) -> Iterator[Conversation]:
    problems = Problems(str(path), limits.max_problems)
    first_seen: dict[str, int] = {}
    try:
        for conversation, line in reader(path, problems, limits, mapping):
            if conversation.id in first_seen:
                problems.add(line, "id", f"duplicate conversation id {conversation.id!r} "
                             f"(first used on {unit} {first_seen[conversation.id]})")
                continue
            first_seen[conversation.id] = line
            if len(first_seen) > limits.max_conversations:
                problems.stop(line, None, f"more than {limits.max_conversations:,} "
                              "conversations; reading stopped")
            # Once anything is wrong the caller will get an error anyway; stop
            # handing out conversations it would have to throw away.
            if not len(problems):
                yield conversation
    except StopReading:
        pass
    if not first_seen and not len(problems):
        problems.items.append(Problem(str(path), None, None, "no conversations found"))
    if len(problems):
        # Readers that buffer (CSV per-turn) report out of line order; sort for humans.
        ordered = sorted(problems.items, key=lambda p: (p.line is not None, p.line or 0))
        raise DataValidationError(ordered, truncated=problems.truncated)
