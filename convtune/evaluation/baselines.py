"""Cheap baselines scored like a model: what a tuned model has to beat to be worth serving.

* ``majority``: every label field answered with its most common training label
  (label tasks: intent, sentiment, custom classification);
* ``extractive``: summaries made of transcript turns (:mod:`tasks.extractive`), the
  method picked on the *training* conversations by the task's own metric (never
  on the test set).

Both are returned as :class:`~convtune.evaluation.evaluate.EvalResult` objects, so
the report puts them next to the base and tuned models with the same metrics.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from convtune.conversation import Conversation
from convtune.evaluation.evaluate import EvalResult, score_answers
from convtune.evaluation.generate import Answer, AnswerRun, TaskTiming
from tasks.base import label_fields_of


def _run(answers: list[Answer], tasks: Sequence[Any], n: int) -> AnswerRun:
    return AnswerRun(answers=answers, timings={t.name: TaskTiming(t.name) for t in tasks}, seconds=0.0,
                     strategy="baseline", reuse_cache=False, batch_size=1, n_conversations=n)


def _answer(conv: Conversation, task: Any, text: str, predictor: str) -> Answer:
    return Answer(conv.id, task.name, text, [], True, False, 0, 0, 0.0, predictor=predictor)


def majority(train: Sequence[Conversation], test: Sequence[Conversation], tasks: Sequence[Any]
             ) -> EvalResult | None:
    """Each label field's most common training label (ties: the first label in the task's order)."""
    picked = [t for t in tasks if label_fields_of(t) and any(t.has_label(c) for c in train)]
    if not picked:
        return None
    answers = []
    for task in picked:
        values = {}
        for f in label_fields_of(task):
            counts = Counter(task.field_values(task.gold(c))[f.key] for c in train if task.has_label(c))
            values[f.key] = max(f.labels, key=lambda lab: (counts.get(lab, 0), -f.labels.index(lab)))
        text = task.render_target(task.from_fields(values))
        answers += [_answer(c, task, text, "majority") for c in test if task.has_label(c)]
    return _result("majority", answers, test, picked)


def extractive(train: Sequence[Conversation], test: Sequence[Conversation], tasks: Sequence[Any]
               ) -> EvalResult | None:
    """Text tasks (summaries) answered by the extractive method that scores best on ``train``."""
    from tasks.extractive import EXTRACTIVE_BASELINES

    picked = [t for t in tasks if getattr(t, "kind", None) == "text" and not getattr(t, "chat", False)
              and any(t.has_label(c) for c in test)]
    if not picked:
        return None
    answers, chosen = [], {}
    for task in picked:
        labelled = [c for c in train if task.has_label(c)]
        best = "first-customer+last-agent"
        if labelled:
            golds = [task.gold(c) for c in labelled]
            scores = {name: task.score([task.parse(fn(c)) for c in labelled], golds)[task.primary_metric]
                      for name, fn in EXTRACTIVE_BASELINES.items()}
            best = max(scores, key=scores.get)
        chosen[task.name] = best
        answers += [_answer(c, task, EXTRACTIVE_BASELINES[best](c), f"extractive:{best}")
                    for c in test if task.has_label(c)]
    result = _result("extractive", answers, test, picked)
    result.settings["methods"] = chosen
    return result


def _result(name: str, answers: list[Answer], test: Sequence[Conversation],
            tasks: Sequence[Any]) -> EvalResult:
    labelled = [c for c in test if any(t.has_label(c) for t in tasks)]
    results, records = score_answers(_run(answers, tasks, len(labelled)), labelled, tasks, name)
    return EvalResult(name=name, strategy="baseline", reuse_cache=False, batch_size=1,
                      n_conversations=len(labelled), seconds=0.0, tasks=results, records=records,
                      settings={"predictors": {t.name: name for t in tasks}})


def baselines(train: Sequence[Conversation], test: Sequence[Conversation], tasks: Sequence[Any]
              ) -> list[EvalResult]:
    """Every baseline that applies to ``tasks``."""
    return [r for r in (majority(train, test, tasks), extractive(train, test, tasks)) if r is not None]
