"""Answering tasks about conversations: task answering's scheduler over the inference core.

Everything here works on token ids that come from :class:`convtune.renderer.Renderer`;
no prompt text is built in this module. Decoding itself (KV batches with prefix reuse,
the decode loop, sampling, repeat guards) is :mod:`convtune.inference`, shared with the
server's engine.

Rows of a :class:`~convtune.inference.batch.KVBatch` are conversations (or prompts);
each row remembers the tokens it has run through the model, so a new prompt for a row
computes only what follows the longest common prefix.

Two strategies answer several tasks about one conversation:

* ``independent``: one prompt per (conversation, task), ``renderer.prompt(conv,
  task.instruction)``. Without cache reuse, prompts are batched across
  conversations, grouped by task and sorted by length.
* ``chained``: tasks asked one after another in the same chat; every answered
  turn carries the model's own previous answer, as a served conversation would.
  With cache reuse the transcript is computed once per conversation.

Constrained decoding (classification tasks with ``labels``): every allowed
label's answer, tokenized by the renderer exactly as training renders it
(including the end-of-turn token), is scored by its log-likelihood given the
prompt, reusing the prompt's cache; the best label wins. Structured tasks (with
an ``output_schema()``) are decoded grammar-guided instead (:mod:`convtune.guided`):
every picked token keeps the answer a valid prefix of the schema's JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from convtune.conversation import Conversation
from convtune.errors import ConfigError
from convtune.guided import close_truncated_list
from convtune.inference.batch import Generation, KVBatch, StepStats
from convtune.inference.decode import (
    LOOP_COPIES,
    LOOP_MAX_PERIOD,
    LOOP_MIN_PERIOD,
    REPEAT_MIN_TOKENS,
    loop_period,
    repeated_span,
    retold,
)
from convtune.inference.model import Generator, stop_token_ids
from convtune.renderer import ContextChunk, Encoded, Renderer, TaskTurn

__all__ = [
    "LOOP_COPIES", "LOOP_MAX_PERIOD", "LOOP_MIN_PERIOD", "REPEAT_MIN_TOKENS", "STRATEGIES", "Answer",
    "AnswerRun", "Generation", "Generator", "StepStats", "TaskDialog", "TaskTiming", "answer_tasks",
    "constrainable", "label_share", "loop_period", "max_new_tokens_for", "repeated_span",
    "resolve_constrained", "retold", "stop_token_ids",
]

STRATEGIES = ("independent", "chained")

# Generation budget per task kind; a task may override with a ``max_new_tokens`` attribute.
DEFAULT_MAX_NEW_TOKENS: dict[str, int] = {"classification": 16, "structured": 192, "text": 128}

def max_new_tokens_for(task: Any, overrides: Mapping[str, int] | None = None) -> int:
    """Budget for one task: ``overrides`` by task name, then by kind, then the task's
    own ``max_new_tokens``, then :data:`DEFAULT_MAX_NEW_TOKENS` for its kind."""
    overrides = overrides or {}
    for key in (task.name, task.kind):
        if key in overrides:
            return int(overrides[key])
    own = getattr(task, "max_new_tokens", None)
    if own:
        return int(own)
    return DEFAULT_MAX_NEW_TOKENS.get(task.kind, DEFAULT_MAX_NEW_TOKENS["text"])


# ---- answering tasks about conversations -------------------------------------------


@dataclass
class Answer:
    """The model's answer to one task about one conversation."""

    conversation_id: str
    task: str
    text: str
    token_ids: list[int]
    stopped: bool  # ended on a stop token (False: hit max_new_tokens)
    constrained: bool
    prompt_tokens: int  # length of the rendered prompt
    computed_prompt_tokens: int  # prompt tokens actually computed (the rest came from the cache)
    seconds: float  # this answer's share of its batch's wall time
    label_scores: dict[str, float] | None = None  # constrained: label -> log-likelihood
    predictor: str = "lm"  # what answered: lm, or a run's recorded predictor (convtune.predictors)
    confidence: float | None = None  # the chosen label's probability (label answers)
    field_confidence: dict[str, float] | None = None  # per label field (sentiment.start, ...)


