"""Custom tasks declared in a YAML or JSON file, no Python needed.

A file holds a list of task entries, or ``{"tasks": [...]}``, or one entry::

    tasks:
      - name: escalation_risk          # lower_snake_case, unique
        type: classification           # classification | text | list
        instruction: How likely is this customer to escalate?
        labels: [low, medium, high]    # classification only
        metric: accuracy               # classification: accuracy | macro_f1; text: rouge; list: f1

The output-format sentence is appended to the instruction for you:
classification gets "Answer with exactly one label: low, medium, high.", list
gets "Answer with a JSON list of strings, [] if none."; text gets nothing.
List tasks may set ``match_threshold`` (token-set similarity, default 0.5).
Classification tasks may set ``show_labels: false`` (large label sets: the
prompt says "Answer with one label." and a tuned model learns the labels) and
``constrained: true`` (answers are the most likely label of the set), and
``reads`` (what an encoder-head predictor reads: ``customer`` (default),
``customer_first``, ``customer_start``, ``customer_end`` or ``all``; see
:mod:`tasks.views`).

Every problem in the file is reported at once (:class:`DataValidationError`
with file, line for YAML, field and entry name); a missing or unreadable file
is a :class:`ConfigError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from convtune.errors import ConfigError, DataValidationError, Problem
from tasks.base import Task
from tasks.classification import ClassificationTask, label_set_problems
from tasks.lists import StringListTask
from tasks.text import TextTask
from tasks.views import VIEWS

LIST_FORMAT = "Answer with a JSON list of strings, [] if none."
METRICS = {"classification": ("accuracy", "macro_f1"), "text": ("rouge",), "list": ("f1",)}
_TOP_KEYS = frozenset({"tasks"})


class TaskSpec(BaseModel):
    """One entry of a task file (field-level checks; cross-field checks are in ``_cross_checks``)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    instruction: str = Field(min_length=1, max_length=1000)
    type: Literal["classification", "text", "list"]
    labels: list[str] | None = None
    metric: Literal["accuracy", "macro_f1", "rouge", "f1"] | None = None
    match_threshold: float | None = Field(default=None, gt=0, le=1)
    show_labels: bool | None = None  # classification: list the labels in the prompt (default true)
    constrained: bool | None = None  # classification: decode constrained to the labels (default false)
    reads: str | None = None  # classification: what an encoder head reads (tasks.views; default customer)


