"""CSV (and TSV) with a column mapping, in one of two layouts:

* one row per turn: ``conversation_id``, ``speaker`` and ``text`` columns, plus
  optional ``role``, ``start``, ``end``, ``turn_id``;
* one row per conversation: a ``transcript`` column of ``Speaker: text`` lines
  (parsed like a transcript file), optional ``conversation_id`` (else ``row-N``).

``channel``, ``industry``, ``date``, ``tags`` and ``meta.<key>`` columns go to
metadata. A key left out of the mapping uses the column of the same name when the
header has one. Rows are numbered like a spreadsheet: the header is row 1.
"""

from __future__ import annotations

import csv
import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

from convtune.conversation import Conversation
from convtune.errors import ConfigError
from convtune.ingest._common import (ROLE_CHOICES, TURN_FIELDS, Limits, Origin, Problems,
                                     StopReading, parse_role, read_lines, guess_role,
                                     validate_conversation)
from convtune.ingest.transcript import parse_clock, parse_transcript

_TURN_KEYS = ("speaker", "text", "role", "start", "end", "turn_id")
_META_KEYS = ("channel", "industry", "date", "tags")
_DELIMITERS = {"comma": ",", "tab": "\t", "semicolon": ";", "pipe": "|"}


@dataclass(frozen=True)
class CsvMapping:
    """Which CSV column holds what. None means "the column named like the key, if any"."""

    conversation_id: str | None = None
    speaker: str | None = None
    text: str | None = None
    role: str | None = None
    start: str | None = None
    end: str | None = None
    turn_id: str | None = None
    transcript: str | None = None
    channel: str | None = None
    industry: str | None = None
    date: str | None = None
    tags: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()  # (metadata key, column) from meta.<key>=col
    delimiter: str | None = None  # None: tab for .tsv files, else comma

    @classmethod
    def parse(cls, spec: str) -> CsvMapping:
        """``"text=utterance,speaker=who,conversation_id=call,meta.brand=company,delimiter=tab"``.

        Every mistake is listed in one ConfigError, with spelling suggestions.
        """
        columns = [f.name for f in fields(cls) if f.name not in ("metadata", "delimiter")]
        known = columns + ["delimiter", "meta.<key>"]
        values: dict[str, Any] = {}
        extra: list[tuple[str, str]] = []
        errors: list[str] = []
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            key, sep, value = (s.strip() for s in item.partition("="))
            if not sep or not key or not value:
                errors.append(f"{item!r} is not key=column")
            elif key in values or any(k == key.removeprefix("meta.") for k, _ in extra):
                errors.append(f"{key!r} is given twice")
            elif key.startswith("meta.") and len(key) > 5:
                extra.append((key[5:], value))
            elif key == "delimiter":
                if value not in _DELIMITERS and len(value) != 1:
                    errors.append(f"delimiter must be one character or one of "
                                  f"{', '.join(_DELIMITERS)}, got {value!r}")
                values[key] = _DELIMITERS.get(value, value)
            elif key in columns:
                values[key] = value
            else:
                errors.append(f"unknown key {key!r}{_suggest(key, columns + ['delimiter'])}")
        if errors:
            raise ConfigError(f"invalid CSV mapping {spec!r}: " + "; ".join(errors)
                              + f" (known keys: {', '.join(known)})")
        return cls(metadata=tuple(extra), **values)

    def explicit(self) -> dict[str, str]:
        """Mapping key -> column for every key the user set."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("metadata", "delimiter") and getattr(self, f.name)}
        out.update((f"meta.{k}", col) for k, col in self.metadata)
        return out


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def read(path: Path, problems: Problems, limits: Limits, mapping: CsvMapping | None = None
         ) -> Iterator[tuple[Conversation, int]]:
    mapping = mapping or CsvMapping()
    delimiter = mapping.delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    rows = _rows(path, problems, limits, delimiter)
    header = next(rows, None)
    if header is None:
        problems.stop(None, None, "file is empty; expected a header row")
    table = _Table(header[0], [cell.strip() for cell in header[1]], mapping, problems)
    if "text" in table.cols:
        yield from _per_turn(table, rows, problems, limits)
    else:
        yield from _per_conversation(table, rows, problems, limits)


def _rows(path: Path, problems: Problems, limits: Limits, delimiter: str
          ) -> Iterator[tuple[int, list[str]]]:
    # csv wants the newlines back to rebuild quoted multi-line cells; each physical
    # line is still bounded by read_lines, and a cell by csv.field_size_limit().
    row = 0
    # Problems found while reading a line belong to the record being parsed.
    lines = (text + "\n" for _, text in read_lines(path, problems, limits,
                                                   row_of=lambda _line: row + 1))
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # bad quoting, NUL bytes, giant cells: the rest is unreliable
            problems.stop(row + 1, None, f"malformed CSV: {exc}")
        row += 1
        if any(cell.strip() for cell in cells):
            yield row, cells


class _Table:
    """The header resolved against the mapping: mapping key -> column index."""

    def __init__(self, row: int, header: list[str], mapping: CsvMapping, problems: Problems):
        self.header = header
        self.problems = problems
        self.cols: dict[str, int] = {}
        before = len(problems)
        explicit = mapping.explicit()
        listing = ", ".join(repr(h) for h in header)
        wanted = dict.fromkeys(f.name for f in fields(mapping)
                               if f.name not in ("metadata", "delimiter")) | explicit
        for key in wanted:
            column = explicit.get(key)
            matches = [i for i, h in enumerate(header)
                       if (h == column if column else h.lower() == key)]
            if len(matches) > 1:
                problems.add(row, header[matches[0]], "column name appears more than once")
            elif matches:
                self.cols[key] = matches[0]
            elif column:
                problems.add(row, column, f"column for {key} is not in the header"
                             f"{_suggest(column, header)}; columns are {listing}")
        if len(problems) > before:
            raise StopReading  # a wrong column name; layout complaints would only add noise
        for key, other in (("text", "transcript"), ("transcript", "text")):
            # An explicit choice of layout wins over a same-named column found by default.
            if key in explicit and other not in explicit:
                self.cols.pop(other, None)
        if "text" in self.cols and "transcript" in self.cols:
            problems.add(row, None, "map either text (one row per turn) or transcript (one row "
                         "per conversation), not both")
        elif "text" in self.cols:
            for key in ("conversation_id", "speaker"):
                if key not in self.cols:
                    problems.add(row, None, f"one row per turn needs a {key} column: add "
                                 f"{key}=<column> to the mapping; columns are {listing}")
        elif "transcript" in self.cols:
            for key in _TURN_KEYS:
                if key in explicit:
                    problems.add(row, explicit[key], f"{key} is not used with a transcript column")
        else:
            problems.add(row, None, "no text or transcript column: map text=<column> (one row "
                         "per turn) or transcript=<column> (one row per conversation); "
                         f"columns are {listing}")
        if len(problems) > before:
            raise StopReading  # every row would fail the same way

    def name(self, key: str) -> str:
        return self.header[self.cols[key]]

    def cell(self, cells: list[str], key: str) -> str:
        return cells[self.cols[key]].strip() if key in self.cols else ""

    def check_width(self, row: int, cells: list[str]) -> bool:
        if len(cells) == len(self.header):
            return True
        self.problems.add(row, None, f"row has {len(cells)} cells but the header has "
                          f"{len(self.header)}")
        return False

    def metadata(self, cells: list[str]) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        for key in self.cols:
            value = self.cell(cells, key)
            if not value or not (key in _META_KEYS or key.startswith("meta.")):
                continue
            if key == "tags":
                meta[key] = [t.strip() for t in re.split(r"[;|,]", value) if t.strip()]
            else:
                meta[key.removeprefix("meta.")] = value
        return meta

    def names(self) -> dict[str, str]:
        """Model path -> column name, for conversation-level error locations."""
        out = {"metadata." + k.removeprefix("meta."): self.name(k) for k in self.cols
               if k in _META_KEYS or k.startswith("meta.")}
        if "conversation_id" in self.cols:
            out["id"] = self.name("conversation_id")
        return out


@dataclass
class _Draft:
    row: int  # first row of the conversation
    turns: list[dict[str, Any]] = field(default_factory=list)
    origins: list[Origin] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    meta_rows: dict[str, int] = field(default_factory=dict)


def _per_turn(table: _Table, rows: Iterator[tuple[int, list[str]]], problems: Problems,
              limits: Limits) -> Iterator[tuple[Conversation, int]]:
    # Rows of one conversation need not be adjacent, so conversations are only
    # complete at end of file; max_turns / max_conversations bound the buffer.
    drafts: dict[str, _Draft] = {}
    names = {k: table.name(k) for k in _TURN_KEYS if k in table.cols}
    turn_names: dict[str | None, str] = {f: names.get("turn_id" if f == "id" else f, f)
                                         for f in TURN_FIELDS}
    turn_names[None] = names.get("end", names.get("start", ""))
    for row, cells in rows:
        if not table.check_width(row, cells):
            continue
        conv_id = table.cell(cells, "conversation_id")
        if not conv_id:
            problems.add(row, table.name("conversation_id"), "conversation id is empty")
            continue
        draft = drafts.get(conv_id)
        if draft is None:
            if len(drafts) >= limits.max_conversations:
                problems.stop(row, None, f"more than {limits.max_conversations:,} conversations; "
                              "reading stopped")
            draft = drafts[conv_id] = _Draft(row)
        if len(draft.turns) >= limits.max_turns:
            problems.stop(row, None, f"conversation {conv_id!r} has more than "
                          f"{limits.max_turns:,} turns; reading stopped")
        draft.turns.append(_turn(table, row, cells, len(draft.turns) + 1))
        draft.origins.append(Origin(row, turn_names))
        _merge_metadata(draft, table.metadata(cells), row, table)
    conv_names = table.names()
    for conv_id, draft in drafts.items():
        data = {"id": conv_id, "turns": draft.turns, "metadata": draft.metadata}
        conversation = validate_conversation(data, problems, draft.row, turns=draft.origins,
                                             names=conv_names)
        if conversation is not None:
            yield conversation, draft.row


def _turn(table: _Table, row: int, cells: list[str], number: int) -> dict[str, Any]:
    speaker = table.cell(cells, "speaker")
    turn: dict[str, Any] = {"id": table.cell(cells, "turn_id") or f"t{number}",
                            "speaker": speaker, "text": table.cell(cells, "text")}
    written = table.cell(cells, "role")
    role = parse_role(written) if written else guess_role(speaker)
    if role is None:
        table.problems.add(row, table.name("role"), f"unknown role {written!r} (expected "
                           f"{ROLE_CHOICES})")
    else:
        turn["role"] = role.value
    times = {}
    for key in ("start", "end"):
        value = table.cell(cells, key)
        if value:
            times[key] = _seconds(value)
            if times[key] is None:
                table.problems.add(row, table.name(key), f"not a time in seconds or "
                                   f"[hh:]mm:ss: {value!r}")
    if None not in times.values():  # else reported; "start without end" would be noise
        turn.update(times)
    return turn


def _seconds(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return parse_clock(value)


def _merge_metadata(draft: _Draft, meta: dict[str, Any], row: int, table: _Table) -> None:
    # Per-turn exports repeat conversation facts on every row; disagreeing rows
    # usually mean two calls share an id, which must not be silently merged.
    for key, value in meta.items():
        if key not in draft.metadata:
            draft.metadata[key] = value
            draft.meta_rows[key] = row
        elif draft.metadata[key] != value:
            column = table.name(key if key in table.cols else f"meta.{key}")
            table.problems.add(row, column, f"{value!r} differs from {draft.metadata[key]!r} "
                               f"on row {draft.meta_rows[key]} of the same conversation")


class _CellSink:
    """Reports transcript problems at the CSV row and column holding the transcript."""

    def __init__(self, problems: Problems, row: int, column: str):
        self.problems, self.row, self.column = problems, row, column

    def add(self, line: int | None, field: str | None, message: str) -> None:
        self.problems.add(self.row, self.column, f"transcript line {line}: {message}")

    def stop(self, line: int | None, field: str | None, message: str) -> NoReturn:
        self.problems.stop(self.row, self.column, f"transcript line {line}: {message}")


def _per_conversation(table: _Table, rows: Iterator[tuple[int, list[str]]], problems: Problems,
                      limits: Limits) -> Iterator[tuple[Conversation, int]]:
    column = table.name("transcript")
    conv_names = table.names()
    for row, cells in rows:
        if not table.check_width(row, cells):
            continue
        lines = enumerate(table.cell(cells, "transcript").splitlines(), 1)
        turns, starts = parse_transcript(lines, _CellSink(problems, row, column), limits.max_turns)
        if not turns:
            problems.add(row, column, "transcript has no 'Speaker: text' lines")
            continue
        names: dict[str | None, str] = {f: column for f in TURN_FIELDS} | {None: column}
        origins = [Origin(row, names, note=f"transcript line {n}: ") for n in starts]
        data = {"id": table.cell(cells, "conversation_id") or f"row-{row}", "turns": turns,
                "metadata": table.metadata(cells)}
        conversation = validate_conversation(data, problems, row, turns=origins, names=conv_names)
        if conversation is not None:
            yield conversation, row
