"""Plain-text transcripts: one file is one conversation (id = file stem).

Accepted line shapes::

    Agent: Thanks for calling.            Speaker: text
    #Person1#: Hi, I'd like to ...        DialogSum
    [00:01:02] Agent: ...                 timestamped ([hh:mm:ss], hh:mm:ss, [mm:ss])

A line without a speaker label continues the previous turn. A timestamped turn
ends where the next one starts; the last one is given 2.5 words per second. The
parser is shared with the CSV reader's transcript column, hence the ``sink``
indirection for problem locations.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

from convtune.conversation import Conversation
from convtune.ingest._common import (Limits, Origin, Problems, read_lines, guess_role, stem_id,
                                     validate_conversation)

WORDS_PER_SECOND = 2.5

_CLOCK = r"\d{1,3}:\d{2}(?::\d{2})?(?:[.,]\d+)?"
# A bracketed stamp without a speaker is reported; a bare "10:30 works for me" is
# ordinary text that happens to start with a time, and "[inaudible]" is no stamp.
_STAMP = rf"(?:\[\s*(?P<bracketed>[\d:.,]{{1,20}})\s*\]|(?P<bare>{_CLOCK}))"
# Speaker labels are short names ("Agent 2", "Dr. Ruiz", "#Person1#"). Requiring a
# space (or end of line) after the colon keeps "at 10:30" and URLs out.
_LABEL = r"(?P<speaker>#[^#\s][^#]{0,38}#|[^\W\d_][\w .'’()&-]{0,39}?)"
_TURN = re.compile(rf"^(?:{_STAMP}\s*(?:[-–—|]\s*)?)?{_LABEL}\s*:(?:\s+(?P<text>.*)|$)")
_STAMP_ONLY = re.compile(r"^\[\s*[\d:.,]{1,20}\s*\]")
_MAX_LABEL_WORDS = 4  # "Jean-Luc de la Cruz"; longer is a sentence with a colon


class Sink(Protocol):
    """Where problems go: the file itself, or a CSV cell (see csv_rows)."""

    def add(self, line: int | None, field: str | None, message: str) -> None: ...
    def stop(self, line: int | None, field: str | None, message: str) -> NoReturn: ...


@dataclass(frozen=True)
class TurnLine:
    """A line that starts a turn."""

    speaker: str
    text: str
    stamp: str | None  # the timestamp as written, if any


def match_turn(line: str) -> TurnLine | None:
    m = _TURN.match(line)
    if m is None or len(m["speaker"].split()) > _MAX_LABEL_WORDS:
        return None
    stamp = m["bracketed"] or m["bare"]
    return TurnLine(m["speaker"].strip(), (m["text"] or "").strip(), stamp)


def parse_clock(stamp: str) -> float | None:
    """``01:02:03`` -> 3723.0, ``01:02`` -> 62.0, ``00:01:02.5`` -> 62.5; None if invalid."""
    parts = stamp.replace(",", ".").split(":")
    if not 2 <= len(parts) <= 3 or not all(re.fullmatch(r"\d+", p) for p in parts[:-1]) \
            or not re.fullmatch(r"\d+(?:\.\d+)?", parts[-1]):
        return None
    *head, seconds = parts
    values = [int(p) for p in head] + [float(seconds)]
    # Minutes may run past 59 only when they lead ("[75:30]" in a long call).
    if values[-1] >= 60 or (len(values) == 3 and values[1] >= 60):
        return None
    total = 0.0
    for v in values:
        total = total * 60 + v
    return total


def parse_transcript(lines: Iterable[tuple[int, str]], sink: Sink, max_turns: int
                     ) -> tuple[list[dict[str, Any]], list[int]]:
    """Turn dicts (ids t1, t2, ...) and the line each turn starts on."""
    turns: list[dict[str, Any]] = []
    starts: list[int] = []
    stamps: list[tuple[str, float] | bool | None] = []  # False: invalid, already reported
    preamble: list[int] = []
    for number, raw in lines:
        line = raw.strip()
        if not line:
            continue
        found = match_turn(line)
        if found is None:
            if _STAMP_ONLY.match(line):
                sink.add(number, "speaker", "timestamp without a speaker label")
            elif turns:
                turns[-1]["text"] = f"{turns[-1]['text']} {line}".strip()
            else:
                preamble.append(number)
            continue
        if len(turns) >= max_turns:
            sink.stop(number, None, f"more than {max_turns:,} turns; reading stopped")
        stamp: tuple[str, float] | bool | None = None
        if found.stamp is not None:
            seconds = parse_clock(found.stamp)
            if seconds is None:
                sink.add(number, "timestamp", f"invalid timestamp {found.stamp!r}")
                stamp = False  # reported; not "missing" as well
            else:
                stamp = (found.stamp, seconds)
        turns.append({"id": f"t{len(turns) + 1}", "speaker": found.speaker,
                      "role": guess_role(found.speaker).value, "text": found.text})
        starts.append(number)
        stamps.append(stamp)
    if preamble:
        sink.add(preamble[0], None, f"{len(preamble)} line(s) before the first speaker label; "
                 "expected 'Speaker: text'")
    _add_times(turns, starts, stamps, sink)
    return turns, starts


def _add_times(turns: list[dict[str, Any]], starts: list[int],
               stamps: list[tuple[str, float] | bool | None], sink: Sink) -> None:
    known = [(n, s) for n, s in zip(starts, stamps) if isinstance(s, tuple)]
    if not known:
        return
    for (_, (before, earlier)), (number, (written, now)) in zip(known, known[1:]):
        if now < earlier:
            sink.add(number, "timestamp", f"timestamp {written} is earlier than the previous "
                     f"turn's {before}")
    if len(known) < len(stamps):
        for number, stamp in zip(starts, stamps):
            if stamp is None:
                sink.add(number, "timestamp", "no timestamp, but other turns have one")
        return  # times stay unset; the conversation is rejected anyway
    times = [seconds for _, (_, seconds) in known]
    for i, turn in enumerate(turns):
        turn["start"] = times[i]
        if i + 1 < len(times):
            # max(): an out-of-order stamp is reported above; don't report it twice.
            turn["end"] = max(times[i + 1], times[i])
        else:
            turn["end"] = round(times[i] + len(turn["text"].split()) / WORDS_PER_SECOND, 3)


def read(path: Path, problems: Problems, limits: Limits, mapping: object = None
         ) -> Iterator[tuple[Conversation, int]]:
    turns, starts = parse_transcript(read_lines(path, problems, limits), problems, limits.max_turns)
    if not turns:
        if not len(problems):
            problems.add(None, None, "no 'Speaker: text' lines found")
        return
    origins = [Origin(n, {"start": "timestamp", "end": "timestamp", None: "timestamp"})
               for n in starts]
    data = {"id": stem_id(path), "turns": turns}
    conversation = validate_conversation(data, problems, starts[0], turns=origins)
    if conversation is not None:
        yield conversation, starts[0]


def conversation_from_text(text: str, conversation_id: str = "request", *, source: str = "conversation.text",
                           max_turns: int = 10_000) -> Conversation:
    """A ``Speaker: text`` transcript given as a string (API requests) -> a Conversation.

    Raises:
        DataValidationError: every problem found, located by line.
    """
    from convtune.errors import DataValidationError
    from convtune.ingest._common import StopReading

    problems = Problems(source, limit=20)
    conversation = None
    try:
        turns, starts = parse_transcript(enumerate(text.splitlines(), 1), problems, max_turns)
        if not turns and not len(problems):
            problems.add(None, None, "no 'Speaker: text' lines found")
        if turns:
            fields = {"start": "timestamp", "end": "timestamp", None: "timestamp"}
            origins = [Origin(n, fields) for n in starts]
            conversation = validate_conversation({"id": conversation_id, "turns": turns}, problems, starts[0],
                                                 turns=origins)
    except StopReading:
        pass
    if conversation is None or len(problems):
        raise DataValidationError(problems.items, truncated=problems.truncated)
    return conversation
