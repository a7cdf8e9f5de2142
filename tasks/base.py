"""What a conversation task is. Concrete tasks live in sibling modules.

A task is a small declarative object: an instruction (asked as a user turn by
the renderer), how a gold label becomes the target text the model learns,
a tolerant parser from generated text back to the label's shape, and a
metric. Parse failures are returned, counted and reported; never dropped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from convtune.conversation import Conversation


@dataclass(frozen=True)
class LabelField:
    """One label of a task that a discriminative predictor can answer (an encoder head, k-NN).

    ``key`` is the task name for a classification task and ``task.part`` for a part of a
    structured label (``sentiment.start``); ``view`` names the text the predictor reads
    (:mod:`tasks.views`); ``metric`` (``accuracy`` or ``macro_f1``) is what selection on
    validation maximises for this field.
    """

    key: str
    labels: tuple[str, ...]
    view: str
    metric: str = "accuracy"


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

    # ---- helpers added by the task registry (not abstract; subclasses refine) ----

    #: The headline key of ``score()``'s result (higher is better), for model selection and reports.
    primary_metric: str | None = None

    def label_fields(self) -> list[LabelField]:
        """The labels of this task a discriminative predictor may answer (empty: generated only)."""
        return []

    def field_values(self, label: Any) -> dict[str, str]:
        """A (valid) gold label -> its value per label field key."""
        raise NotImplementedError(f"task {self.name!r} has no label fields")

    def from_fields(self, values: dict[str, str]) -> Any:
        """Values per label field key -> the task's label (inverse of :meth:`field_values`)."""
        raise NotImplementedError(f"task {self.name!r} has no label fields")

    def output_schema(self) -> dict[str, Any] | None:
        """JSON schema of a structured answer, for grammar-guided decoding
        (:mod:`convtune.guided`); None for tasks answered in free text or by label."""
        return None

    def validate_label(self, label: Any) -> list[str]:
        """Problems with a gold label, as short messages (empty list = valid).

        Lets training check every label of a dataset before loading weights.
        Subclasses check the label's schema; this default only rejects None.
        """
        return ["label is missing (null)"] if label is None else []

    def round_trip_problem(self, label: Any) -> str | None:
        """A message when ``parse(render_target(label))`` does not give ``label`` back.

        A label that does not survive its own rendering would teach the model a
        target the parser reads differently; call only on labels that validate.
        """
        try:
            text = self.render_target(label)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            return f"label cannot be rendered: {exc}"
        back = self.parse(text)
        if not back.ok:
            return f"rendered label does not parse back: {back.error}"
        if back.value != label:
            return f"label changes when rendered and parsed back: {label!r} -> {back.value!r}"
        return None

    def safe_parse(self, text: Any, parse: Callable[[str], Parsed]) -> Parsed:
        """Run ``parse`` so that it never raises: non-text input and parser bugs become failures."""
        if not isinstance(text, str):
            return Parsed(None, False, f"expected generated text, got {type(text).__name__}")
        try:
            return parse(text)
        except Exception as exc:  # noqa: BLE001 - the parse contract is "never raises"
            return Parsed(None, False, f"parser error: {type(exc).__name__}: {exc}")


def label_fields_of(task: Any) -> list[LabelField]:
    """``task.label_fields()``, or none for task-like objects that do not define it."""
    fields = getattr(task, "label_fields", None)
    return list(fields()) if callable(fields) else []


def failed(error: str) -> Parsed:
    """A failed parse with its reason."""
    return Parsed(None, False, error)


def check_lengths(predictions: Sequence[Parsed], golds: Sequence[Any]) -> None:
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold labels")
