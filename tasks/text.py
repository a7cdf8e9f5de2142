"""Free-text tasks scored with ROUGE. ``summary`` is the built-in one.

Target: the gold text itself. The parser strips code fences and a leading
``Summary:`` label; any non-empty remainder is a valid answer. Metrics: mean
ROUGE-1/2/L F-measure (rouge-score with Porter stemming); a failed parse scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tasks.base import Parsed, Task, check_lengths, failed
from tasks.metrics import failure_rate, rouge
from tasks.parsing import strip_answer_prefix, strip_fences


class TextTask(Task):
    """Free text. ``prefixes`` are label words stripped from the start ("Summary: ...")."""

    kind = "text"
    primary_metric = "rougeL"

    def __init__(self, name: str, instruction: str, *, prefixes: Sequence[str] = ()):
        self.name = name
        self.instruction = instruction
        self._prefixes = frozenset({name.lower(), name.lower().replace("_", " "),
                                    *(p.lower() for p in prefixes)})

    def render_target(self, label: Any) -> str:
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"task {self.name!r} needs a non-empty text label")
        return label.strip()

    def _parse(self, text: str) -> Parsed:
        body = strip_answer_prefix(strip_fences(text), self._prefixes).strip()
        return Parsed(body, True) if body else failed("empty output")

    def parse(self, text: str) -> Parsed:
        return self.safe_parse(text, self._parse)

    def validate_label(self, label: Any) -> list[str]:
        if label is None:
            return ["label is missing (null)"]
        if not isinstance(label, str):
            return [f"expected text, got {type(label).__name__}"]
        if not label.strip():
            return ["text is empty"]
        return []

    def score(self, predictions: Sequence[Parsed], golds: Sequence[Any]) -> dict[str, float]:
        check_lengths(predictions, golds)
        out = {"n": float(len(golds)), "parse_failure_rate": failure_rate(predictions)}
        out.update(rouge([p.value if p.ok else None for p in predictions], list(golds)))
        return out


class SummaryTask(TextTask):
    def __init__(self) -> None:
        super().__init__(
            "summary",
            "Summarize the conversation in 1-3 factual sentences: the customer's issue and the outcome.",
        )


class ChatTask(TextTask):
    """Chat-format training: the model learns every agent (assistant) turn of a conversation,
    given the turns before it (uploads in OpenAI chat format, or conversations without labels).
    Training renders it with :meth:`convtune.renderer.Renderer.conversation_chat`, alone in
    its example; it has no gold answer to evaluate against a prompt."""

    chat = True

    def __init__(self) -> None:
        super().__init__("chat", "Continue the conversation as the agent.")

    def has_label(self, conv: Any) -> bool:
        roles = [t.role.value == "agent" for t in conv.turns]
        return any(a and not all(roles[:i]) for i, a in enumerate(roles))  # an agent turn after a user turn

    def gold(self, conv: Any) -> Any:
        return next((t.text for t in reversed(conv.turns) if t.role.value == "agent"), None)
