"""``sentiment``: the customer's sentiment overall, at the start and at the end.

Target (canonical, one line)::

    {"overall": "negative", "start": "negative", "end": "neutral"}

Metrics: ``overall_accuracy``, ``overall_macro_f1`` (over the three classes),
``trajectory_accuracy`` (start and end both right).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter

from tasks.base import LabelField, Parsed, Task, check_lengths
from tasks.lists import lower_keys
from tasks.metrics import accuracy, failure_rate, macro_f1
from tasks.parsing import dumps, parse_structured, validation_problems

SENTIMENTS: tuple[str, ...] = ("negative", "neutral", "positive")
Sentiment = Literal["negative", "neutral", "positive"]


class SentimentLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overall: Sentiment
    start: Sentiment
    end: Sentiment


def _prepare(value: Any) -> Any:
    value = lower_keys(value, ("overall", "start", "end"))
    if isinstance(value, dict):
        value = {k: v.lower() if isinstance(v, str) else v for k, v in value.items()}
    return value


class SentimentTask(Task):
    name = "sentiment"
    instruction = (
        "Rate the customer's sentiment overall, at the start and at the end, as JSON "
        '{"overall": s, "start": s, "end": s} with each s "negative", "neutral" or "positive".'
    )
    kind = "structured"
    primary_metric = "overall_macro_f1"

    def __init__(self) -> None:
        self._adapter = TypeAdapter(SentimentLabel)

    def render_target(self, label: Any) -> str:
        return dumps(self._adapter.dump_python(self._adapter.validate_python(label), mode="json"))

    def _parse(self, text: str) -> Parsed:
        return parse_structured(text, self._adapter, expect_list=False, prepare=_prepare)

    def parse(self, text: str) -> Parsed:
        return self.safe_parse(text, self._parse)

    #: The view each part of the label is predicted from by an encoder head / k-NN.
    views = {"overall": "customer", "start": "customer_start", "end": "customer_end"}

    def label_fields(self) -> list[LabelField]:
        return [LabelField(f"{self.name}.{part}", SENTIMENTS, view, "macro_f1")
                for part, view in self.views.items()]

    def field_values(self, label: Any) -> dict[str, str]:
        return {f"{self.name}.{part}": label[part] for part in self.views}

    def from_fields(self, values: dict[str, str]) -> Any:
        return {part: values[f"{self.name}.{part}"] for part in self.views}

    def output_schema(self) -> dict[str, Any]:
        return self._adapter.json_schema()

    def validate_label(self, label: Any) -> list[str]:
        if label is None:
            return ["label is missing (null)"]
        return validation_problems(self._adapter, label)

    def score(self, predictions: Sequence[Parsed], golds: Sequence[Any]) -> dict[str, float]:
        check_lengths(predictions, golds)
        preds = [p.value if p.ok else None for p in predictions]
        overall = [p["overall"] if p else None for p in preds]
        gold_overall = [g["overall"] for g in golds]
        trajectory = [(g["start"], g["end"]) for g in golds]
        pred_traj = [(p["start"], p["end"]) if p else None for p in preds]
        return {
            "n": float(len(golds)),
            "parse_failure_rate": failure_rate(predictions),
            "overall_accuracy": accuracy(gold_overall, overall),
            "overall_macro_f1": macro_f1(gold_overall, overall, SENTIMENTS),
            "trajectory_accuracy": accuracy(trajectory, pred_traj),
        }
