"""The task set of a training run: resolved from the task registry, checked against the data.

This is the only module of ``convtune.training`` that talks to ``tasks/``
(``tasks.registry``: ``default_registry(intent_labels=...)``, ``.get(name)``,
``load_task_file(path)``). Everything else sees plain :class:`tasks.base.Task`
objects, so tests can substitute their own tasks with ``resolve_tasks``.

Label sets of classification tasks (``tasks.labels``, else the data's labels:
:func:`apply_data_labels`) are resolved here too, the same way for
``convtune train`` and the jobs API (:func:`resolve_label_sets`).
"""

from __future__ import annotations

import re
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
            registry = default_registry(intent_labels=cfg.label_set("intent"))
        else:
            registry = TaskRegistry(available)
    except ConvtuneError as exc:
        key = "tasks.labels.intent" if "intent" in cfg.labels else "tasks.intent_labels"
        return [], [f"{key}: {_error_text(exc)}"]
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
    for i, task in enumerate(resolved):  # label sets given in the config (a task file's tasks, tests' tasks)
        wanted = cfg.label_set(task.name)
        if wanted is None or tuple(wanted) == tuple(getattr(task, "labels", None) or ()):
            continue
        if getattr(task, "kind", None) != "classification" or not hasattr(task, "with_labels"):
            problems.append(f"tasks.labels.{task.name}: {task.name!r} is not a classification task whose "
                            "label set can be changed (its answers have a fixed form); remove it from "
                            "tasks.labels")
            continue
        try:
            resolved[i] = task.with_labels(wanted)
        except ConvtuneError as exc:
            problems.append(f"tasks.labels.{task.name}: {_error_text(exc)}")
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
            if not task.has_label(conv) or getattr(task, "labels_reported", False):
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


# ---- label sets from the data ----------------------------------------------------------------

_LABEL_WORD = re.compile(r"[^\W_]+")


@dataclass
class SeenLabel:
    """One label value of a task in the data: how many conversations carry it, and the first."""

    count: int = 0
    first: str | None = None  # "conversation 'c004' (train.jsonl:4)"


@dataclass
class LabelSets:
    """What :func:`resolve_label_sets` decided."""

    tasks: list[Any]  # the selected tasks, classification tasks over their resolved label sets
    labels: dict[str, list[str]] = field(default_factory=dict)  # every classification task's set
    notes: list[str] = field(default_factory=list)  # label sets taken from the data, said once each
    problems: list[tuple[str, str]] = field(default_factory=list)  # (task name, message with what to do)


def is_label_set_task(task: Any) -> bool:
    """A classification task with a label set (intent, a task file's classification tasks)."""
    return getattr(task, "kind", None) == "classification" and getattr(task, "labels", None) is not None


def labels_in_data(splits: Sequence[tuple[Sequence[Conversation], Any]],
                   names: Sequence[str]) -> dict[str, dict[str, SeenLabel]]:
    """task name -> label -> :class:`SeenLabel`, over ``(conversations, source)`` splits (string
    labels only: anything else is for ``check_labels`` to report)."""
    seen: dict[str, dict[str, SeenLabel]] = {n: {} for n in names}
    for convs, source in splits:
        where = Path(str(source)).name if source is not None else "data"
        for pos, conv in enumerate(convs, start=1):
            for name, by_label in seen.items():
                value = conv.labels.get(name)
                if isinstance(value, str):
                    s = by_label.setdefault(value, SeenLabel())
                    s.count += 1
                    if s.first is None:
                        s.first = f"conversation {conv.id!r} ({where}:{pos})"
    return seen


def _same_label_key(label: str) -> str:
    """Labels with the same key are one label spelled differently (case, spacing, -/_, plural s)."""
    from tasks.metrics import stem_plural

    return "_".join(stem_plural(w) for w in _LABEL_WORD.findall(label.lower()))


def _listing(items: Sequence[str], most: int = 12) -> str:
    shown = ", ".join(items[:most])
    return shown + (f", ... ({len(items)} in all)" if len(items) > most else "")