@dataclass
class TaskTiming:
    """Latency and throughput of one task over a run."""

    task: str
    n: int = 0
    seconds: float = 0.0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    prompt_tokens: int = 0
    computed_prompt_tokens: int = 0
    new_tokens: int = 0

    def add(self, rows: int, stats: StepStats, prompt_tokens: int) -> None:
        self.n += rows
        self.seconds += stats.prefill_seconds + stats.decode_seconds
        self.prefill_seconds += stats.prefill_seconds
        self.decode_seconds += stats.decode_seconds
        self.prompt_tokens += prompt_tokens
        self.computed_prompt_tokens += stats.computed_tokens
        self.new_tokens += stats.new_tokens

    def summary(self) -> dict[str, float]:
        def ratio(a: float, b: float) -> float:
            return a / b if b else 0.0

        return {
            "n": self.n,
            "seconds_per_item": ratio(self.seconds, self.n),
            "prefill_seconds_per_item": ratio(self.prefill_seconds, self.n),
            "decode_seconds_per_item": ratio(self.decode_seconds, self.n),
            "prompt_tokens_per_item": ratio(self.prompt_tokens, self.n),
            "computed_prompt_tokens_per_item": ratio(self.computed_prompt_tokens, self.n),
            "new_tokens_per_item": ratio(self.new_tokens, self.n),
            "prefill_tokens_per_s": ratio(self.computed_prompt_tokens, self.prefill_seconds),
            "new_tokens_per_s": ratio(self.new_tokens, self.decode_seconds),
        }


@dataclass
class AnswerRun:
    """Answers of one run, in (conversation, task) input order, with timings."""

    answers: list[Answer]
    timings: dict[str, TaskTiming]
    seconds: float  # wall time of the whole run
    strategy: str
    reuse_cache: bool
    batch_size: int
    n_conversations: int
    extra: dict[str, Any] = field(default_factory=dict)


class _Candidates:
    """Answer token ids of each label of a task, as the renderer tokenizes training targets."""

    def __init__(self, renderer: Renderer, stop_ids: set[int]):
        self.renderer = renderer
        self.stop_ids = stop_ids
        self._cache: dict[str, tuple[list[str], list[str], list[list[int]]]] = {}

    def get(self, task: Any, conv: Conversation) -> tuple[list[str], list[str], list[list[int]]]:
        """(labels, answer texts, answer ids ending with the end-of-turn token)."""
        if task.name not in self._cache:
            labels = list(task.labels)
            texts = [task.render_target(label) for label in labels]
            ids = []
            for text in texts:
                # Each segment is tokenized on its own, so an answer's ids do not depend on the conversation.
                enc = self.renderer.encode(conv, [TaskTurn(task.instruction, text)])
                start, end = enc.answer_spans[-1]
                span = enc.input_ids[start:end]
                cut = next((i + 1 for i, t in enumerate(span) if t in self.stop_ids), len(span))
                ids.append(span[:cut])
            self._cache[task.name] = (labels, texts, ids)
        return self._cache[task.name]


def _score_labels(rows: KVBatch, row: int, logits: Any, labels: Sequence[Any], texts: Sequence[str],
                  ids: Sequence[Sequence[int]]) -> tuple[Generation, dict[str, float]]:
    """The best-scoring label's answer for ``row`` and every label's log-likelihood."""
    s = rows.score(row, logits, ids)
    best = max(range(len(labels)), key=lambda i: s[i])
    scores = {str(lab): sc for lab, sc in zip(labels, s)}
    return Generation(list(ids[best]), texts[best], stopped=True), scores


def _guided_schema(task: Any, constrained: Collection[str]) -> dict[str, Any] | None:
    """The JSON schema a constrained, unlabelled task's answer is decoded under (None: free)."""
    return task.output_schema() if task.name in constrained and not task.labels else None


def _close_list(g: Generation, schema: dict[str, Any] | None) -> Generation:
    """A guided list answer out of budget mid-list keeps the items the model finished."""
    if schema is not None and schema.get("type") == "array" and not g.stopped:
        g.text = close_truncated_list(g.text) or g.text
    return g


def _answer(conv: Conversation, task: Any, g: Generation, *, constrained: bool, prompt_tokens: int,
            computed: int, seconds: float, scores: dict[str, float] | None) -> Answer:
    return Answer(
        conversation_id=conv.id, task=task.name, text=g.text, token_ids=g.token_ids, stopped=g.stopped,
        constrained=constrained, prompt_tokens=prompt_tokens, computed_prompt_tokens=computed,
        seconds=seconds, label_scores=scores, confidence=label_share(scores, g.text) if scores else None,
    )