def _cross_checks(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, message) problems between fields, checked on whatever is well-typed."""
    out: list[tuple[str, str]] = []
    kind = raw.get("type")
    labels = raw.get("labels")
    if kind == "classification":
        if labels is None:
            out.append(("labels", "a classification task needs labels"))
        elif isinstance(labels, list):
            out += [("labels", msg) for msg in label_set_problems(labels)]
    elif kind in METRICS and labels is not None:
        out.append(("labels", f"only classification tasks have labels, not {kind} tasks"))
    metric = raw.get("metric")
    known = {m for ms in METRICS.values() for m in ms}
    if kind in METRICS and metric in known and metric not in METRICS[kind]:
        use = " or ".join(METRICS[kind])
        out.append(("metric", f"{metric!r} does not apply to a {kind} task (use {use})"))
    if kind in METRICS and kind != "list" and raw.get("match_threshold") is not None:
        out.append(("match_threshold", "only list tasks have a match_threshold"))
    reads = raw.get("reads")
    if reads is not None and reads not in VIEWS:
        out.append(("reads", f"unknown view {reads!r}; one of {', '.join(VIEWS)}"))
    for key in ("show_labels", "constrained", "reads"):
        if kind in METRICS and kind != "classification" and raw.get(key) is not None:
            out.append((key, f"only classification tasks have {key}"))
    return out


def build_task(spec: TaskSpec) -> Task:
    """The task object for a validated entry."""
    if spec.type == "classification":
        return ClassificationTask(spec.name, spec.instruction, spec.labels or (),
                                  primary_metric=spec.metric or "accuracy",
                                  show_labels=spec.show_labels is not False,
                                  constrained=bool(spec.constrained),
                                  reads=spec.reads or "customer")
    if spec.type == "text":
        return TextTask(spec.name, spec.instruction)
    return StringListTask(spec.name, f"{spec.instruction} {LIST_FORMAT}",
                          match_threshold=spec.match_threshold)


def _yaml_lines(text: str) -> dict[tuple[Any, ...], int]:
    """1-based line of each entry ``(i,)`` and each entry key ``(i, key)`` in a YAML file."""
    lines: dict[tuple[Any, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines
    seq = root
    if isinstance(root, yaml.MappingNode):
        seq = next((v for k, v in root.value if getattr(k, "value", None) == "tasks"), root)
    if isinstance(seq, yaml.SequenceNode):
        items = seq.value
    else:
        items = [root] if isinstance(root, yaml.MappingNode) else []
    for i, node in enumerate(items):
        lines[(i,)] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for k, _ in node.value:
                lines[(i, getattr(k, "value", None))] = k.start_mark.line + 1
    return lines


def _read(path: Path) -> tuple[Any, dict[tuple[Any, ...], int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"task file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read task file {path}: {exc}") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text), {}
        except json.JSONDecodeError as exc:
            problem = Problem(str(path), exc.lineno, None, f"invalid JSON: {exc.msg}")
            raise DataValidationError([problem]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        msg = getattr(exc, "problem", None) or str(exc)
        raise DataValidationError([Problem(str(path), line, None, f"invalid YAML: {msg}")]) from None
    return data, _yaml_lines(text)


def _entries(data: Any, file: str) -> tuple[list[Any], list[Problem]]:
    if isinstance(data, list):
        return data, []
    if isinstance(data, dict) and "tasks" in data:
        extra = sorted(set(map(str, data)) - _TOP_KEYS)
        problems = [Problem(file, None, k, "unknown top-level key (expected only 'tasks')") for k in extra]
        if not isinstance(data["tasks"], list):
            return [], problems + [Problem(file, None, "tasks", "'tasks' must be a list of task entries")]
        return data["tasks"], problems
    if isinstance(data, dict) and "name" in data:
        return [data], []
    return [], [Problem(file, None, None, "expected a list of task entries or a mapping with 'tasks'")]


def load_task_file(path: str | Path, *, reserved: Iterable[str] = ()) -> list[Task]:
    """Tasks declared in a YAML (``.yaml``/``.yml``) or JSON (``.json``) file.

    ``reserved`` names (tasks already registered) count as clashes.

    Raises:
        ConfigError: the file is missing or unreadable.
        DataValidationError: listing every problem in the file.
    """
    path = Path(path)
    file = str(path)
    data, lines = _read(path)
    entries, problems = _entries(data, file)
    if not entries and not problems:
        problems.append(Problem(file, None, None, "the file declares no tasks"))
    taken = set(reserved)
    seen: dict[str, int] = {}
    specs: list[TaskSpec] = []
    for i, raw in enumerate(entries):
        if not isinstance(raw, dict):
            problems.append(Problem(file, lines.get((i,)), f"tasks.{i}", "a task entry must be a mapping"))
            continue
        label = f"task {raw['name']!r}: " if isinstance(raw.get("name"), str) else ""
        found: list[tuple[str, str]] = []
        try:
            specs.append(TaskSpec.model_validate(raw))
        except ValidationError as exc:
            for err in exc.errors():
                msg = err["msg"]
                if err["type"] == "string_pattern_mismatch":
                    msg = "must be lower_snake_case: a-z, 0-9, _ (starting with a letter, at most 64)"
                found.append((".".join(map(str, err["loc"])), msg))
        found += _cross_checks(raw)
        name = raw.get("name")
        if isinstance(name, str):
            if name in seen:
                found.append(("name", f"duplicate task name (also entry {seen[name]})"))
            elif name in taken:
                found.append(("name", "a task with this name is already registered"))
            seen.setdefault(name, i)
        for field, msg in found:
            line = lines.get((i, field.split(".")[0]), lines.get((i,)))
            problems.append(Problem(file, line, f"tasks.{i}.{field}" if field else f"tasks.{i}", label + msg))
    if problems:
        raise DataValidationError(problems)
    return [build_task(s) for s in specs]
