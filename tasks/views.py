"""What text a label task's discriminative predictor reads from a conversation.

A conversation-level label (intent, sentiment at the start, ...) is carried by
some turns more than others: the reason for a call is in the customer's first
turns, how the customer feels at the end is in their last turns. Each label
field of a task (:class:`tasks.base.LabelField`) names one of these views; the
encoder head and k-NN predictors embed that text, nothing else.

=================  ==============================================================
view               text
=================  ==============================================================
``customer_first`` the customer's first 3 turns
``customer_start`` the customer's first 2 turns
``customer_end``   the customer's last 2 turns
``customer``       every customer turn (long calls: the first and last 64 words)
``all``            the whole transcript, ``Speaker: text`` per line (same cut)
=================  ==============================================================

Conversations without a customer turn (a one-speaker chat, a role never set)
fall back to every turn whose role is not ``agent``, then to every turn, so a
view is never empty.
"""

from __future__ import annotations

from collections.abc import Callable

from convtune.conversation import Conversation

#: Words kept from each end of a long view (MiniLM reads at most 256 word pieces).
EDGE_WORDS = 64


def _customer_texts(conv: Conversation) -> list[str]:
    for keep in (lambda t: t.role.value == "customer", lambda t: t.role.value != "agent", lambda t: True):
        texts = [t.text for t in conv.turns if keep(t)]
        if texts:
            return texts
    return [""]


def _edges(text: str, words: int = EDGE_WORDS) -> str:
    parts = text.split()
    if len(parts) <= 2 * words:
        return text
    return " ".join(parts[:words] + ["..."] + parts[-words:])


VIEWS: dict[str, tuple[str, Callable[[Conversation], str]]] = {
    "customer_first": ("the customer's first 3 turns", lambda c: _edges(" ".join(_customer_texts(c)[:3]))),
    "customer_start": ("the customer's first 2 turns", lambda c: _edges(" ".join(_customer_texts(c)[:2]))),
    "customer_end": ("the customer's last 2 turns", lambda c: _edges(" ".join(_customer_texts(c)[-2:]))),
    "customer": ("every customer turn", lambda c: _edges(" ".join(_customer_texts(c)))),
    "all": ("the whole transcript", lambda c: _edges("\n".join(f"{t.speaker}: {t.text}" for t in c.turns))),
}


def view_text(view: str, conv: Conversation) -> str:
    """The text ``view`` selects from ``conv`` (see the module table)."""
    try:
        return VIEWS[view][1](conv)
    except KeyError:
        raise ValueError(f"unknown view {view!r}; known: {', '.join(VIEWS)}") from None


def describe(view: str) -> str:
    return VIEWS[view][0]
