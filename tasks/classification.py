"""Classification tasks: one label from a fixed set. ``intent`` is the built-in one.

Target: the label string itself (``billing_dispute``). The parser is tolerant,
in this order, and fails when nothing matches or the answer is ambiguous:

1. the first line, without fences, quotes, a JSON wrapper (``{"intent": "x"}``)
   or an ``Intent:`` prefix, equals a label ignoring case, spaces, ``-``/``_``;
2. exactly one label is mentioned in the text as whole words
   ("The intent is billing dispute."); a label inside a longer mentioned
   label does not count;
3. the first line is a near-miss of exactly one label (string similarity
   >= 0.8 and 0.1 ahead of the runner-up; typos such as ``biling_dispute``).

Metrics: ``accuracy`` and ``macro_f1`` (classes present in gold or predictions;
a failed parse is a miss for its gold class).
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Sequence
from typing import Any

from convtune.errors import ConfigError
from tasks.base import LabelField, Parsed, Task, check_lengths, failed
from tasks.metrics import stem_plural, accuracy, failure_rate, macro_f1, normalize_label
from tasks.parsing import strip_answer_prefix, strip_fences, strip_quotes
from tasks.views import VIEWS

#: The default intent label set (examples/data/README.md).
INTENT_LABELS: tuple[str, ...] = (
    "billing_dispute", "payment_arrangement", "cancel_service", "upgrade_or_new_service",
    "technical_issue", "account_access", "update_account_info", "order_status", "return_or_refund",
    "fraud_or_security", "claim_new", "claim_status", "booking_new", "booking_change",
    "product_inquiry", "complaint",
)
_WORD = re.compile(r"[^\W_]+")
_PREFIX_WORDS = frozenset({"intent", "label", "answer", "category", "class", "classification", "result"})


def _words(text: str) -> list[str]:
    return [stem_plural(w) for w in _WORD.findall(text.lower())]


class ClassificationTask(Task):
    """One label out of ``labels``. ``question`` is the instruction without its format line.

    The instruction is ``"<question> Answer with exactly one label: a, b, c."``. With
    ``show_labels=False`` the list is left out (``"... Answer with one label."``): for large
    label sets (Banking77's 77 intents cost ~500 prompt tokens per example) a tuned model
    learns the labels and ``constrained=True`` decoding keeps answers inside the set.
    ``constrained`` is the task's default for evaluation and serving (callers may override).
    ``reads`` is the view (:mod:`tasks.views`) an encoder head or k-NN predictor reads.
    """

    kind = "classification"
    fuzzy_threshold = 0.8
    fuzzy_margin = 0.1

    def __init__(self, name: str, question: str, labels: Sequence[str], *,
                 primary_metric: str = "accuracy", show_labels: bool = True, constrained: bool = False,
                 reads: str = "customer"):
        labels = tuple(labels)
        problems = label_set_problems(labels)
        if problems:
            raise ConfigError(f"task {name!r}: " + "; ".join(problems))
        if primary_metric not in ("accuracy", "macro_f1"):
            raise ConfigError(f"task {name!r}: primary metric must be accuracy or macro_f1")
        if reads not in VIEWS:
            raise ConfigError(f"task {name!r}: reads must be one of {', '.join(VIEWS)}, got {reads!r}")
        self.reads = reads
        self.name = name
        self.question = question.strip()
        self.labels = labels
        self.primary_metric = primary_metric
        self.show_labels = show_labels
        self.constrained_default = constrained
        self.instruction = (f"{question.strip()} Answer with exactly one label: {', '.join(labels)}."
                            if show_labels else f"{question.strip()} Answer with one label.")
        self._by_norm = {normalize_label(x): x for x in labels}
        self._label_words = [(x, _words(x)) for x in labels]
        self._prefixes = _PREFIX_WORDS | {name.lower(), name.lower().replace("_", " ")}

    def with_labels(self, labels: Sequence[str]) -> ClassificationTask:
        """The same task (name, question, options, class) over another label set, e.g. a
        tenant's own intents. Raises ConfigError for a bad label set."""
        new = copy.copy(self)
        ClassificationTask.__init__(new, self.name, self.question, labels, primary_metric=self.primary_metric,
                                    show_labels=self.show_labels, constrained=self.constrained_default,
                                    reads=self.reads)
        return new

    def render_target(self, label: Any) -> str:
        if label not in self.labels:
            raise ValueError(f"{label!r} is not a label of task {self.name!r}")
        return label

    def label_fields(self) -> list[LabelField]:
        return [LabelField(self.name, self.labels, self.reads, self.primary_metric)]

    def field_values(self, label: Any) -> dict[str, str]:
        return {self.name: label}

    def from_fields(self, values: dict[str, str]) -> Any:
        return values[self.name]

    def _mentioned(self, text: str) -> list[str]:
        words = _words(text)
        spans = []
        for label, lw in self._label_words:
            n = len(lw)
            for i in range(len(words) - n + 1):
                if words[i:i + n] == lw:
                    spans.append((i, i + n, label))
        inside = {a for a in spans for b in spans if a != b and b[0] <= a[0] and a[1] <= b[1]
                  and (b[1] - b[0]) > (a[1] - a[0])}
        return list(dict.fromkeys(label for s in spans if s not in inside for label in [s[2]]))

    def _parse(self, text: str) -> Parsed:
        body = strip_fences(text)
        try:  # "billing_dispute" as a JSON string, or {"intent": "billing_dispute"}
            obj = json.loads(body)
            if isinstance(obj, dict) and len(obj) == 1:
                obj = next(iter(obj.values()))
            if isinstance(obj, str):
                body = obj
        except ValueError:
            pass
        body = strip_answer_prefix(body.strip(), self._prefixes)
        lines = [ln for ln in body.splitlines() if ln.strip()]
        if not lines:
            return failed("empty output")
        first = strip_quotes(strip_answer_prefix(lines[0], self._prefixes))
        if normalize_label(first) in self._by_norm:
            return Parsed(self._by_norm[normalize_label(first)], True)
        mentioned = self._mentioned(body)
        if len(mentioned) == 1:
            return Parsed(mentioned[0], True)
        if len(mentioned) > 1:
            return failed(f"ambiguous: mentions {', '.join(mentioned)}")
        if len(first) <= 60:
            target = normalize_label(first)
            ranked = sorted(((difflib.SequenceMatcher(None, target, k).ratio(), v)
                             for k, v in self._by_norm.items()), reverse=True)
            best = ranked[0]
            runner_up = ranked[1][0] if len(ranked) > 1 else 0.0
            if best[0] >= self.fuzzy_threshold and best[0] - runner_up >= self.fuzzy_margin:
                return Parsed(best[1], True)
        return failed(f"no label matches {first[:80]!r}")

    def parse(self, text: str) -> Parsed:
        return self.safe_parse(text, self._parse)

    def validate_label(self, label: Any) -> list[str]:
        if label is None:
            return ["label is missing (null)"]
        if not isinstance(label, str):
            return [f"expected a label string, got {type(label).__name__}"]
        if label in self.labels:
            return []
        near = self._by_norm.get(normalize_label(label))
        hint = f" (did you mean {near!r}?)" if near else ""
        return [f"{label!r} is not one of the {len(self.labels)} labels of {self.name!r}{hint}"]

    def score(self, predictions: Sequence[Parsed], golds: Sequence[Any]) -> dict[str, float]:
        check_lengths(predictions, golds)
        preds = [p.value if p.ok else None for p in predictions]
        return {
            "n": float(len(golds)),
            "parse_failure_rate": failure_rate(predictions),
            "accuracy": accuracy(golds, preds),
            "macro_f1": macro_f1(golds, preds, self.labels),
        }


def label_set_problems(labels: Sequence[Any]) -> list[str]:
    """What is wrong with a label set (empty list = fine)."""
    problems = []
    if len(labels) < 2:
        problems.append(f"needs at least 2 labels, got {len(labels)}")
    bad = [x for x in labels if not isinstance(x, str) or not _WORD.search(x) or x != x.strip()]
    if bad:
        problems.append(f"labels must be strings with a letter or digit and no surrounding spaces: {bad!r}")
    seen: dict[str, str] = {}
    for x in labels:
        if isinstance(x, str) and x.strip():
            key = normalize_label(x)
            if key in seen:
                problems.append(f"labels {seen[key]!r} and {x!r} are the same label (ignoring case/spacing)")
            seen.setdefault(key, x)
    return problems


class IntentTask(ClassificationTask):
    """The customer's main reason for contact; the label set is configurable per dataset."""

    def __init__(self, labels: Sequence[str] | None = None):
        super().__init__(
            "intent",
            "What is the customer's main reason for contact?",
            INTENT_LABELS if labels is None else labels,
            primary_metric="macro_f1",
            reads="customer_first",
        )
