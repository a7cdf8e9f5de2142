"""List-valued tasks: a JSON list of strings or of small objects, scored by fuzzy F1.

:class:`ListTask` holds everything shared: canonical rendering, tolerant
parsing into a pydantic schema, label validation and the F1 metric.
Subclasses name the item schema, how two items are compared and which item
attributes get an accuracy on matched pairs. Parsing drops blank and exactly
repeated items (a small model's decoding loop, never two distinct facts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, StringConstraints, TypeAdapter

from tasks.base import Parsed, Task, check_lengths
from tasks.metrics import score_lists, token_set_similarity
from tasks.parsing import dumps, parse_structured, validation_problems


def _not_padded(v: str) -> str:
    if v != v.strip():
        raise ValueError("has leading or trailing whitespace")
    return v


#: A non-empty string without surrounding whitespace (gold labels are stored clean).
CleanStr = Annotated[str, StringConstraints(min_length=1), AfterValidator(_not_padded)]


def lower_keys(item: Any, known: Sequence[str]) -> Any:
    """Lower-case an item's keys and keep only the schema's (tolerates "Text", extra keys)."""
    if not isinstance(item, dict):
        return item
    out = {}
    for k, v in item.items():
        key = str(k).strip().lower()
        if key in known and key not in out:
            out[key] = v.strip() if isinstance(v, str) else v
    return out


class ListTask(Task):
    """A JSON list of items (``item_type``: a pydantic model or a string type).

    ``parse`` returns plain JSON values in the schema's key order, so a parsed
    prediction compares equal to a gold label. ``match_threshold`` is the
    minimum :meth:`similarity` for a predicted item to count as a gold item.
    """

    kind = "structured"
    primary_metric = "f1"
    item_type: Any = CleanStr
    item_keys: frozenset[str] = frozenset()  # keys making a lone object "clearly an item"
    default_threshold: float = 0.5
    #: Guided decoding bounds (not label validation): most items and characters per string.
    max_items: int = 8
    max_string_chars: int = 200

    def __init__(self, name: str | None = None, instruction: str | None = None, *,
                 match_threshold: float | None = None):
        if name is not None:
            self.name = name
        if instruction is not None:
            self.instruction = instruction
        self.match_threshold = self.default_threshold if match_threshold is None else match_threshold
        self._adapter = TypeAdapter(list[self.item_type])
        self._wrappers = frozenset({self.name.lower(), "items"})

    # ---- item hooks -------------------------------------------------------------

    def prepare_item(self, item: Any) -> Any:
        """Normalise one decoded item before validation (strings are stripped)."""
        return item.strip() if isinstance(item, str) else item

    def item_text(self, item: Any) -> str:
        return item if isinstance(item, str) else str(item.get("text", ""))

    def similarity(self, gold: Any, pred: Any) -> float:
        return token_set_similarity(self.item_text(gold), self.item_text(pred))

    def attributes(self) -> dict[str, Callable[[Any, Any], bool]]:
        """Item attributes scored on matched pairs, as ``name -> same(gold, pred)``."""
        return {}

    def item_problems(self, item: Any) -> list[str]:
        """Extra checks on one valid gold item (beyond the schema)."""
        return []

    # ---- Task interface ---------------------------------------------------------

    def render_target(self, label: Any) -> str:
        return dumps(self._adapter.dump_python(self._adapter.validate_python(label), mode="json"))

    def _prepare(self, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        items, seen = [], set()
        for x in map(self.prepare_item, value):
            key = repr(x)
            if x != "" and key not in seen:  # a blank item is noise; a repeated one is a decoding loop
                items.append(x)
                seen.add(key)
        return items

    def _parse(self, text: str) -> Parsed:
        return parse_structured(text, self._adapter, expect_list=True, item_keys=self.item_keys,
                                wrapper_keys=self._wrappers, prepare=self._prepare)

    def parse(self, text: str) -> Parsed:
        return self.safe_parse(text, self._parse)

    def output_schema(self) -> dict[str, Any]:
        from convtune.guided import bound_strings

        schema = bound_strings(self._adapter.json_schema(), self.max_string_chars)
        return {**schema, "maxItems": self.max_items}

    def validate_label(self, label: Any) -> list[str]:
        if label is None:
            return ["label is missing (null)"]
        problems = validation_problems(self._adapter, label)
        if not problems:
            for i, item in enumerate(label):
                problems += [f"[{i}]: {msg}" for msg in self.item_problems(item)]
        return problems

    def score(self, predictions: Sequence[Parsed], golds: Sequence[Any]) -> dict[str, float]:
        check_lengths(predictions, golds)
        return score_lists(predictions, [list(g) for g in golds], similarity=self.similarity,
                           threshold=self.match_threshold, attributes=self.attributes())


class StringListTask(ListTask):
    """A JSON list of short strings, e.g. ``["roaming charges", "refund"]``."""
