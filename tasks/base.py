"""What a conversation task is. Concrete tasks live in sibling modules.

A task is a small declarative object: an instruction (asked as a user turn by
the renderer), how a gold label becomes the target text the model learns,
a tolerant parser from generated text back to the label's shape, and a
metric. Parse failures are returned, counted and reported; never dropped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from convtune.conversation import Conversation


@dataclass(frozen=True)
class Parsed:
    """The result of parsing one generation. ``value`` is None when ``ok`` is False."""

    value: Any
    ok: bool
    error: str | None = None


class Task(ABC):
    """Base class of every task. Subclasses set ``name`` and ``instruction``."""

    name: str
    instruction: str
    # "classification" (one label from ``labels``), "structured" (JSON) or "text".
    kind: str = "text"
    labels: tuple[str, ...] | None = None

    def has_label(self, conv: Conversation) -> bool:
        return self.name in conv.labels and conv.labels[self.name] is not None

    def gold(self, conv: Conversation) -> Any:
        """The gold label of this task for ``conv`` (validated shape)."""
        return conv.labels[self.name]

    @abstractmethod
    def render_target(self, label: Any) -> str:
        """Gold label -> the exact text the model is trained to produce."""

    @abstractmethod
    def parse(self, text: str) -> Parsed:
        """Generated text -> label shape. Tolerant (code fences, extra prose), never raises."""

    @abstractmethod
    def score(self, predictions: Sequence[Parsed], golds: Sequence[Any]) -> dict[str, float]:
        """Metrics over a test set. Always includes ``parse_failure_rate``; failed parses
        count as wrong answers, never as skipped examples."""
