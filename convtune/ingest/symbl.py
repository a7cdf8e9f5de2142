"""Symbl-style message JSON, one conversation per file. Two shapes are accepted::

    {"messages": [{"payload": {"content": "...", "contentType": "text/plain"},
                   "from": {"name": "Agent", "userId": "..."},
                   "duration": {"startTime": "2026-03-02T10:00:01.000Z", "endTime": "..."}}]}

(the Async Text API input) and the Messages API response, where each message has
top-level ``text``, ``from.name`` and ``startTime``/``endTime``. ISO times become
seconds from the first message's start; message ``id`` values are kept as turn ids.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import json
import json.decoder
import json.scanner
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from convtune.conversation import Conversation
from convtune.ingest._common import (ROLE_CHOICES, Limits, Origin, Problems, parse_role,
                                     read_lines, reject_constant, guess_role, short_repr, stem_id,
                                     validate_conversation)

# The line-tracking decoder runs the pure-Python JSON scanner (several times slower
# than the C one), so very large documents are parsed without line numbers.
_TRACK_LINES_BELOW = 20_000_000  # characters


def read(path: Path, problems: Problems, limits: Limits, mapping: object = None
         ) -> Iterator[tuple[Conversation, int]]:
    # One JSON document has to be parsed whole, and minified JSON is legitimately
    # a single long line, so the file-size limit bounds it rather than max_line_chars.
    lines = [text for _, text in read_lines(path, problems, limits,
                                            max_line_chars=limits.max_file_bytes)]
    doc, line_of = _load("\n".join(lines), lines, problems)
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages:
        problems.stop(line_of(doc), "messages", "expected a non-empty array of messages, got "
                      f"{short_repr(messages)}")
    if len(messages) > limits.max_turns:
        problems.stop(line_of(doc), "messages", f"{len(messages):,} messages, over the "
                      f"{limits.max_turns:,}-turn limit")
    turns: list[dict[str, Any]] = []
    origins: list[Origin] = []
    times: list[tuple[int, dt.datetime | None, dt.datetime | None]] = []
    conv_ids: set[str] = set()
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            problems.add(line_of(doc), where, f"must be an object, got {short_repr(message)}")
            continue
        line = line_of(message)
        turn, origin, start, end = _message(message, i, line, where, problems)
        if turn is not None:
            times.append((len(turns), start, end))
            turns.append(turn)
            origins.append(origin)
        if isinstance(message.get("conversationId"), str):
            conv_ids.add(message["conversationId"])
    if len(conv_ids) > 1:
        problems.add(line_of(doc), "messages", "messages have different conversationId values: "
                     + ", ".join(sorted(conv_ids)))
    _relative_times(turns, origins, times, problems)
    conv_id = doc.get("conversationId") or doc.get("id") or next(iter(conv_ids), stem_id(path))
    if turns:
        names = {"id": "conversationId"}
        conversation = validate_conversation({"id": conv_id, "turns": turns}, problems,
                                             line_of(doc), turns=origins, names=names)
        if conversation is not None:
            yield conversation, line_of(doc) or 1


def _message(message: dict[str, Any], i: int, line: int | None, where: str,
             problems: Problems) -> tuple[dict[str, Any] | None, Origin, Any, Any]:
    """One message -> (turn dict, origin, start, end); the turn is None if unusable."""
    if "payload" in message:
        payload = message["payload"]
        if not isinstance(payload, dict):
            payload = {}
            problems.add(line, f"{where}.payload", "must be an object")
        if payload.get("contentType", "text/plain") != "text/plain":
            problems.add(line, f"{where}.payload.contentType", "only text/plain is supported, "
                         f"got {short_repr(payload.get('contentType'))}")
        text = payload.get("content")
        duration = message.get("duration") or {}
        timing, text_name = "duration.", "payload.content"
    else:
        text, duration, timing, text_name = message.get("text"), message, "", "text"
    names = {"text": text_name, "speaker": "from.name", "role": "from.role", "id": "id",
             "start": f"{timing}startTime", "end": f"{timing}endTime", None: f"{timing}endTime"}
    origin = Origin(line, names, prefix=f"{where}.")
    sender = message.get("from")
    speaker = None
    if isinstance(sender, dict):
        speaker = sender.get("name") or sender.get("userId")
    if not isinstance(speaker, str) or not speaker.strip():
        problems.add(line, f"{where}.from.name", "speaker is missing (from.name or from.userId)")
        return None, origin, None, None
    written = message.get("role") or sender.get("role")
    role = parse_role(written) if isinstance(written, str) else guess_role(speaker)
    if role is None:
        problems.add(line, f"{where}.from.role", f"unknown role {written!r} (expected "
                     f"{ROLE_CHOICES})")
        return None, origin, None, None
    turn_id = message.get("id", f"t{i + 1}")
    turn = {"id": str(turn_id) if isinstance(turn_id, int) else turn_id, "speaker": speaker,
            "role": role.value, "text": text}
    if not isinstance(duration, dict):
        problems.add(line, f"{where}.duration", "must be an object")
        return None, origin, None, None
    start = _instant(duration.get("startTime"), line, f"{where}.{timing}startTime", problems)
    end = _instant(duration.get("endTime"), line, f"{where}.{timing}endTime", problems)
    return turn, origin, start, end


def _instant(value: Any, line: int | None, where: str, problems: Problems) -> Any:
    """An ISO 8601 time; None when absent; False (already reported) when invalid."""
    if value is None:
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        problems.add(line, where, f"not an ISO 8601 time: {short_repr(value)}")
        return False


def _relative_times(turns: list[dict[str, Any]], origins: list[Origin],
                    times: list[tuple[int, Any, Any]], problems: Problems) -> None:
    """Seconds from the first message's start. Reports mixed/negative timing."""
    # Symbl sends times for every message or for none; half-timed input means a
    # broken export, and Turn needs start/end together anyway.
    present = [t for t in times if t[1] is not None or t[2] is not None]
    if not present or any(s is False or e is False for _, s, e in times):
        return
    if len(present) < len(times) or any(s is None or e is None for _, s, e in times):
        for index, start, end in times:
            if start is None or end is None:
                origin = origins[index]
                problems.add(origin.line, origin.prefix + origin.names["start"], "startTime "
                             "and endTime are required when other messages are timed")
        return
    base = times[0][1]
    for index, start, end in times:
        origin = origins[index]
        where = origin.prefix + origin.names["start"]
        if len({t.utcoffset() is None for t in (base, start, end)}) > 1:  # can't subtract
            problems.add(origin.line, where, "mixes times with and without a time zone")
        elif start < base:
            # Caught here rather than by Turn's ge=0 so the message speaks in ISO times.
            problems.add(origin.line, where, f"starts {(base - start).total_seconds():g} s "
                         "before the first message; messages must be in time order")
        else:
            turns[index]["start"] = round((start - base).total_seconds(), 3)
            turns[index]["end"] = round((end - base).total_seconds(), 3)


