"""Plumbing shared by every importer: limits, problem collection, bounded line
reading and the translation of pydantic errors into :class:`Problem` locations.

Everything that decides *how much* we read or *where* a problem is reported lives
here, so the five format readers cannot drift apart on either.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from convtune.conversation import Conversation, Role, guess_role  # noqa: F401 (re-exported)
from convtune.errors import ConfigError, ConvtuneError, Problem

FORMATS: tuple[str, ...] = ("convtune", "openai", "csv", "transcript", "symbl")
TURN_FIELDS = ("id", "speaker", "role", "text", "start", "end")


@dataclass(frozen=True)
class Limits:
    """Hard limits, enforced while streaming so hostile input cannot exhaust memory."""

    max_file_bytes: int = 200 * 1024 * 1024
    max_line_chars: int = 1_000_000
    max_turns: int = 2_000  # per conversation
    max_conversations: int = 1_000_000  # per file
    max_problems: int = 200  # reported before the report is truncated

    def __post_init__(self) -> None:
        bad = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
               if type(getattr(self, f.name)) is not int or getattr(self, f.name) < 1]
        if bad:
            raise ConfigError("limits must be positive integers: " + ", ".join(bad))


class StopReading(Exception):
    """Abandon the current file (a limit was hit or the report is full).

    Raised from deep inside a reader and caught once in ``iter_conversations``,
    which turns the collected problems into a DataValidationError.
    """


class Problems:
    """Collects problems for one file, up to ``limit`` of them."""

    def __init__(self, file: str, limit: int):
        self.file = file
        self.limit = limit
        self.items: list[Problem] = []
        self.truncated = False

    def __len__(self) -> int:
        return len(self.items)

    def add(self, line: int | None, field: str | None, message: str) -> None:
        if len(self.items) >= self.limit:
            # A file with thousands of errors is usually the wrong format or mapping;
            # reading on would only burn CPU on a report nobody reads.
            self.truncated = True
            raise StopReading
        self.items.append(Problem(self.file, line, field, message))

    def stop(self, line: int | None, field: str | None, message: str) -> NoReturn:
        self.add(line, field, message)
        raise StopReading


def read_lines(path: Path, problems: Problems, limits: Limits, *,
               max_line_chars: int | None = None,
               row_of: Callable[[int], int] | None = None) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` with BOM and CR/LF removed, never holding more
    than one bounded line in memory.

    Undecodable bytes are reported and replaced (U+FFFD) so parsing can go on and
    find the rest of the problems. ``max_line_chars`` overrides the line limit for
    whole-document formats; ``row_of`` turns a file line into the number problems
    should carry (CSV rows, where quoted cells can span lines).
    """
    max_chars = limits.max_line_chars if max_line_chars is None else max_line_chars
    # UTF-8 needs at most 4 bytes per character (+2 for CRLF): a longer raw line
    # is over the character limit without decoding it.
    max_line_bytes = 4 * max_chars + 2
    too_long = f"line is longer than {max_chars:,} characters; reading stopped"

    def report(number: int, message: str, *, fatal: bool = False) -> None:
        row = number if row_of is None else row_of(number)
        if row != number:
            message += f" (file line {number})"
        (problems.stop if fatal else problems.add)(row, None, message)

    info = stat_or_raise(path)
    if stat.S_ISREG(info.st_mode) and info.st_size > limits.max_file_bytes:
        problems.stop(None, None, f"file is {info.st_size:,} bytes, over the "
                      f"{limits.max_file_bytes:,}-byte limit")
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise ConvtuneError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with f:
        total = 0
        number = 0
        while True:
            # Re-check the size while streaming: the stat above says nothing about
            # pipes or files that are still being appended to.
            budget = limits.max_file_bytes - total
            try:
                raw = f.readline(min(max_line_bytes, budget) + 1)
            except OSError as exc:
                raise ConvtuneError(f"cannot read {path}: {exc.strerror or exc}") from exc
            if not raw:
                return
            number += 1
            total += len(raw)
            if total > limits.max_file_bytes:
                report(number, f"file is larger than the {limits.max_file_bytes:,}-byte limit; "
                       "reading stopped", fatal=True)
            if len(raw) > max_line_bytes:
                report(number, too_long, fatal=True)
            if number == 1:
                raw = _strip_bom(raw, problems)
            if raw.endswith(b"\n"):
                raw = raw[:-1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                report(number, f"not valid UTF-8 (byte {exc.start + 1} of the line is "
                       f"{raw[exc.start:exc.start + 1].hex()}); save the file as UTF-8")
                text = raw.decode("utf-8", "replace")
            if len(text) > max_chars:
                report(number, too_long, fatal=True)
            yield number, text


def stat_or_raise(path: Path) -> os.stat_result:
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ConvtuneError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(info.st_mode):
        raise ConvtuneError(f"{path} is a directory, not a file")
    return info


_OTHER_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
               (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


def _strip_bom(raw: bytes, problems: Problems) -> bytes:
    # Excel and Notepad like to add BOMs; UTF-16 exports would otherwise produce
    # a wall of confusing per-line decode errors.
    for bom, name in _OTHER_BOMS:
        if raw.startswith(bom):
            problems.stop(1, None, f"file is {name}-encoded; convert it to UTF-8")
    return raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw


def stem_id(path: Path) -> str:
    """Conversation id for a one-conversation file: its stem, minus a format hint
    (``support_chat.symbl.json`` -> ``support_chat``)."""
    stem = path.stem
    base, dot, hint = stem.rpartition(".")
    return base if dot and base and hint.lower() in FORMATS else stem


def reject_constant(name: str) -> Any:
    """``parse_constant`` hook: NaN/Infinity are not JSON and would slip past ``ge=0``."""
    raise ValueError(f"{name} is not valid JSON")


def parse_role(value: str) -> Role | None:
    """An explicit role value (``agent``, ``Customer``, ``user``...), or None if unknown."""
    key = value.strip().lower()
    try:
        return Role(key)
    except ValueError:
        guessed = guess_role(key)
        return guessed if guessed is not Role.other else None


ROLE_CHOICES = "agent, customer, bot or other"


# --- pydantic errors -> Problems ------------------------------------------------

@dataclass(frozen=True)
class Origin:
    """Where one turn came from, so model errors point into the user's file.

    ``names`` maps a Turn field to the source field (``{"text": "content"}``); the
    key None names the source field for whole-turn errors such as end < start.
    """

    line: int | None
    names: Mapping[str | None, str] = field(default_factory=dict)
    prefix: str = ""  # e.g. "messages.3." for JSON sources
    note: str = ""  # e.g. "transcript line 4: " when the turn sits inside a CSV cell


def validate_conversation(data: dict[str, Any], problems: Problems, line: int | None, *,
                          turns: Sequence[Origin] | None = None,
                          names: Mapping[str, str] | None = None) -> Conversation | None:
    """Validate ``data``; report every error at its source location and return None.

    Without ``turns``/``names`` locations are the model's own dotted paths
    (``turns.3.text``), which is right for the native format. Indices are 0-based,
    as in the JSON array.
    """
    try:
        return Conversation.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            where, path, note = _locate(err["loc"], line, turns, names or {})
            problems.add(where, path, note + describe_error(err))
        return None


def _locate(loc: tuple[Any, ...], line: int | None, turns: Sequence[Origin] | None,
            names: Mapping[str, str]) -> tuple[int | None, str | None, str]:
    if turns is not None and len(loc) >= 2 and loc[0] == "turns" and isinstance(loc[1], int) \
            and loc[1] < len(turns):
        origin = turns[loc[1]]
        rest = [str(p) for p in loc[2:]]
        if rest and rest[0] in origin.names:
            rest[0] = origin.names[rest[0]]
        elif not rest and None in origin.names:
            rest = [origin.names[None]]
        path = origin.prefix + ".".join(rest) if rest else origin.prefix.rstrip(".")
        return (origin.line if origin.line is not None else line), (path or None), origin.note
    dotted = ".".join(str(p) for p in loc)
    return line, (names.get(dotted, dotted) or None), ""


def describe_error(err: Mapping[str, Any]) -> str:
    """Pydantic's message, minus its jargon, plus the offending value when short."""
    kind, msg = err["type"], err["msg"]
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field"
    return f"{msg} (got {short_repr(err.get('input'))})"


def short_repr(value: Any, width: int = 60) -> str:
    if isinstance(value, (str, int, float, bool)) or value is None:
        text = repr(value)
        return text if len(text) <= width else text[:width - 3] + "..."
    return {dict: "an object", list: "an array"}.get(type(value), type(value).__name__)


def json_lines(path: Path, problems: Problems, limits: Limits
               ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank JSONL line that parses to an object."""
    for number, text in read_lines(path, problems, limits):
        if not text.strip():
            continue  # blank lines (often a trailing one) carry no record
        try:
            obj = json.loads(text, parse_constant=reject_constant)
        except json.JSONDecodeError as exc:
            problems.add(number, None, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        except ValueError as exc:  # NaN / Infinity
            problems.add(number, None, f"invalid JSON: {exc}")
            continue
        except RecursionError:
            problems.add(number, None, "invalid JSON: nested too deeply")
            continue
        if not isinstance(obj, dict):
            problems.add(number, None, f"expected a JSON object per line, got {short_repr(obj)}")
            continue
        yield number, obj
