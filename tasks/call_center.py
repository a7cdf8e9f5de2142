"""Further call-center tasks: ``topics``, ``entities``, ``questions``, ``follow_ups``.

The sample data has no gold labels for these; they apply to any conversation
whose ``labels`` carry them. Targets are canonical one-line JSON lists:

* topics:      ``["roaming charges", "refund"]``
* entities:    ``[{"type": "amount", "text": "$45"}, {"type": "plan", "text": "Unlimited Plus"}]``
* questions:   ``[{"text": "Why was I charged twice?", "answered": true}]``
* follow_ups:  ``["Check that the credit posts on the next statement"]``
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictBool, create_model

from convtune.errors import ConfigError
from convtune.pii import find_pii
from tasks.base import Parsed
from tasks.lists import CleanStr, ListTask, StringListTask, lower_keys
from tasks.metrics import normalize_label, score_lists, token_set_similarity

#: Business entities worth extracting; personal data (names, phones, cards ...) is not one of them.
ENTITY_TYPES: tuple[str, ...] = (
    "product", "plan", "amount", "date", "order_number", "flight_number", "reference_number",
)
_TRUE = frozenset({"true", "yes", "y", "1"})
_FALSE = frozenset({"false", "no", "n", "0"})


class TopicsTask(StringListTask):
    name = "topics"
    instruction = (
        "List the main topics of the conversation as a JSON list of short strings "
        "(1-4 words each), most important first."
    )


class FollowUpsTask(StringListTask):
    name = "follow_ups"
    instruction = (
        "List the follow-up actions the company should take after this conversation, as a JSON list "
        "of short imperative strings. Answer [] if none are needed."
    )


class Question(BaseModel):
    """A question the customer asked and whether the agent answered it."""

    model_config = ConfigDict(extra="forbid")

    text: CleanStr
    answered: StrictBool


class QuestionsTask(ListTask):
    name = "questions"
    instruction = (
        'List the questions the customer asked as a JSON list of {"text": "<question>", '
        '"answered": true|false} (answered: the agent answered it). Answer [] if none.'
    )
    item_type = Question
    item_keys = frozenset({"text", "answered"})

    def prepare_item(self, item: Any) -> Any:
        item = lower_keys(item, ("text", "answered"))
        if isinstance(item, dict) and isinstance(item.get("answered"), str):
            word = item["answered"].strip().lower()
            item["answered"] = True if word in _TRUE else False if word in _FALSE else item["answered"]
        return item

    def attributes(self) -> dict[str, Callable[[Any, Any], bool]]:
        return {"answered": lambda g, p: g["answered"] == p["answered"]}


class EntitiesTask(ListTask):
    """Business entities with a type from ``entity_types``; matched on type and fuzzy text."""

    name = "entities"
    default_threshold = 0.6  # short strings: "March 3" must not match "March 5" (0.5)
    item_keys = frozenset({"type", "text"})

    def __init__(self, name: str | None = None, instruction: str | None = None, *,
                 entity_types: Sequence[str] = ENTITY_TYPES, match_threshold: float | None = None):
        types = tuple(entity_types)
        if len(types) < 1 or len(set(types)) != len(types) or any(normalize_label(t) != t for t in types):
            raise ConfigError(f"entity types must be distinct lower_snake_case names, got {list(types)}")
        self.entity_types = types
        self.item_type = create_model(
            "Entity", __config__=ConfigDict(extra="forbid"),
            type=(Literal[types], ...), text=(CleanStr, ...),
        )
        if instruction is None:
            instruction = (
                'List the business entities mentioned as a JSON list of {"type": t, "text": "<as said>"}, '
                f"t one of: {', '.join(types)}. No personal data. Answer [] if none."
            )
        super().__init__(name, instruction, match_threshold=match_threshold)

    def prepare_item(self, item: Any) -> Any:
        item = lower_keys(item, ("type", "text"))
        if isinstance(item, dict) and isinstance(item.get("type"), str):
            item["type"] = normalize_label(item["type"])
        return item

    def similarity(self, gold: Any, pred: Any) -> float:
        if gold["type"] != pred["type"]:
            return 0.0
        return token_set_similarity(gold["text"], pred["text"])

    def item_problems(self, item: Any) -> list[str]:
        found = sorted({str(s.entity) for s in find_pii(item["text"])})
        return [f"text {item['text']!r} looks like personal data ({', '.join(found)})"] if found else []

    def score(self, predictions: Sequence[Parsed], golds: Sequence[Any]) -> dict[str, float]:
        out = super().score(predictions, golds)
        untyped = score_lists(
            predictions, [list(g) for g in golds], threshold=self.match_threshold,
            similarity=lambda g, p: token_set_similarity(g["text"], p["text"]),
        )
        out["untyped_f1"] = untyped["f1"]
        return out