def _load(text: str, lines: list[str], problems: Problems
          ) -> tuple[dict[str, Any], Callable[[Any], int | None]]:
    """Parse the document; also return ``line_of(obj)`` for objects inside it."""
    decoder = _PositionDecoder() if len(text) < _TRACK_LINES_BELOW else None
    try:
        doc = (decoder or json.JSONDecoder(parse_constant=reject_constant)).decode(text)
    except json.JSONDecodeError as exc:
        problems.stop(exc.lineno, None, f"invalid JSON: {exc.msg} (column {exc.colno})")
    except ValueError as exc:
        problems.stop(None, None, f"invalid JSON: {exc}")
    except RecursionError:
        problems.stop(None, None, "invalid JSON: nested too deeply")
    if not isinstance(doc, dict):
        problems.stop(1, None, f"expected a JSON object with a messages array, got "
                      f"{short_repr(doc)}")
    if decoder is None:
        return doc, lambda obj: None
    line_starts = list(itertools.accumulate((len(s) + 1 for s in lines[:-1]), initial=0))

    def line_of(obj: Any) -> int | None:
        offset = decoder.starts.get(id(obj))
        return None if offset is None else bisect.bisect_right(line_starts, offset)
    return doc, line_of


class _PositionDecoder(json.JSONDecoder):
    """A JSONDecoder that records where each object starts, so problems inside a
    pretty-printed document can name a line (the C scanner offers no such hook)."""

    def __init__(self) -> None:
        super().__init__(parse_constant=reject_constant)
        self.starts: dict[int, int] = {}

        def parse_object(s_and_end: tuple[str, int], *args: Any) -> tuple[Any, int]:
            obj, end = json.decoder.JSONObject(s_and_end, *args)
            self.starts[id(obj)] = s_and_end[1] - 1
            return obj, end

        self.parse_object = parse_object
        self.scan_once = json.scanner.py_make_scanner(self)
