"""Evaluate a model (base or a trained run) on a labelled test set.

``evaluate`` answers every task about every labelled conversation (batched,
see :mod:`convtune.evaluation.generate`), parses the outputs with each task's
own tolerant parser and scores them with the task's metric. Parse failures are
counted (``parse_failure_rate``) and score as wrong answers; raw generations
are kept for inspection. Benchmarks call the same function.

A model reference is a packaged model name, a Hugging Face model folder or hub
id (a base model), or a training run directory (adapter on top of the run's
base model, loaded with ``convtune.training.load_run``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convtune.conversation import Conversation
from convtune.errors import ConfigError, DataValidationError, Problem
from convtune.evaluation.generate import AnswerRun, Generator
from convtune.renderer import ContextChunk, Renderer

# ---- models -----------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A model ready for evaluation, with the renderer its prompts must go through."""

    model: Any
    tokenizer: Any
    renderer: Renderer
    name: str
    task_names: list[str] | None = None  # the tasks a run was trained on
    run_dir: Path | None = None
    few_shot: dict[str, Any] | None = None  # a run trained with retrieved examples: {"k", "tasks", "index"}
    predictors: Any = None  # the run's recorded per-task predictors (convtune.predictors), tuned runs only

    def few_shot_context(self, conversations: Sequence[Conversation], tasks: Sequence[Any]
                         ) -> dict[str, list[ContextChunk]] | None:
        """Retrieved examples from the run's example index, as at training time (None: no index)."""
        if not self.few_shot or self.run_dir is None:
            return None
        from embeddings.fewshot import run_context

        return run_context(self.run_dir, self.few_shot, conversations, tasks)


def is_run_dir(path: str | Path) -> bool:
    """True for a training run directory (``adapter/`` + ``tasks.json``)."""
    p = Path(path)
    return (p / "adapter").is_dir() and (p / "tasks.json").is_file()


def _run_base_ref(run_dir: Path) -> str | None:
    """The base model a run was trained from (config.json, else the adapter's config)."""
    for path, keys in ((run_dir / "config.json", ("model", "name")),
                       (run_dir / "adapter" / "adapter_config.json", ("base_model_name_or_path",))):
        try:
            node: Any = json.loads(path.read_text())
            for k in keys:
                node = node[k]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(node, str) and node:
            return node
    return None


def load_for_eval(ref: str | Path, *, device: str = "auto", fast_cpu: bool = False) -> LoadedModel:
    """Load a base model (name/folder/hub id) or a training run directory. ``fast_cpu``: on
    CPU, decode with the server's fast path (4-bit weights, 8-bit head; LoRA unmerged on top:
    :func:`convtune.inference.quantize.quantize_for_cpu`), so evaluation measures what is served."""
    loaded = _load_for_eval(ref, device=device)
    if fast_cpu:
        from convtune.inference.quantize import quantize_for_cpu

        quantize_for_cpu(loaded.model)
    return loaded


def _load_for_eval(ref: str | Path, *, device: str) -> LoadedModel:
    if is_run_dir(ref):
        try:
            from convtune.training import load_run
        except ImportError as exc:  # the training package is not installed/ready
            raise ConfigError(f"cannot load run {ref}: convtune.training is unavailable ({exc})") from None
        from convtune.predictors import load_predictors

        model, tokenizer, renderer, task_names, few_shot = load_run(Path(ref), device=device)
        model.eval()
        return LoadedModel(model, tokenizer, renderer, name=f"tuned ({Path(ref).name})",
                           task_names=list(task_names), run_dir=Path(ref), few_shot=few_shot,
                           predictors=load_predictors(ref))
    from convtune.models import load_model

    model, tokenizer = load_model(str(ref), device=device)
    return LoadedModel(model, tokenizer, Renderer(tokenizer), name=f"base ({Path(str(ref)).name})")


