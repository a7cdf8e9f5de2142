"""convtune's own JSONL: one ``Conversation.model_dump(mode="json")`` per line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from convtune.conversation import Conversation
from convtune.ingest._common import Limits, Problems, json_lines, validate_conversation


def read(path: Path, problems: Problems, limits: Limits, mapping: object = None
         ) -> Iterator[tuple[Conversation, int]]:
    for number, obj in json_lines(path, problems, limits):
        turns = obj.get("turns")
        # Checked before validation so a huge line is not expanded into thousands
        # of Turn objects just to be rejected. The line itself is already bounded
        # by max_line_chars, so we can report and carry on with the next line.
        if isinstance(turns, list) and len(turns) > limits.max_turns:
            problems.add(number, "turns", f"{len(turns):,} turns, over the "
                         f"{limits.max_turns:,}-turn limit")
            continue
        conversation = validate_conversation(obj, problems, number)
        if conversation is not None:
            yield conversation, number
