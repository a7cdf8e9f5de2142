"""Cheap extractive summary baselines: summaries made of transcript turns, no model.

Each baseline is a pure function ``Conversation -> str`` that picks whole turns
and joins their texts with single spaces, in conversation order, without
speaker labels. A turn picked twice (e.g. a one-turn conversation) is used once.

* ``lead-1``, ``lead-2``, ``lead-3``: the first n turns (:func:`lead_n`);
* ``longest-turn``: the longest turn by characters (:func:`longest_turn`);
* ``first-speaker+last-turn``: the first speaker's first turn and the last turn
  of the conversation, the classic DialogSum baseline (:func:`first_speaker_last_turn`);
* ``first-customer+last-agent``: the customer's first turn (the issue) and the
  agent's last turn (the outcome), falling back to the first / last turn when
  no turn has that role (:func:`first_customer_last_agent`).

:data:`EXTRACTIVE_BASELINES` maps those names to the functions;
``convtune.evaluation.baselines.extractive`` picks one on the training set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from convtune.conversation import Conversation, Role, Turn

__all__ = [
    "EXTRACTIVE_BASELINES", "first_customer_last_agent", "first_speaker_last_turn", "lead_n",
    "longest_turn",
]


def _join(conv: Conversation, picked: Sequence[Turn]) -> str:
    """Texts of the picked turns, each once, in conversation order, joined with spaces."""
    ids = {t.id for t in picked}
    return " ".join(t.text.strip() for t in conv.turns if t.id in ids)


def lead_n(conv: Conversation, n: int) -> str:
    """The first ``n`` turns' texts joined with spaces (all turns when there are fewer)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return _join(conv, conv.turns[:n])


def longest_turn(conv: Conversation) -> str:
    """The text of the longest turn by characters (ties: the earliest)."""
    return max(conv.turns, key=lambda t: len(t.text.strip())).text.strip()


def first_speaker_last_turn(conv: Conversation) -> str:
    """The first speaker's first turn (the opening turn) plus the last turn (DialogSum style)."""
    first = next(t for t in conv.turns if t.speaker == conv.turns[0].speaker)
    return _join(conv, [first, conv.turns[-1]])


def first_customer_last_agent(conv: Conversation) -> str:
    """The first customer turn (the issue) plus the last agent turn (the outcome).

    Without a customer turn the first turn is used; without an agent turn, the last turn.
    """
    first = next((t for t in conv.turns if t.role == Role.customer), conv.turns[0])
    last = next((t for t in reversed(conv.turns) if t.role == Role.agent), conv.turns[-1])
    return _join(conv, [first, last])


EXTRACTIVE_BASELINES: dict[str, Callable[[Conversation], str]] = {
    "lead-1": partial(lead_n, n=1),
    "lead-2": partial(lead_n, n=2),
    "lead-3": partial(lead_n, n=3),
    "longest-turn": longest_turn,
    "first-speaker+last-turn": first_speaker_last_turn,
    "first-customer+last-agent": first_customer_last_agent,
}