@contextlib.contextmanager
def base_of(tuned: LoadedModel, *, device: str = "auto") -> Iterator[LoadedModel]:
    """The base model of a run, with the run's renderer (same system prompt and budgets) and
    few-shot example index (same prompts).

    A PEFT model is used with its adapter disabled (same weights in memory, no
    second load); otherwise the run's base model is loaded again.
    """
    disable = getattr(tuned.model, "disable_adapter", None)
    if disable is not None:
        with disable():
            yield LoadedModel(tuned.model, tuned.tokenizer, tuned.renderer, name="base",
                              task_names=tuned.task_names, run_dir=tuned.run_dir, few_shot=tuned.few_shot)
        return
    ref = _run_base_ref(tuned.run_dir) if tuned.run_dir else None
    if ref is None:
        raise ConfigError("cannot tell which base model the run was trained from")
    from convtune.models import load_model

    model, _ = load_model(ref, device=device)
    yield LoadedModel(model, tuned.tokenizer, tuned.renderer, name="base", task_names=tuned.task_names,
                      run_dir=tuned.run_dir, few_shot=tuned.few_shot)


# ---- tasks ------------------------------------------------------------------------


def resolve_tasks(names: Sequence[Any] | None, *, run_dir: Path | None = None,
                  default: Sequence[str] | None = None) -> list[Any]:
    """Task objects from names (via the task registry) or task objects (passed through).

    For a run, tasks are resolved as training resolved them (the ``tasks`` section of
    the run's ``config.json``: intent labels, custom task files); otherwise from the
    default registry.
    """
    if names is not None and all(not isinstance(n, str) for n in names):
        return list(names)
    from tasks.registry import CORE_TASKS, default_registry

    wanted = list(names) if names is not None else list(default or CORE_TASKS)
    section = _read_json(run_dir / "config.json", "tasks") if run_dir is not None else None
    if isinstance(section, dict):
        from convtune.training.config import TasksSection
        from convtune.training.taskset import resolve_tasks as resolve_run_tasks

        try:
            cfg = TasksSection.model_validate({**section, "names": [n for n in wanted if isinstance(n, str)]})
        except ValueError as exc:
            raise ConfigError(f"the run's config.json has an invalid tasks section: {exc}") from None
        found, problems = resolve_run_tasks(cfg)
        if problems:
            raise ConfigError("; ".join(problems))
        by_name = {t.name: t for t in found}
        return [n if not isinstance(n, str) else by_name[n] for n in wanted]
    registry = default_registry()
    return [n if not isinstance(n, str) else registry.get(n) for n in wanted]


def _read_json(path: Path, key: str) -> Any:
    try:
        return json.loads(path.read_text())[key]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_gold(conversations: Sequence[Conversation], tasks: Sequence[Any], source: str = "data") -> None:
    """Every gold label present must be valid for its task (else DataValidationError)."""
    problems = []
    for conv in conversations:
        for task in tasks:
            if not task.has_label(conv):
                continue
            validate = getattr(task, "validate_label", None)
            for msg in (validate(task.gold(conv)) if validate else []):
                problems.append(Problem(source, None, f"labels.{task.name}", f"{conv.id}: {msg}"))
    if problems:
        raise DataValidationError(problems)
    if not any(t.has_label(c) for c in conversations for t in tasks):
        names = ", ".join(t.name for t in tasks)
        raise ConfigError(f"no conversation in {source} carries a gold label for any of: {names}")


# ---- results ------------------------------------------------------------------------

# Metrics where a lower value is better (everything else: higher is better).
LOWER_IS_BETTER = frozenset({"parse_failure_rate", "seconds_per_item", "mae", "rmse", "error_rate",
                             "repetition_rate", "loops"})


@dataclass
class TaskResult:
    task: str
    primary_metric: str
    metrics: dict[str, float]  # task.score(...) incl. parse_failure_rate and n
    latency: dict[str, float]  # seconds_per_item, tokens/s, prompt tokens (see TaskTiming.summary)
    constrained: bool


