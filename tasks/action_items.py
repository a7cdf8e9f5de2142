"""``action_items``: commitments made in the conversation, as a JSON list.

Target (canonical, one line)::

    [{"text": "Agent will reverse the $45 charge", "assignee": "agent", "due": null}, ...]

``[]`` when nobody commits to anything. Metric: fuzzy F1 on ``text``
(token-set similarity >= 0.5, greedy one-to-one), plus assignee and due-date
accuracy on the matched pairs.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, WithJsonSchema

from tasks.lists import CleanStr, ListTask, lower_keys
from tasks.metrics import normalize_label

_ISO = re.compile(r"\d{4}-\d{2}-\d{2}")
_NO_DATE = frozenset({"", "none", "null", "n/a", "na", "tbd", "unknown"})


def _iso_date(v: str | None) -> str | None:
    if v is None:
        return v
    if not _ISO.fullmatch(v):
        raise ValueError(f"{v!r} is not an ISO date (YYYY-MM-DD) or null")
    dt.date.fromisoformat(v)  # raises on 2026-02-30
    return v


# The schema carries the date pattern so guided decoding writes "YYYY-MM-DD" or null.
IsoDate = Annotated[
    str | None,
    AfterValidator(_iso_date),
    WithJsonSchema({"anyOf": [{"type": "string", "pattern": r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$"},
                              {"type": "null"}]}),
]


class ActionItem(BaseModel):
    """One commitment: who will do what, by when."""

    model_config = ConfigDict(extra="forbid")

    text: CleanStr
    assignee: CleanStr
    due: IsoDate


class ActionItemsTask(ListTask):
    name = "action_items"
    instruction = (
        'List the action items (commitments made in the conversation) as a JSON list of '
        '{"text": "<who> will <do what>", "assignee": "agent"|"customer"|<other>, '
        '"due": "YYYY-MM-DD"|null}. Answer [] if none.'
    )
    item_type = ActionItem
    item_keys = frozenset({"text", "assignee"})

    def prepare_item(self, item: Any) -> Any:
        item = lower_keys(item, ("text", "assignee", "due"))
        if isinstance(item, dict):
            due = item.get("due")
            if due is None or (isinstance(due, str) and due.strip().lower() in _NO_DATE):
                item["due"] = None
            elif isinstance(due, str) and _ISO.match(due.strip()):
                item["due"] = due.strip()[:10]  # "2026-03-06T17:00" -> the date
        return item

    def attributes(self) -> dict[str, Callable[[Any, Any], bool]]:
        return {
            "assignee": lambda g, p: normalize_label(g["assignee"]) == normalize_label(p["assignee"]),
            "due": lambda g, p: g.get("due") == p.get("due"),
        }
