"""The conversation data model: the one shape every layer of convtune speaks.

A :class:`Conversation` is a list of speaker-attributed :class:`Turn` objects
plus optional :class:`Metadata` and optional per-task ``labels`` (keyed by task
name; their schema belongs to the task registry in ``tasks/``).

convtune's own JSONL format is exactly ``Conversation.model_dump_json()`` per
line; see the README for the documented schema.
"""

from __future__ import annotations

import datetime as dt
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Role(str, Enum):
    """Who a speaker is in a service conversation."""

    agent = "agent"
    customer = "customer"
    bot = "bot"
    other = "other"


_ROLE_ALIASES = {
    "agent": Role.agent, "rep": Role.agent, "representative": Role.agent, "advisor": Role.agent,
    "support": Role.agent, "supervisor": Role.agent, "assistant": Role.agent, "operator": Role.agent,
    "customer": Role.customer, "caller": Role.customer, "client": Role.customer, "user": Role.customer,
    "patient": Role.customer, "member": Role.customer, "guest": Role.customer, "human": Role.customer,
    "bot": Role.bot, "ivr": Role.bot, "system": Role.bot, "virtual agent": Role.bot,
}


def guess_role(speaker: str) -> Role:
    """Best-effort role from a speaker label ("Agent 2" -> agent, "Caller" -> customer)."""
    key = speaker.strip().strip("#").lower()  # DialogSum writes "#Person1#"
    if key in _ROLE_ALIASES:
        return _ROLE_ALIASES[key]
    first = key.split()[0] if key.split() else ""
    first = first.rstrip("0123456789:#")
    return _ROLE_ALIASES.get(first, Role.other)


class Turn(BaseModel):
    """One speaker turn. Times are seconds from the start of the conversation."""

    # allow_inf_nan=False: JSON 1e999 parses to inf, which would poison analytics.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False)

    id: str = Field(min_length=1, max_length=128)
    speaker: str = Field(min_length=1, max_length=200)
    role: Role = Role.other
    text: str = Field(max_length=100_000)
    start: float | None = Field(default=None, ge=0)
    end: float | None = Field(default=None, ge=0)

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("turn text is empty")
        return v

    @model_validator(mode="after")
    def _times_ordered(self) -> Turn:
        if (self.start is None) != (self.end is None):
            raise ValueError("start and end must be given together")
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ValueError(f"end ({self.end}) is before start ({self.start})")
        return self

    @property
    def timed(self) -> bool:
        return self.start is not None


class Metadata(BaseModel):
    """Optional facts about a conversation. Unknown keys are kept (``extra``)."""

    model_config = ConfigDict(extra="allow")

    channel: str | None = None  # call, chat, email, sms ...
    industry: str | None = None
    tags: list[str] = Field(default_factory=list)
    date: dt.date | None = None


class Conversation(BaseModel):
    """A speaker-attributed conversation with optional metadata and task labels."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id: str = Field(min_length=1, max_length=256)
    turns: list[Turn] = Field(min_length=1)
    metadata: Metadata = Field(default_factory=Metadata)
    labels: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        """Refuse text a tokenizer or database cannot take (lone surrogates, NUL ...: convtune.text)."""
        from convtune.text import first_text_problem

        if isinstance(data, dict) and (found := first_text_problem(data)):
            raise ValueError(f"{found[0]}: {found[1]}")
        return data

    @model_validator(mode="after")
    def _unique_turn_ids(self) -> Conversation:
        seen: set[str] = set()
        for t in self.turns:
            if t.id in seen:
                raise ValueError(f"duplicate turn id {t.id!r}")
            seen.add(t.id)
        return self

    @property
    def timed(self) -> bool:
        """True when every turn carries start/end times."""
        return all(t.timed for t in self.turns)

    @property
    def speakers(self) -> list[str]:
        """Speakers in order of first appearance."""
        return list(dict.fromkeys(t.speaker for t in self.turns))

    def transcript(self) -> str:
        """Plain ``Speaker: text`` lines (the form the renderer shows the model)."""
        return "\n".join(f"{t.speaker}: {t.text}" for t in self.turns)
