"""OpenAI chat fine-tuning JSONL: ``{"messages": [{"role": ..., "content": ...}]}``.

user -> customer ("Customer"), assistant -> agent ("Agent"); a message ``name``
overrides the speaker label. System messages are instructions, not turns: they are
joined into ``metadata.system_prompt``. The conversation id is the line's ``id``
key, else ``line-N``. Anything we would otherwise drop silently (tool calls,
weights, unknown keys) is reported instead, because silently changing training
data is worse than asking the user to strip it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from convtune.conversation import Conversation, Role
from convtune.ingest._common import (Limits, Origin, Problems, json_lines, short_repr,
                                     validate_conversation)

_SPEAKERS = {"user": ("Customer", Role.customer), "assistant": ("Agent", Role.agent)}
_TOP_KEYS = {"messages", "id", "metadata"}
_MESSAGE_KEYS = {"role", "content", "name"}
# Source names of Turn fields, for error locations (messages.N.<name>).
_NAMES = {"text": "content", "speaker": "name", "role": "role"}


def read(path: Path, problems: Problems, limits: Limits, mapping: object = None
         ) -> Iterator[tuple[Conversation, int]]:
    for number, obj in json_lines(path, problems, limits):
        conversation = _convert(obj, number, problems, limits)
        if conversation is not None:
            yield conversation, number


def _convert(obj: dict[str, Any], number: int, problems: Problems, limits: Limits
             ) -> Conversation | None:
    before = len(problems)
    for key in obj.keys() - _TOP_KEYS:
        problems.add(number, key, "unsupported key (only messages, id and metadata are read)")
    messages = obj.get("messages")
    if not isinstance(messages, list):
        problems.add(number, "messages", "required array is missing" if messages is None
                     else f"must be an array, got {short_repr(messages)}")
        return None
    if len(messages) > limits.max_turns:
        problems.add(number, "messages", f"{len(messages):,} messages, over the "
                     f"{limits.max_turns:,}-turn limit")
        return None
    conv_id = obj.get("id", f"line-{number}")
    if isinstance(conv_id, int) and not isinstance(conv_id, bool):
        conv_id = str(conv_id)
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict):
        problems.add(number, "metadata", f"must be an object, got {short_repr(metadata)}")
        metadata = {}

    system: list[str] = []
    turns: list[dict[str, Any]] = []
    origins: list[Origin] = []
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            problems.add(number, where, f"must be an object, got {short_repr(message)}")
            continue
        for key in message.keys() - _MESSAGE_KEYS:
            problems.add(number, f"{where}.{key}", "unsupported key (only role, content and "
                         "name are read)")
        role = message.get("role")
        text = _content(message.get("content"), number, where, problems)
        if role == "system":
            if text is not None:
                system.append(text)
            continue
        if role not in _SPEAKERS:
            problems.add(number, f"{where}.role", f"role must be system, user or assistant, "
                         f"got {short_repr(role)}")
            continue
        if text is None:
            continue  # already reported; an empty-text error on top would be noise
        speaker, turn_role = _SPEAKERS[role]
        turns.append({"id": f"t{len(turns) + 1}", "speaker": message.get("name", speaker),
                      "role": turn_role.value, "text": text})
        origins.append(Origin(number, _NAMES, prefix=f"{where}."))
    if not turns and len(problems) == before:
        problems.add(number, "messages", "no user or assistant messages")
    if system:
        metadata = {**metadata, "system_prompt": "\n\n".join(system)}
    if not turns:
        return None
    data = {"id": conv_id, "turns": turns, "metadata": metadata}
    return validate_conversation(data, problems, number, turns=origins)


def _content(content: Any, number: int, where: str, problems: Problems) -> str | None:
    """Message text; the list-of-parts form is accepted when every part is text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) == len(content) and all(isinstance(t, str) for t in texts):
            return "".join(texts)
        problems.add(number, f"{where}.content", "only text content parts are supported")
        return None
    problems.add(number, f"{where}.content", "required text is missing" if content is None
                 else f"must be a string, got {short_repr(content)}")
    return None