@dataclass
class EvalResult:
    """Metrics and latency of one model on one test set; ``records`` are the raw generations."""

    name: str
    strategy: str
    reuse_cache: bool
    batch_size: int
    n_conversations: int
    seconds: float
    tasks: dict[str, TaskResult]
    records: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the raw records)."""
        return {
            "name": self.name,
            "strategy": self.strategy,
            "reuse_cache": self.reuse_cache,
            "batch_size": self.batch_size,
            "n_conversations": self.n_conversations,
            "seconds": self.seconds,
            "seconds_per_conversation": self.seconds / self.n_conversations if self.n_conversations else 0.0,
            "settings": self.settings,
            "tasks": {
                name: {"primary_metric": t.primary_metric, "metrics": t.metrics, "latency": t.latency,
                       "constrained": t.constrained}
                for name, t in self.tasks.items()
            },
        }


def score_answers(run: AnswerRun, conversations: Sequence[Conversation], tasks: Sequence[Any],
                  name: str) -> tuple[dict[str, TaskResult], list[dict[str, Any]]]:
    """Parse every answer with its task, score each task, build the prediction records.

    Tasks answered in words (text tasks such as summary; list tasks whose items are
    strings or carry a ``text``, such as action_items and follow_ups) also get
    ``faithfulness`` (their parsed answer's checkable words found in the transcript, speaker
    names included),
    ``repetition_rate`` and ``loops`` (of the raw output, JSON keys left out); see
    :func:`tasks.metrics.text_quality`. Their records carry ``faithfulness`` and ``loop``.
    """
    from tasks.metrics import faithfulness, has_loop, strip_json_keys, text_quality

    by_key = {(a.conversation_id, a.task): a for a in run.answers}
    results: dict[str, TaskResult] = {}
    records: list[dict[str, Any]] = []
    for task in tasks:
        item_text = getattr(task, "item_text", None)  # list tasks (tasks.lists.ListTask)
        is_text = getattr(task, "kind", None) == "text" and not getattr(task, "chat", False)
        wordy = is_text or item_text is not None
        preds, golds = [], []
        answers: list[str | None] = []
        sources: list[str] = []
        outputs: list[str] = []
        for conv in conversations:
            a = by_key.get((conv.id, task.name))
            if a is None or not task.has_label(conv):
                continue
            parsed = task.parse(a.text)
            gold = task.gold(conv)
            preds.append(parsed)
            golds.append(gold)
            quality: dict[str, Any] = {}
            if wordy:
                answer = None
                if parsed.ok and isinstance(parsed.value, str):
                    answer = parsed.value
                elif parsed.ok and isinstance(parsed.value, list) and item_text is not None:
                    answer = "\n".join(item_text(x) for x in parsed.value)
                answers.append(answer)
                sources.append(conv.transcript())  # speakers too: a summary may name them
                outputs.append(a.text if is_text else strip_json_keys(a.text))
                quality = {"faithfulness": None if answer is None else faithfulness(answer, sources[-1]),
                           "loop": has_loop(outputs[-1])}
            records.append({
                "model": name, "conversation_id": conv.id, "task": task.name, "output": a.text,
                "parsed": parsed.value, "parse_ok": parsed.ok, "parse_error": parsed.error, "gold": gold,
                "constrained": a.constrained, "stopped": a.stopped, "new_tokens": len(a.token_ids),
                "prompt_tokens": a.prompt_tokens, "computed_prompt_tokens": a.computed_prompt_tokens,
                "seconds": round(a.seconds, 4), "predictor": a.predictor,
                **({"confidence": a.confidence} if a.confidence is not None else {}),
                **({"label_scores": a.label_scores} if a.label_scores else {}),
                **quality,
            })
        if not golds:
            continue
        metrics = {k: float(v) for k, v in task.score(preds, golds).items()}
        metrics.setdefault("n", float(len(golds)))
        metrics.setdefault("parse_failure_rate", sum(not p.ok for p in preds) / len(preds))
        if wordy:
            metrics.update(text_quality(answers, sources, outputs))
        results[task.name] = TaskResult(
            task=task.name,
            primary_metric=getattr(task, "primary_metric", "parse_failure_rate"),
            metrics=metrics,
            latency=run.timings[task.name].summary(),
            constrained=task.name in run.extra.get("constrained_tasks", ()),
        )
    return results, records


def evaluate(
    model: str | Path | LoadedModel | Any,
    conversations: Sequence[Conversation] | str | Path,
    tasks: Sequence[Any] | None = None,
    *,
    tokenizer: Any = None,
    renderer: Renderer | None = None,
    name: str | None = None,
    batch_size: int = 8,
    strategy: str = "chained",
    reuse_cache: bool | None = None,
    constrained: bool | str | Collection[str] | None = None,
    max_new_tokens: Mapping[str, int] | None = None,
    device: str = "auto",
    context: Mapping[str, Sequence[ContextChunk]] | None = None,
    progress: Callable[[str], None] | None = None,
    predictors: bool = True,
) -> EvalResult:
    """Answer, parse and score every task on every labelled conversation.

    Args:
        model: a model reference (name, folder, hub id, run directory), a
            :class:`LoadedModel`, or a loaded transformers/PEFT model (then pass
            ``tokenizer``; ``renderer`` defaults to ``Renderer(tokenizer)``).
        conversations: conversations, or a file :func:`convtune.data.load_conversations` reads.
        tasks: task objects or registry names; default: the run's tasks, else the core tasks.
        strategy, reuse_cache, constrained, max_new_tokens, context: see
            :func:`convtune.evaluation.generate.answer_tasks`.
        predictors: answer label tasks with the run's recorded predictors (what serving does);
            False: the language model answers every task.
    """
    source = "conversations"
    if isinstance(conversations, (str, Path)):
        from convtune.data import load_conversations

        source = str(conversations)
        conversations = load_conversations(conversations)[1]
    if isinstance(model, (str, Path)):
        model = load_for_eval(model, device=device)
    if not isinstance(model, LoadedModel):
        if tokenizer is None:
            raise ValueError("pass the tokenizer with a loaded model")
        model = LoadedModel(model, tokenizer, renderer or Renderer(tokenizer), name=name or "model")
    elif renderer is not None:
        model = LoadedModel(model.model, model.tokenizer, renderer, model.name, model.task_names,
                            model.run_dir, model.few_shot, model.predictors)
    task_objs = resolve_tasks(tasks, run_dir=model.run_dir, default=model.task_names)
    check_gold(conversations, task_objs, source)
    labelled = [c for c in conversations if any(t.has_label(c) for t in task_objs)]
    if context is None:  # a run trained with retrieved examples gets them here too
        context = model.few_shot_context(labelled, task_objs)

    import torch

    t0 = time.perf_counter()
    from convtune.predictors.answer import answer_with_predictors

    with torch.inference_mode():
        run = answer_with_predictors(
            Generator(model.model, model.tokenizer), model.renderer, labelled, task_objs,
            model.predictors if predictors else None,
            strategy=strategy, batch_size=batch_size, reuse_cache=reuse_cache, constrained=constrained,
            max_new_tokens=max_new_tokens, only_labelled=True, context=context, progress=progress,
        )
    seconds = time.perf_counter() - t0
    label = name or model.name
    results, records = score_answers(run, labelled, task_objs, label)
    return EvalResult(
        name=label, strategy=run.strategy, reuse_cache=run.reuse_cache, batch_size=run.batch_size,
        n_conversations=len(labelled), seconds=seconds, tasks=results, records=records,
        settings={"constrained_tasks": run.extra["constrained_tasks"],
                  "max_new_tokens": run.extra["max_new_tokens"],
                  "predictors": run.extra.get("predictors", {t.name: "lm" for t in task_objs}),
                  "device": str(next(model.model.parameters()).device)},
    )