def label_share(scores: Mapping[str, float], chosen: str) -> float:
    """The chosen label's softmax share over the scored labels (its confidence)."""
    import math

    top = max(scores.values())
    z = sum(math.exp(v - top) for v in scores.values())
    return round(math.exp(scores.get(chosen, top) - top) / z, 4)


def constrainable(task: Any) -> bool:
    """A task whose answer space can be enforced: labels (scored) or a JSON schema (guided)."""
    return bool(getattr(task, "labels", None)) or task.output_schema() is not None


def resolve_constrained(tasks: Sequence[Any], constrained: bool | str | Collection[str] | None) -> set[str]:
    """Which tasks decode constrained: classification tasks choose among their ``labels``
    (scored), structured tasks are guided by their JSON schema (always valid JSON).

    ``None``/``"auto"``: each task's own ``constrained_default`` attribute (False when absent);
    ``True``/``False``: every / no constrainable task; a collection: those task names.
    """
    able = {t.name for t in tasks if constrainable(t)}
    if constrained is None or constrained == "auto":
        return {t.name for t in tasks if t.name in able and getattr(t, "constrained_default", False)}
    if constrained is True:
        return able
    if constrained is False:
        return set()
    if isinstance(constrained, str):
        raise ValueError(f"constrained must be 'auto', a bool or task names, not {constrained!r}")
    unknown = set(constrained) - able
    if unknown:
        raise ConfigError("constrained decoding needs tasks with labels or a JSON output schema; not: "
                          + ", ".join(sorted(unknown)))
    return set(constrained)


