"""The task registry: task name -> task object, built fresh per dataset or tenant.

``default_registry()`` returns new instances every call (no module-level
mutable state), so one tenant's intent labels or custom tasks never leak into
another's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from convtune.conversation import Conversation
from convtune.errors import ConfigError, Problem
from tasks.action_items import ActionItemsTask
from tasks.base import Task
from tasks.call_center import EntitiesTask, FollowUpsTask, QuestionsTask, TopicsTask
from tasks.classification import IntentTask
from tasks.custom import load_task_file
from tasks.sentiment import SentimentTask
from tasks.text import SummaryTask

CORE_TASKS: tuple[str, ...] = ("summary", "action_items", "intent", "sentiment")
EXTRA_TASKS: tuple[str, ...] = ("topics", "entities", "questions", "follow_ups")
KINDS = ("classification", "structured", "text")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class TaskRegistry:
    """An ordered set of tasks with unique names."""

    def __init__(self, tasks: Iterable[Task] = ()):
        self._tasks: dict[str, Task] = {}
        for task in tasks:
            self.register(task)

    def register(self, task: Task, *, replace: bool = False) -> Task:
        """Add ``task``; a second task of the same name is a ConfigError unless ``replace``."""
        if not isinstance(task, Task):
            raise ConfigError(f"not a Task: {task!r}")
        name = getattr(task, "name", None)
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"task name {name!r} must be lower_snake_case (a-z, 0-9, _)")
        if not isinstance(getattr(task, "instruction", None), str) or not task.instruction.strip():
            raise ConfigError(f"task {name!r} has no instruction")
        if task.kind not in KINDS:
            raise ConfigError(f"task {name!r}: kind must be one of {', '.join(KINDS)}, got {task.kind!r}")
        if name in self._tasks and not replace:
            raise ConfigError(f"task {name!r} is already registered")
        self._tasks[name] = task
        return task

    def register_file(self, path: str | Path) -> list[Task]:
        """Register every task of a YAML/JSON task file (all or none; see ``tasks.custom``)."""
        tasks = load_task_file(path, reserved=self._tasks)
        for task in tasks:
            self.register(task)
        return tasks

    def get(self, name: str) -> Task:
        try:
            return self._tasks[name]
        except KeyError:
            known = ", ".join(self._tasks) or "(none)"
            raise ConfigError(f"unknown task {name!r}; known tasks: {known}") from None

    def names(self) -> list[str]:
        """Task names in registration order."""
        return list(self._tasks)

    def tasks_for(self, conv: Conversation) -> list[Task]:
        """The tasks whose gold label ``conv`` carries, in registration order."""
        return [t for t in self._tasks.values() if t.has_label(conv)]

    def check_labels(self, convs: Sequence[Conversation], *, source: str = "<dataset>",
                     allow_unknown: bool = False) -> list[Problem]:
        """Every problem with the gold labels of ``convs``, before any weights are loaded.

        Checks each label against its task's schema (:meth:`Task.validate_label`)
        and that it survives rendering and parsing unchanged. Label keys naming no
        registered task are problems unless ``allow_unknown``. ``line`` is the
        conversation's 1-based position in ``convs``.
        """
        problems = []
        for pos, conv in enumerate(convs, start=1):
            for key, label in conv.labels.items():
                where = f"labels.{key}"
                if key not in self._tasks:
                    if not allow_unknown:
                        problems.append(Problem(source, pos, where, f"{conv.id}: no task named {key!r} "
                                                f"(known: {', '.join(self._tasks)})"))
                    continue
                task = self._tasks[key]
                if label is None:
                    continue  # an explicit null means "not labelled for this task"
                found = task.validate_label(label)
                if not found:
                    trip = task.round_trip_problem(label)
                    found = [trip] if trip else []
                problems += [Problem(source, pos, where, f"{conv.id}: {msg}") for msg in found]
        return problems

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[Task]:
        return iter(list(self._tasks.values()))

    def __len__(self) -> int:
        return len(self._tasks)

    def __repr__(self) -> str:
        return f"TaskRegistry({', '.join(self._tasks)})"


def default_registry(*, intent_labels: Sequence[str] | None = None) -> TaskRegistry:
    """Fresh instances of the built-in tasks: the four core ones, then topics, entities,
    questions and follow_ups. ``intent_labels`` replaces the default 16 intents."""
    return TaskRegistry([
        SummaryTask(),
        ActionItemsTask(),
        IntentTask(intent_labels),
        SentimentTask(),
        TopicsTask(),
        EntitiesTask(),
        QuestionsTask(),
        FollowUpsTask(),
    ])