def choose_label_set(task: Any, seen: dict[str, SeenLabel], *, names_key: str = "tasks.names",
                     labels_key: str = "tasks.labels") -> tuple[list[str] | None, list[str], str | None]:
    """``(label set, problems, note)`` for one classification task from the labels in its data.

    The task keeps its own set (``None``) when the data has no label for it or every label is in
    the set; otherwise the set is the data's labels, sorted, with a note saying so. Problems: fewer
    than 2 labels, labels that are one label spelled differently, labels no prompt can show.
    ``names_key``/``labels_key`` name the settings the messages point to (the jobs API's differ).
    """
    default = tuple(task.labels)
    if not seen or all(lab in default for lab in seen) or not hasattr(task, "with_labels"):
        return None, [], None  # (a task that cannot change its set: check_labels reports outsiders)
    name = task.name
    found = sorted(seen)
    problems: list[str] = []
    if len(found) < 2:
        lab = found[0]
        n = seen[lab].count
        convs = f"{n} conversation{'s' if n != 1 else ''}"
        problems.append(f"needs at least 2 labels; found only {lab!r} in the data ({convs}): add "
                        f"conversations with other labels or drop the task with {names_key}")
    groups: dict[str, list[str]] = {}
    for lab in found:
        groups.setdefault(_same_label_key(lab), []).append(lab)
    for key, group in groups.items():
        if len(group) < 2 or not key:
            continue
        keep = max(group, key=lambda x: (x in default, seen[x].count, x == x.lower()))
        desc = "; ".join(f"{x!r} in {seen[x].count} conversation{'s' if seen[x].count != 1 else ''}"
                         + (f", first {seen[x].first}" if seen[x].first else "") for x in group)
        problems.append(
            f"labels that look like one label spelled differently ({desc}): use one spelling in the data "
            f"(e.g. {keep!r}), or give the label set with {labels_key}.{name}")
    bad = [x for x in found if x != x.strip() or not _LABEL_WORD.search(x)]
    if bad:
        problems.append(f"labels must have a letter or digit and no surrounding spaces: "
                        f"{', '.join(map(repr, bad[:5]))}; fix them in the data")
    if problems:
        return None, problems, None
    outside = [x for x in found if x not in default]
    note = (f"{name}: the data's labels are not all among the task's {len(default)} default labels (not "
            f"among them: {_listing(outside, 5)}); the label set is the {len(found)} labels found in the "
            f"data: {_listing(found)} (give it explicitly with {labels_key}.{name})")
    return found, [], note


def resolve_label_sets(cfg: TasksSection, tasks: Sequence[Any], seen: dict[str, dict[str, SeenLabel]], *,
                       names_key: str = "tasks.names", labels_key: str = "tasks.labels") -> LabelSets:
    """Every classification task's label set: the config's (``tasks.labels``), else, with
    ``labels_from_data``, the data's (:func:`choose_label_set`), else the task's own."""
    out = LabelSets(list(tasks))
    for i, task in enumerate(out.tasks):
        if not is_label_set_task(task):
            continue
        if cfg.label_set(task.name) is None and cfg.labels_from_data:
            chosen, msgs, note = choose_label_set(task, seen.get(task.name, {}), names_key=names_key,
                                                  labels_key=labels_key)
            out.problems += [(task.name, m) for m in msgs]
            if chosen is not None:
                try:
                    task = out.tasks[i] = task.with_labels(chosen)
                except ConvtuneError as exc:
                    out.problems.append((task.name, _error_text(exc)))
                    continue
                out.notes.append(note or "")
        out.labels[task.name] = list(task.labels)
    return out


def apply_data_labels(cfg: TasksSection, tasks: Sequence[Any],
                      splits: Sequence[tuple[Sequence[Conversation], Any]],
                      problems: list[Problem]) -> tuple[list[Any], list[str]]:
    """Training's label-set step, before labels are validated: returns the tasks over their
    resolved label sets and the notes to report; appends data problems (single label,
    near-duplicate spellings) to ``problems``; records every classification task's set in
    ``cfg.labels``, which the run then writes into ``config.json`` (evaluation and serving
    re-resolve the tasks from it)."""
    names = [t.name for t in tasks if is_label_set_task(t)]
    sets = resolve_label_sets(cfg, tasks, labels_in_data(splits, names))
    source = next((str(src) for convs, src in splits if convs and src is not None), "data")
    problems += [Problem(source, None, f"labels.{name}", msg) for name, msg in sets.problems]
    if not sets.problems and sets.labels:
        cfg.labels = {**cfg.labels, **sets.labels}
    failed = {name for name, _ in sets.problems}
    if failed:  # their labels were reported as a whole: not again, one "not one of" per conversation
        sets.tasks = [_unchecked(t) if t.name in failed else t for t in sets.tasks]
    return sets.tasks, sets.notes


def _unchecked(task: Any) -> Any:
    """A copy of ``task`` whose labels :func:`check_labels` skips (never trained: a problem is out)."""
    import copy

    twin = copy.copy(task)
    twin.labels_reported = True
    return twin


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
