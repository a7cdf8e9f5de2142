"""Shared parsing helpers: canonical JSON, tolerant JSON extraction, schema validation.

Every structured task renders its target with :func:`dumps` (the one canonical
form) and reads generations with :func:`parse_structured`, which tolerates what
small models add around JSON (code fences, leading prose, trailing text) but
never guesses content: anything it cannot read unambiguously is a failure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError

from tasks.base import Parsed, failed

_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_+-]*[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_MAX_STARTS = 200  # JSON start positions tried before giving up (bounds the work on junk)
_OPEN = re.compile(r"[\[{]")
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def dumps(value: Any) -> str:
    """The canonical target form of a structured label: one line, ", " and ": " separators."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def strip_fences(text: str) -> str:
    """The content of the first fenced code block, or ``text`` unchanged when there is none."""
    m = _FENCE.search(text)
    return m.group(1).strip() if m else text.strip()


def find_json(text: str) -> tuple[list[tuple[int, Any]], list[int]]:
    """Top-level JSON values in ``text``: ``([(position, value), ...], [positions of "[" that
    open no valid JSON])``.

    The whole (fence-stripped) text is tried first; otherwise it is scanned left
    to right for ``[``/``{`` that open a decodable value, skipping the inside of
    values already found (so a list inside an object is not a separate value).
    Trailing text after a value is ignored. Text that is not valid JSON as a whole
    is first tried with trailing commas removed (``{"a": 1,}``), the one repair
    applied; valid JSON is never rewritten (a ``", }"`` inside a string stays).
    """
    body = strip_fences(text)
    try:
        return [(0, json.loads(body))], []
    except (ValueError, RecursionError):
        pass
    repaired = _TRAILING_COMMA.sub(r"\1", body)
    if repaired != body:
        values, broken = _scan(repaired)
        if values:
            return values, broken
    return _scan(body)


def _scan(body: str) -> tuple[list[tuple[int, Any]], list[int]]:
    try:
        return [(0, json.loads(body))], []
    except (ValueError, RecursionError):
        pass
    decoder = json.JSONDecoder()
    values: list[tuple[int, Any]] = []
    broken: list[int] = []
    pos = 0
    for _ in range(_MAX_STARTS):
        m = _OPEN.search(body, pos)
        if m is None:
            break
        i = m.start()
        try:
            value, end = decoder.raw_decode(body, i)
        except (ValueError, RecursionError):
            if body[i] == "[":
                broken.append(i)
            pos = i + 1
            continue
        values.append((i, value))
        pos = end
    return values, broken


def _error_text(exc: ValidationError) -> str:
    return "schema: " + format_errors(exc)


def format_errors(exc: ValidationError, limit: int = 3) -> str:
    """Pydantic errors as one short line: ``[0].due: Input should be ...; ...``."""
    msgs = error_messages(exc)
    more = len(msgs) - limit
    return "; ".join(msgs[:limit]) + (f" (+{more} more)" if more > 0 else "")


def error_messages(exc: ValidationError) -> list[str]:
    """One ``location: message`` string per pydantic error."""
    out = []
    for err in exc.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        msg = err["msg"].removeprefix("Value error, ")
        out.append(f"{loc or 'value'}: {msg}")
    return out


def validation_problems(adapter: TypeAdapter, value: Any) -> list[str]:
    """Every schema problem of ``value`` as a list of messages (empty = valid)."""
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        return error_messages(exc)
    return []


def _validate_first(candidates: list[Any], adapter: TypeAdapter,
                    prepare: Callable[[Any], Any] | None) -> Parsed:
    """The first candidate that validates, else the first candidate's error."""
    first_error = None
    for value in candidates:
        try:
            model = adapter.validate_python(prepare(value) if prepare else value)
        except ValidationError as exc:
            first_error = first_error or _error_text(exc)
            continue
        return Parsed(adapter.dump_python(model, mode="json"), True)
    return failed(first_error or "no JSON found in the output")


def parse_structured(
    text: str,
    adapter: TypeAdapter,
    *,
    expect_list: bool,
    item_keys: frozenset[str] = frozenset(),
    wrapper_keys: frozenset[str] = frozenset(),
    prepare: Callable[[Any], Any] | None = None,
) -> Parsed:
    """Generated text -> validated, plain-JSON value (``Parsed``); never raises.

    The first top-level JSON value of the expected type that validates wins.
    Where a list is expected and the output holds only objects, the first
    object is accepted when it is clearly meant: an object whose only key is in
    ``wrapper_keys`` (``{"topics": [...]}``) is unwrapped; an object with every
    key in ``item_keys`` is a one-item list, unless a second object follows or
    it sits inside a broken (e.g. truncated) list. ``prepare`` normalises a
    decoded value (key case, "null" dates ...) before schema validation.
    """
    if not text.strip():
        return failed("empty output")
    values, broken = find_json(text)
    if not values:
        return failed("no JSON found in the output")
    want = list if expect_list else dict
    matching = [v for _, v in values if isinstance(v, want)]
    if matching:
        return _validate_first(matching, adapter, prepare)
    if not expect_list:
        return failed(f"expected a JSON object, got {_kind(values[0][1])}")
    objects = [(pos, v) for pos, v in values if isinstance(v, dict)]
    if not objects:
        return failed(f"expected a JSON list, got {_kind(values[0][1])}")
    pos, obj = objects[0]
    if any(b < pos for b in broken):
        return failed("invalid or truncated JSON list")
    keys = {str(k).lower() for k in obj}
    only = next(iter(obj.values()), None)
    if len(obj) == 1 and keys <= wrapper_keys and isinstance(only, list):
        return _validate_first([only], adapter, prepare)
    if item_keys and item_keys <= keys:
        if len(objects) > 1:
            return failed("several separate JSON objects; expected one JSON list")
        return _validate_first([[obj]], adapter, prepare)
    return failed("expected a JSON list, got an object")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else "null")


# ---- free-text helpers ------------------------------------------------------------

_PREFIX = re.compile(r"^\s*(?:\*\*)?\s*([A-Za-z][A-Za-z _-]{0,30}?)\s*(?:\*\*)?\s*[:=]\s*(?:\*\*)?\s*")


def strip_answer_prefix(text: str, words: frozenset[str]) -> str:
    """Drop a leading ``Intent:`` / ``Summary:`` style prefix whose word is in ``words``."""
    m = _PREFIX.match(text)
    if m and m.group(1).strip().lower() in words:
        return text[m.end():]
    return text


def strip_quotes(text: str) -> str:
    """Trim whitespace and wrapping quotes, backticks, asterisks and end punctuation."""
    return text.strip().strip("`*\"'“”‘’ \t\n").rstrip(".!;,").strip()
