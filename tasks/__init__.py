"""Registered conversation tasks (summary, action items, intent, sentiment, ...).

Each task is a small declarative object: instruction, output schema, how the
gold label is rendered, a tolerant parser and a metric. Sits above
``convtune`` core and below training/evaluation and ``serve``.

    from tasks import default_registry
    registry = default_registry()                  # fresh instances
    registry.register_file("tasks/examples/escalation_risk.yaml")
    for task in registry.tasks_for(conv):
        target = task.render_target(task.gold(conv))
"""

from tasks.action_items import ActionItem, ActionItemsTask
from tasks.base import Parsed, Task
from tasks.call_center import ENTITY_TYPES, EntitiesTask, FollowUpsTask, QuestionsTask, TopicsTask
from tasks.classification import INTENT_LABELS, ClassificationTask, IntentTask
from tasks.custom import load_task_file
from tasks.lists import ListTask, StringListTask
from tasks.registry import CORE_TASKS, EXTRA_TASKS, TaskRegistry, default_registry
from tasks.sentiment import SENTIMENTS, SentimentTask
from tasks.text import SummaryTask, TextTask

__all__ = [
    "CORE_TASKS", "ENTITY_TYPES", "EXTRA_TASKS", "INTENT_LABELS", "SENTIMENTS", "ActionItem",
    "ActionItemsTask", "ClassificationTask", "EntitiesTask", "FollowUpsTask", "IntentTask", "ListTask",
    "Parsed", "QuestionsTask", "SentimentTask", "StringListTask", "SummaryTask", "Task", "TaskRegistry",
    "TextTask", "TopicsTask", "default_registry", "load_task_file",
]
