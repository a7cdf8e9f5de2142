"""The task set of a training run: resolved from the task registry, checked against the data.

This is the only module of ``convtune.training`` that talks to ``tasks/``
(``tasks.registry``: ``default_registry(intent_labels=...)``, ``.get(name)``,
``load_task_file(path)``). Everything else sees plain :class:`tasks.base.Task`
objects, so tests can substitute their own tasks with ``resolve_tasks``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convtune.conversation import Conversation
from convtune.errors import ConvtuneError, DataValidationError, Problem
from convtune.training.config import TasksSection
from tasks.base import label_fields_of  # noqa: F401 - the trainer reads label fields through here


def _registry_names(registry: Any) -> list[str]:
    for attr in ("names", "task_names"):
        v = getattr(registry, attr, None)
        if callable(v):
            v = v()
        if v is not None:
            return [str(x) for x in v]
    tasks = getattr(registry, "tasks", None)
    if isinstance(tasks, dict):
        return sorted(tasks)
    try:
        return sorted(getattr(t, "name", str(t)) for t in registry)
    except TypeError:
        return []


def _error_text(exc: ConvtuneError) -> str:
    if isinstance(exc, DataValidationError):
        return "; ".join(str(p) for p in exc.problems) or str(exc)
    return str(exc)


def resolve_tasks(cfg: TasksSection, available: Sequence[Any] | None = None) -> tuple[list[Any], list[str]]:
    """Selected tasks in ``cfg.names`` order, and config problems (unknown names, bad task files).

    Tasks come from ``tasks.registry.default_registry(intent_labels=...)`` plus
    the custom task files (``registry.register_file``), or, when ``available``
    is given (programmatic use, tests), from those Task objects plus the files.
    """
    problems: list[str] = []
    try:
        from tasks.registry import TaskRegistry, default_registry
    except ImportError as exc:  # the registry ships with convtune: this is an install problem
        return [], [f"tasks: the task registry cannot be imported ({exc})"]
    try:
        if available is None:
            registry = default_registry(intent_labels=cfg.intent_labels)
        else:
            registry = TaskRegistry(available)
    except ConvtuneError as exc:
        return [], [f"tasks.intent_labels: {_error_text(exc)}"]
    for i, path in enumerate(cfg.files):
        try:
            registry.register_file(Path(path))
        except ConvtuneError as exc:
            problems.append(f"tasks.files.{i}: {_error_text(exc)}")
        except OSError as exc:
            problems.append(f"tasks.files.{i}: {path}: cannot read ({exc})")

    resolved, unknown = [], []
    for name in cfg.names:
        try:
            resolved.append(registry.get(name))
        except (KeyError, ConvtuneError):
            unknown.append(name)
    if unknown:
        problems.append(
            f"tasks.names: unknown task{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(_registry_names(registry)) or '(none)'} (add custom tasks with tasks.files)"
        )
    return resolved, problems


# ---- labels in the data ----------------------------------------------------------------


@dataclass
class LabelCheck:
    """What checking a dataset's labels against the task set found."""

    problems: list[Problem] = field(default_factory=list)
    pairs: dict[str, int] = field(default_factory=dict)  # task -> labelled conversations


def label_problems(task: Any, label: Any) -> list[str]:
    """``task.validate_label`` (schema), then ``task.round_trip_problem`` (the rendered target
    parses back to the same label), as the registry's own ``check_labels`` does."""
    validate = getattr(task, "validate_label", None)
    msgs: list[str] = []
    if validate is not None:
        try:
            out = validate(label)
        except Exception as exc:  # noqa: BLE001 - a validator that raises reports a problem
            out = [str(exc) or type(exc).__name__]
        if isinstance(out, str):
            out = [out]
        elif out is False:
            out = ["invalid label"]
        elif not isinstance(out, list | tuple):
            out = []
        msgs.extend(str(m) for m in out)
    if not msgs:
        round_trip = getattr(task, "round_trip_problem", None)
        if round_trip is not None:
            msg = round_trip(label)
            if msg:
                msgs.append(msg)
        else:
            try:
                task.render_target(label)
            except Exception as exc:  # noqa: BLE001
                msgs.append(f"cannot be rendered as a target: {exc}")
    return msgs


def check_labels(convs: Sequence[Conversation], tasks: Sequence[Any], source: str,
                 *, max_problems: int = 200) -> LabelCheck:
    """Validate every selected task's label in every conversation (nothing is dropped silently)."""
    check = LabelCheck(pairs={t.name: 0 for t in tasks})
    for pos, conv in enumerate(convs, start=1):
        for task in tasks:
            if not task.has_label(conv):
                continue
            label = task.gold(conv)
            msgs = label_problems(task, label)
            for m in msgs:
                if len(check.problems) < max_problems:
                    check.problems.append(Problem(source, pos, f"labels.{task.name}",
                                                  f"conversation {conv.id!r}: {m}"))
            if not msgs:
                check.pairs[task.name] += 1
    return check


def task_record(task: Any) -> dict[str, Any]:
    """What ``tasks.json`` stores about one task."""
    labels = getattr(task, "labels", None)
    return {
        "name": task.name,
        "kind": getattr(task, "kind", "text"),
        "instruction": task.instruction,
        "labels": list(labels) if labels is not None else None,
        "primary_metric": getattr(task, "primary_metric", None),
    }
