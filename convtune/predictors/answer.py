"""Answer tasks about conversations with a run's recorded predictors.

``answer_with_predictors`` is what evaluation and the server's analyze route
call instead of :func:`convtune.evaluation.generate.answer_tasks`: tasks
whose fields are all answered by a head or k-NN are not asked of the LM at
all (no prompt, no decoding); the others are asked as usual (chained, KV cache
reused), and tasks whose predictor is ``ensemble`` combine the LM's label
distribution with the head's. Each answer says which predictor gave it and its
confidence, and its text is the task's rendered target, so parsing and scoring
are the same as for an LM answer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from convtune.conversation import Conversation
from convtune.evaluation.generate import Answer, AnswerRun, TaskTiming, answer_tasks
from convtune.predictors.store import LM_PREDICTORS, RunPredictors


def answer_with_predictors(generator: Any, renderer: Any, conversations: Sequence[Conversation],
                           tasks: Sequence[Any], predictors: RunPredictors | None,
                           **kwargs: Any) -> AnswerRun:
    """Like ``answer_tasks`` (same arguments), with label tasks answered by ``predictors``."""
    if predictors is None:
        return answer_tasks(generator, renderer, conversations, tasks, **kwargs)
    lm_tasks = lm_tasks_of(tasks, predictors)
    t0 = time.perf_counter()
    if lm_tasks:
        run = answer_tasks(generator, renderer, conversations, lm_tasks, **kwargs)
    else:
        run = no_lm_answers(len(conversations), strategy=kwargs.get("strategy", "chained"),
                            reuse_cache=bool(kwargs.get("reuse_cache")),
                            batch_size=kwargs.get("batch_size", 8))
    return apply_predictors(run, conversations, tasks, predictors,
                            only_labelled=kwargs.get("only_labelled", False), started=t0)


def no_lm_answers(n_conversations: int, *, strategy: str = "chained", reuse_cache: bool = True,
                  batch_size: int = 1) -> AnswerRun:
    """The LM's run when no task needs the LM (every one answered by a head or k-NN)."""
    return AnswerRun(answers=[], timings={}, seconds=0.0, strategy=strategy, reuse_cache=reuse_cache,
                     batch_size=batch_size, n_conversations=n_conversations,
                     extra={"constrained_tasks": [], "max_new_tokens": {}})


def lm_tasks_of(tasks: Sequence[Any], predictors: RunPredictors | None) -> list[Any]:
    """The tasks the LM must be asked (the others are answered by a head or k-NN alone)."""
    return list(tasks) if predictors is None else [t for t in tasks if predictors.needs_lm(t)]


def apply_predictors(run: AnswerRun, conversations: Sequence[Conversation], tasks: Sequence[Any],
                     predictors: RunPredictors | None, *, only_labelled: bool = False,
                     started: float | None = None) -> AnswerRun:
    """Every task's answer: the LM's answers in ``run`` (asked the :func:`lm_tasks_of` tasks),
    with label tasks answered by their recorded predictors, in (conversation, task) order."""
    if predictors is None:
        return run
    t0 = time.perf_counter() - run.seconds if started is None else started
    lm_tasks = lm_tasks_of(tasks, predictors)
    by_key = {(a.conversation_id, a.task): a for a in run.answers}
    for task in tasks:
        if not predictors.task_fields(task):
            continue
        if predictors.task_predictor(task) in LM_PREDICTORS:  # the LM's own answer, as it gave it
            for a in run.answers:
                if a.task == task.name:
                    a.predictor = predictors.task_predictor(task)
            continue
        asked = [c for c in conversations if not only_labelled or task.has_label(c)]
        if not asked:
            continue
        t_task = time.perf_counter()
        predicted = predictors.predict(task, asked, [by_key.get((c.id, task.name)) for c in asked])
        share = (time.perf_counter() - t_task) / len(asked)
        name = predictors.task_predictor(task)
        for conv, (label, confidence, per_field) in zip(asked, predicted):
            lm = by_key.get((conv.id, task.name))
            text = task.render_target(label)
            by_key[(conv.id, task.name)] = Answer(
                conversation_id=conv.id, task=task.name, text=text, token_ids=[], stopped=True,
                constrained=True, prompt_tokens=lm.prompt_tokens if lm else 0,
                computed_prompt_tokens=lm.computed_prompt_tokens if lm else 0,
                seconds=share + (lm.seconds if lm else 0.0),
                label_scores=lm.label_scores if lm else None,
                predictor=name, confidence=confidence, field_confidence=per_field,
            )
        timing = run.timings.setdefault(task.name, TaskTiming(task.name))
        if task not in lm_tasks:
            timing.n += len(asked)
        timing.seconds += share * len(asked)
    answers = [by_key[(c.id, t.name)] for c in conversations for t in tasks if (c.id, t.name) in by_key]
    constrained = sorted({*run.extra.get("constrained_tasks", ()),
                          *(t.name for t in tasks if predictors.task_fields(t))})
    return AnswerRun(answers=answers, timings=run.timings, seconds=time.perf_counter() - t0,
                     strategy=run.strategy, reuse_cache=run.reuse_cache, batch_size=run.batch_size,
                     n_conversations=len(conversations),
                     extra={**run.extra, "constrained_tasks": constrained,
                            "predictors": {t.name: predictors.task_predictor(t) for t in tasks}})