def answer_tasks(
    generator: Generator,
    renderer: Renderer,
    conversations: Sequence[Conversation],
    tasks: Sequence[Any],
    *,
    strategy: str = "chained",
    batch_size: int = 8,
    reuse_cache: bool | None = None,
    constrained: bool | str | Collection[str] | None = None,
    max_new_tokens: Mapping[str, int] | None = None,
    only_labelled: bool = False,
    context: Mapping[str, Sequence[ContextChunk]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> AnswerRun:
    """Answer every task about every conversation.

    Args:
        strategy: ``"independent"`` or ``"chained"`` (see the module docstring).
        reuse_cache: reuse the KV cache of the shared prefix within a conversation.
            Default: on for ``chained``, off for ``independent`` (which then batches
            prompts across conversations, grouped by task). With reuse, rows are
            conversations and ``independent`` reuses the transcript prefix.
        constrained: see :func:`resolve_constrained`.
        max_new_tokens: budget overrides by task name or kind.
        only_labelled: ask a task only of conversations carrying its gold label.
        context: reference material per conversation id (retrieved documents or labelled
            examples), placed in the renderer's context slot of every prompt.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if not tasks:
        raise ConfigError("no tasks to evaluate")
    if reuse_cache is None:
        reuse_cache = strategy == "chained"
    batch_size = max(1, int(batch_size))
    constrained_names = resolve_constrained(tasks, constrained)
    candidates = _Candidates(renderer, generator.stop_ids)
    budgets = {t.name: max_new_tokens_for(t, max_new_tokens) for t in tasks}
    timings = {t.name: TaskTiming(t.name) for t in tasks}
    results: dict[tuple[int, str], Answer] = {}
    context = context or {}

    def prompt(conv: Conversation, task: Any, prior: Sequence[TaskTurn] = ()) -> Encoded:
        return renderer.prompt(conv, task.instruction, answered=prior, context=context.get(conv.id, ()))
    say = progress or (lambda _msg: None)

    def asked(conv: Conversation, task: Any) -> bool:
        return not only_labelled or task.has_label(conv)

    def run_step(rows: KVBatch, task: Any, items: list[tuple[int, Any] | None]) -> list[Answer | None]:
        """Prefill + decode (or score) one task for the rows; ``items[r] = (conv index, Encoded)``."""
        before = StepStats(**vars(rows.stats))
        t0 = time.perf_counter()
        logits = rows.prefill([None if it is None else it[1].input_ids for it in items])
        answers: list[Answer | None] = [None] * len(items)
        is_constrained = task.name in constrained_names
        if is_constrained and task.labels:
            gens: list[Generation | None] = [None] * len(items)
            label_scores: list[dict[str, float] | None] = [None] * len(items)
            for r, it in enumerate(items):
                if it is None:
                    continue
                gens[r], label_scores[r] = _score_labels(rows, r, logits[r],
                                                         *candidates.get(task, conversations[it[0]]))
        else:
            schema = _guided_schema(task, constrained_names)
            guides = [None if it is None or schema is None else generator.guides.guide(schema)
                      for it in items]
            gens = [None if g is None else _close_list(g, schema)
                    for g in rows.decode(logits, [budgets[task.name]] * len(items),
                                         active=[it is not None for it in items], guides=guides)]
            label_scores = [None] * len(items)
        elapsed = time.perf_counter() - t0
        step = StepStats(
            rows=rows.stats.rows - before.rows,
            computed_tokens=rows.stats.computed_tokens - before.computed_tokens,
            new_tokens=rows.stats.new_tokens - before.new_tokens,
            prefill_seconds=rows.stats.prefill_seconds - before.prefill_seconds,
            decode_seconds=rows.stats.decode_seconds - before.decode_seconds,
        )
        if is_constrained and task.labels:
            step.new_tokens = sum(len(g.token_ids) for g in gens if g is not None)
        n_active = sum(it is not None for it in items)
        share = elapsed / n_active if n_active else 0.0
        computed = list(rows.last_computed)
        timings[task.name].add(n_active, step, sum(len(it[1].input_ids) for it in items if it is not None))
        for r, it in enumerate(items):
            if it is None:
                continue
            answers[r] = _answer(conversations[it[0]], task, gens[r], constrained=is_constrained,
                                 prompt_tokens=len(it[1].input_ids), computed=computed[r], seconds=share,
                                 scores=label_scores[r])
        return answers

    t_start = time.perf_counter()
    if not reuse_cache and strategy == "independent":
        # Batch across conversations: one task at a time, prompts sorted by length.
        for task in tasks:
            work = [(ci, prompt(conv, task))
                    for ci, conv in enumerate(conversations) if asked(conv, task)]
            work.sort(key=lambda w: len(w[1]))
            for start in range(0, len(work), batch_size):
                chunk = work[start:start + batch_size]
                rows = generator.rows(len(chunk), reuse=False)
                for (ci, _), a in zip(chunk, run_step(rows, task, list(chunk))):
                    results[(ci, task.name)] = a
                say(f"{task.name}: {min(start + batch_size, len(work))}/{len(work)}")
    else:
        # Rows are conversations; tasks are asked in order, each row keeping its cache.
        order = sorted(range(len(conversations)),
                       key=lambda ci: len(prompt(conversations[ci], tasks[0])))
        for start in range(0, len(order), batch_size):
            conv_idx = order[start:start + batch_size]
            rows = generator.rows(len(conv_idx), reuse=reuse_cache)
            answered: list[list[TaskTurn]] = [[] for _ in conv_idx]
            for task in tasks:
                items: list[tuple[int, Any] | None] = []
                for r, ci in enumerate(conv_idx):
                    conv = conversations[ci]
                    if not asked(conv, task):
                        items.append(None)
                        continue
                    prior = answered[r] if strategy == "chained" else []
                    items.append((ci, prompt(conv, task, prior)))
                if all(it is None for it in items):
                    continue
                for r, a in enumerate(run_step(rows, task, items)):
                    if a is None:
                        continue
                    results[(conv_idx[r], task.name)] = a
                    answered[r].append(TaskTurn(task.instruction, a.text.strip()))
            say(f"conversations {min(start + batch_size, len(order))}/{len(order)}")
    seconds = time.perf_counter() - t_start
    answers = [results[(ci, t.name)] for ci in range(len(conversations)) for t in tasks
               if (ci, t.name) in results]
    return AnswerRun(
        answers=answers, timings=timings, seconds=seconds, strategy=strategy, reuse_cache=bool(reuse_cache),
        batch_size=batch_size, n_conversations=len(conversations),
        extra={"constrained_tasks": sorted(constrained_names), "max_new_tokens": budgets},
    )


class TaskDialog:
    """One conversation's tasks asked one after another in one chat (the chained strategy),
    a prompt at a time, for a scheduler that decodes it among other work: the server's engine
    answers an analyze request as one dialog inside its running batch, so chat requests are
    answered while it runs. Each prompt extends the previous one (the transcript, the earlier
    questions and the model's own answers), so the dialog's KV row reuses its cached prefix.

    The scheduler's part::

        kv = generator.rows(1)
        while dialog.next():
            logits = dialog.prefill(kv)
            if dialog.scored:                 # a label task: scored at once
                dialog.score(kv, logits)
            else:                             # decoded in the batch; its KV row comes back
                seq = dialog.seq(owner)       # ... loop.add(kv, [seq], logits) ... loop.step()
                dialog.decoded(seq)           #     -> (seq, kv) when it ends
        dialog.run()                          # the answers, as answer_tasks gives them

    The answers equal ``answer_tasks(..., strategy="chained", batch_size=1)``'s for the same
    arguments (greedy), up to the float rounding of batched matmuls. No tasks: nothing to ask.
    """

    def __init__(self, generator: Generator, renderer: Renderer, conversation: Conversation,
                 tasks: Sequence[Any], *, constrained: bool | str | Collection[str] | None = True,
                 max_new_tokens: Mapping[str, int] | None = None,
                 context: Sequence[ContextChunk] = ()):
        self.gen = generator
        self.renderer = renderer
        self.conv = conversation
        self.tasks = list(tasks)
        self.context = tuple(context)
        self.constrained = resolve_constrained(tasks, constrained)
        self.budgets = {t.name: max_new_tokens_for(t, max_new_tokens) for t in tasks}
        self._candidates = _Candidates(renderer, generator.stop_ids)
        self.answers: list[Answer] = []
        self._answered: list[TaskTurn] = []
        self._prompt: Encoded | None = None
        self._computed = 0
        self._t0 = self._started = time.perf_counter()

    @property
    def task(self) -> Any:
        return self.tasks[len(self.answers)]

    @property
    def scored(self) -> bool:
        """The current task is answered by scoring its labels (no decoding)."""
        return self.task.name in self.constrained and bool(self.task.labels)

    def next(self) -> bool:
        """Move to the next unanswered task; False when every task is answered."""
        if len(self.answers) == len(self.tasks):
            return False
        self._prompt = self.renderer.prompt(self.conv, self.task.instruction, answered=self._answered,
                                            context=self.context)
        self._t0 = time.perf_counter()
        return True

    def prefill(self, kv: KVBatch) -> Any:
        """Run the current prompt on ``kv`` (one row), reusing its cached prefix; its logits."""
        assert self._prompt is not None
        logits = kv.prefill([self._prompt.input_ids])
        self._computed = kv.last_computed[0]
        return logits

    def score(self, kv: KVBatch, logits: Any) -> Answer:
        """Answer the current label task by its labels' log-likelihoods."""
        return self._record(*_score_labels(kv, 0, logits[0], *self._candidates.get(self.task, self.conv)))

    def seq(self, owner: Any = None) -> Any:
        """The current task's answer to decode (greedy, guided by its schema when constrained)."""
        from convtune.inference import Sampling, Seq

        schema = _guided_schema(self.task, self.constrained)
        guide = self.gen.guides.guide(schema) if schema is not None else None
        sampling = Sampling(max_tokens=self.budgets[self.task.name], stop_repeats=True)
        return Seq(self.gen, sampling, guide=guide, owner=owner, keep_kv=True, incremental=False)

    def decoded(self, seq: Any) -> Answer:
        """Record the decoded answer of the current task."""
        g = Generation(seq.token_ids, seq.text, seq.stopped)
        return self._record(_close_list(g, _guided_schema(self.task, self.constrained)), None)

    def _record(self, g: Generation, scores: dict[str, float] | None) -> Answer:
        assert self._prompt is not None
        task = self.task
        answer = _answer(self.conv, task, g, constrained=task.name in self.constrained,
                         prompt_tokens=len(self._prompt.input_ids), computed=self._computed,
                         seconds=time.perf_counter() - self._t0, scores=scores)
        self.answers.append(answer)
        self._answered.append(TaskTurn(task.instruction, g.text.strip()))
        return answer

    def run(self) -> AnswerRun:
        """The answers so far as an :class:`AnswerRun` (every task's, once :meth:`next` is False)."""
        timings = {t.name: TaskTiming(t.name) for t in self.tasks}
        for a in self.answers:
            t = timings[a.task]
            t.n, t.seconds, t.new_tokens = 1, a.seconds, len(a.token_ids)
            t.prompt_tokens, t.computed_prompt_tokens = a.prompt_tokens, a.computed_prompt_tokens
        return AnswerRun(
            answers=list(self.answers), timings=timings, seconds=time.perf_counter() - self._started,
            strategy="chained", reuse_cache=True, batch_size=1, n_conversations=1,
            extra={"constrained_tasks": sorted(self.constrained), "max_new_tokens": self.budgets})
