"""Evaluation: a model (base or a trained run) on a labelled test set, base and tuned side by side.

Public API::

    evaluate(model, conversations, tasks, *, batch_size, strategy, constrained) -> EvalResult
    compare(base_result, tuned_result) -> Comparison       # .format_table(), .to_dict()
    write_report(out_dir, base_result, tuned_result)       # metrics.json, predictions.jsonl, metrics.png
    answer_tasks(Generator(model, tokenizer), renderer, conversations, tasks, ...)  # raw answers + latency

``convtune evaluate`` (:mod:`convtune.evaluation.cli`) and the benchmarks call
these same functions. Importing this package does not import torch.
"""

from convtune.evaluation.evaluate import (
    EvalResult,
    LoadedModel,
    TaskResult,
    base_of,
    evaluate,
    is_run_dir,
    load_for_eval,
    resolve_tasks,
)
from convtune.evaluation.generate import (
    STRATEGIES,
    Answer,
    AnswerRun,
    Generation,
    Generator,
    answer_tasks,
    max_new_tokens_for,
)
from convtune.evaluation.report import Comparison, compare, format_table, plot_comparison, write_report

__all__ = [
    "STRATEGIES", "Answer", "AnswerRun", "Comparison", "EvalResult", "Generation", "Generator", "LoadedModel",
    "TaskResult", "answer_tasks", "base_of", "compare", "evaluate", "format_table", "is_run_dir",
    "load_for_eval", "max_new_tokens_for", "plot_comparison", "resolve_tasks", "write_report",
]
