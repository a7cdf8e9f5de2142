"""Conversations -> tokenized multi-task SFT examples.

Each conversation becomes ONE example: its transcript once, then every
sampled task as a follow-up user turn with its answer (see
:mod:`convtune.renderer`). For every pass over the data (an "epoch") the
conversation order, the subset of tasks and their order are re-drawn from a
seeded RNG, so the whole training stream is a pure function of the config and
a resumed run sees exactly the examples it would have seen.

Per-task sampling weights ``w_t`` (default 1): a conversation appears
``r = max(w_t)`` times per epoch in expectation (over its labelled tasks), and
each appearance includes task ``t`` with probability ``w_t / r``. So every
task is trained ``w_t`` times per labelled conversation and epoch in
expectation, and weight 0 leaves a task out.

Nothing is truncated blindly: an example longer than ``max_seq_len`` is
re-rendered with a smaller transcript budget (turns dropped from the middle,
with a marker, by the renderer), then loses trailing tasks, and is dropped
only if a single task does not fit; each case is counted in the stats.
"""

from __future__ import annotations

import hashlib
import math
import random
from array import array
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from convtune.conversation import Conversation
from convtune.errors import DataValidationError, Problem
from convtune.renderer import ContextChunk, Encoded, Renderer, TaskTurn


@dataclass
class Example:
    conv_id: str
    tasks: list[str]
    input_ids: list[int]
    loss_mask: list[int]
    shortened: bool = False  # transcript budget lowered below the renderer's to fit max_seq_len
    omitted_turns: bool = False  # middle turns left out (by the renderer's budget or the shortening)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class FitStats:
    """How examples were fitted into ``max_seq_len``."""

    examples: int = 0
    pairs: int = 0
    tokens: int = 0
    answer_tokens: int = 0
    longest: int = 0
    pairs_per_task: Counter = field(default_factory=Counter)
    omitted_turns_examples: int = 0  # examples whose transcript lost middle turns (marked in the text)
    shortened_transcripts: int = 0  # of those, transcript budget lowered below the renderer's to fit
    dropped_pairs: int = 0  # tasks left out of examples that did not fit otherwise
    dropped_examples: int = 0  # not even one task fitted

    def as_dict(self) -> dict[str, Any]:
        return {
            "examples": self.examples, "pairs": self.pairs, "tokens": self.tokens,
            "answer_tokens": self.answer_tokens, "longest": self.longest,
            "mean_length": round(self.tokens / self.examples, 1) if self.examples else 0,
            "pairs_per_task": dict(sorted(self.pairs_per_task.items())),
            "omitted_turns_examples": self.omitted_turns_examples,
            "shortened_transcripts": self.shortened_transcripts,
            "dropped_pairs": self.dropped_pairs, "dropped_examples": self.dropped_examples,
        }


class ExampleBuilder:
    """Renders (conversation, tasks) into examples that fit ``max_seq_len``."""

    def __init__(self, renderer: Renderer, max_seq_len: int):
        self.renderer = renderer
        self.max_seq_len = max_seq_len
        self.min_transcript_tokens = min(renderer.max_transcript_tokens, 128)
        self._renderers: dict[int, Renderer] = {renderer.max_transcript_tokens: renderer}

    def _with_budget(self, budget: int) -> Renderer:
        r = self._renderers.get(budget)
        if r is None:
            base = self.renderer
            r = Renderer(base.tokenizer, system_prompt=base.system_prompt,
                         max_transcript_tokens=budget, max_context_tokens=base.max_context_tokens)
            self._renderers[budget] = r
        return r

    def _encode_fitting(self, conv: Conversation, turns: list[TaskTurn],
                        context: Sequence[ContextChunk]) -> tuple[Encoded, bool]:
        """Encode, lowering the transcript budget while too long. Returns (encoded, shortened)."""
        budget = self.renderer.max_transcript_tokens
        enc = self.renderer.encode(conv, turns, context)
        shortened = False
        for _ in range(8):
            over = len(enc) - self.max_seq_len
            if over <= 0 or budget <= self.min_transcript_tokens:
                break
            budget = max(self.min_transcript_tokens, budget - over - 16)
            enc = self._with_budget(budget).encode(conv, turns, context)
            shortened = True
        return enc, shortened

    def build(self, conv: Conversation, tasks: Sequence[Any], stats: FitStats,
              context: Sequence[ContextChunk] = ()) -> Example | None:
        chat = [t for t in tasks if getattr(t, "chat", False)]
        if chat:
            return self._build_chat(conv, chat[0], stats)
        turns = [TaskTurn(t.instruction, t.render_target(t.gold(conv))) for t in tasks]
        kept = list(tasks)
        enc, shortened = self._encode_fitting(conv, turns, context)
        while len(enc) > self.max_seq_len and len(turns) > 1:
            turns.pop()
            kept.pop()
            stats.dropped_pairs += 1
            enc, shortened = self._encode_fitting(conv, turns, context)
        if len(enc) > self.max_seq_len:
            stats.dropped_examples += 1
            stats.dropped_pairs += len(turns)
            return None
        stats.examples += 1
        stats.pairs += len(kept)
        stats.tokens += len(enc)
        stats.answer_tokens += sum(enc.loss_mask)
        stats.longest = max(stats.longest, len(enc))
        stats.pairs_per_task.update(t.name for t in kept)
        stats.shortened_transcripts += int(shortened)
        stats.omitted_turns_examples += int(enc.omitted_turns > 0)
        return Example(conv.id, [t.name for t in kept], enc.input_ids, enc.loss_mask,
                       shortened=shortened, omitted_turns=enc.omitted_turns > 0)


    def _build_chat(self, conv: Conversation, task: Any, stats: FitStats) -> Example | None:
        """Chat-format example: loss on every assistant (agent) message; when too long, the
        oldest exchanges go first (the system message stays)."""
        msgs = self.renderer.conversation_chat(conv)
        system = msgs[:1] if msgs and msgs[0]["role"] == "system" else []
        body = msgs[len(system):]
        enc = self.renderer.encode_chat(system + body, add_generation_prompt=False)
        dropped = False
        while len(enc) > self.max_seq_len and len(body) > 2:
            body = body[2:]  # one user + assistant exchange
            dropped = True
            enc = self.renderer.encode_chat(system + body, add_generation_prompt=False)
        if len(enc) > self.max_seq_len or not any(enc.loss_mask):
            stats.dropped_examples += 1
            stats.dropped_pairs += 1
            return None
        stats.examples += 1
        stats.pairs += 1
        stats.tokens += len(enc)
        stats.answer_tokens += sum(enc.loss_mask)
        stats.longest = max(stats.longest, len(enc))
        stats.pairs_per_task.update([task.name])
        stats.omitted_turns_examples += int(dropped)
        return Example(conv.id, [task.name], enc.input_ids, enc.loss_mask, omitted_turns=dropped)


def labelled_tasks(conv: Conversation, tasks: Sequence[Any], weights: dict[str, float]) -> list[Any]:
    return [t for t in tasks if weights.get(t.name, 1.0) > 0 and t.has_label(conv)]


def sample_epoch(convs: Sequence[Conversation], tasks: Sequence[Any], weights: dict[str, float],
                 seed: int, epoch: int) -> list[tuple[Conversation, list[Any]]]:
    """One epoch of (conversation, ordered task subset) occurrences, shuffled, from a seeded RNG."""
    rng = random.Random(f"convtune-train:{seed}:{epoch}")
    occurrences: list[tuple[Conversation, list[Any]]] = []
    for conv in convs:
        labelled = labelled_tasks(conv, tasks, weights)
        if not labelled:
            continue
        w = {t.name: weights.get(t.name, 1.0) for t in labelled}
        r = max(w.values())
        n = int(r) + (1 if rng.random() < r - int(r) else 0)
        for _ in range(n):
            chosen = [t for t in labelled if w[t.name] >= r or rng.random() < w[t.name] / r]
            rng.shuffle(chosen)
            occurrences.append((conv, chosen))
    rng.shuffle(occurrences)
    return occurrences


@dataclass
class TrainingStream:
    """The materialized, ordered training examples and the step count they give."""

    examples: list[Example]
    max_steps: int
    passes: int
    stats: FitStats

    def fingerprint(self) -> str:
        """Hash of every token and loss-mask bit in training order: a resumed run must see the same
        stream (same data, tasks, tokenizer and sampling) for "continue from step N" to mean anything."""
        h = hashlib.sha256()
        for ex in self.examples:
            h.update(array("l", ex.input_ids).tobytes())
            h.update(bytes(ex.loss_mask))
        return h.hexdigest()[:16]


def build_training_stream(
    builder: ExampleBuilder,
    convs: Sequence[Conversation],
    tasks: Sequence[Any],
    weights: dict[str, float],
    *,
    seed: int,
    epochs: int,
    batch_size: int,
    grad_accum: int,
    max_steps: int | None = None,
    max_tokens_budget: int | None = None,
    source: str = "train",
    context: Mapping[str, Sequence[ContextChunk]] | None = None,
) -> TrainingStream:
    """Examples for every optimizer step, in training order (the trainer reads them sequentially).

    ``max_steps`` (if set) wins over ``epochs``: as many passes are drawn as the
    steps need. ``max_tokens_budget`` then cuts the stream at the first step
    whose cumulative tokens reach the budget. ``context``: reference material per
    conversation id (retrieved few-shot examples).
    """
    per_step = batch_size * grad_accum
    stats = FitStats()
    examples: list[Example] = []
    passes = 0
    needed = None if max_steps is None else max_steps * per_step
    while True:
        if needed is None and passes >= epochs:
            break
        if needed is not None and len(examples) >= needed:
            break
        before = len(examples)
        for conv, chosen in sample_epoch(convs, tasks, weights, seed, passes):
            ex = builder.build(conv, chosen, stats, (context or {}).get(conv.id, ()))
            if ex is not None:
                examples.append(ex)
        passes += 1
        if len(examples) == before and (needed is not None or passes >= epochs):
            break  # a pass yielded nothing: more passes never will
    if not examples:
        raise DataValidationError([Problem(
            source, None, None,
            f"no training example fits train.max_seq_len ({builder.max_seq_len} tokens) even with the "
            f"shortest transcript; raise train.max_seq_len ({stats.dropped_examples} dropped)",
        )])
    steps = math.ceil(math.ceil(len(examples) / batch_size) / grad_accum)
    if max_steps is not None:
        steps = min(steps, max_steps)
    if max_tokens_budget is not None:
        total = 0
        for k in range(steps):
            total += sum(len(e) for e in examples[k * per_step:(k + 1) * per_step])
            if total >= max_tokens_budget:
                steps = k + 1
                break
    examples = examples[: steps * per_step]
    # Stats describe what will actually be trained (drops: counted over every example drawn).
    trained = FitStats(dropped_pairs=stats.dropped_pairs, dropped_examples=stats.dropped_examples)
    for ex in examples:
        trained.shortened_transcripts += int(ex.shortened)
        trained.omitted_turns_examples += int(ex.omitted_turns)
        trained.examples += 1
        trained.pairs += len(ex.tasks)
        trained.tokens += len(ex)
        trained.answer_tokens += sum(ex.loss_mask)
        trained.longest = max(trained.longest, len(ex))
        trained.pairs_per_task.update(ex.tasks)
    return TrainingStream(examples=examples, max_steps=steps, passes=passes, stats=trained)


def build_eval_examples(builder: ExampleBuilder, convs: Sequence[Conversation], tasks: Sequence[Any],
                        weights: dict[str, float], context: Mapping[str, Sequence[ContextChunk]] | None = None
                        ) -> tuple[list[Example], FitStats]:
    """Every validation conversation once, with all its labelled tasks in config order (no sampling)."""
    stats = FitStats()
    out = []
    for conv in convs:
        chosen = labelled_tasks(conv, tasks, weights)
        if chosen:
            ex = builder.build(conv, chosen, stats, (context or {}).get(conv.id, ()))
            if ex is not None:
                out.append(ex)
    return out, stats


def to_hf_dataset(examples: Sequence[Example]):
    """A pre-tokenized dataset SFTTrainer recognises: ``input_ids`` + ``assistant_masks`` (the loss mask)."""
    from datasets import Dataset

    return Dataset.from_dict({
        "input_ids": [e.input_ids for e in examples],
        "assistant_masks": [e.loss_mask for e in examples],
    })


#: Automatic validation size: this share of the data, at most AUTO_VALIDATION_MAX conversations.
AUTO_VALIDATION_FRACTION = 0.2
AUTO_VALIDATION_MAX = 1000


def split_validation(convs: list[Conversation], fraction: float | None, seed: int,
                     strata: Sequence[Any] | None = None) -> tuple[list[Conversation], list[Conversation]]:
    """Hold out a seeded validation split (never the test set: it comes from training data).

    ``fraction`` None is "auto": 20% of the conversations, at most 1,000. ``strata`` (one key per
    conversation, e.g. its intent label; None = no label) makes the split stratified: each
    stratum gives its share (largest remainders), and a stratum of one conversation stays in
    training, so validation never holds a label training has not seen.
    """
    if fraction is None:
        n_val = min(AUTO_VALIDATION_MAX, round(AUTO_VALIDATION_FRACTION * len(convs)))
    elif fraction <= 0:
        n_val = 0
    else:
        n_val = max(1, round(fraction * len(convs)))
    n_val = min(len(convs) - 1, n_val)
    if n_val <= 0 or len(convs) < 2:
        return list(convs), []
    rng = random.Random(f"convtune-split:{seed}")
    if strata is None:
        idx = list(range(len(convs)))
        rng.shuffle(idx)
        val = set(idx[:n_val])
    else:
        groups: dict[Any, list[int]] = {}
        for i, key in enumerate(strata):
            groups.setdefault(key, []).append(i)
        share = n_val / len(convs)
        quota = {}
        for key, members in groups.items():
            rng.shuffle(members)
            quota[key] = share * len(members) if len(members) > 1 else 0.0
        take = {key: int(q) for key, q in quota.items()}
        rest = n_val - sum(take.values())
        by_remainder = sorted((key for key in groups if len(groups[key]) > 1),
                              key=lambda key: (-(quota[key] - take[key]), str(key)))
        for key in by_remainder[:max(0, rest)]:
            take[key] += 1
        val = {i for key, members in groups.items() for i in members[:min(take[key], len(members) - 1)]}
    return [c for i, c in enumerate(convs) if i not in val], [c for i, c in enumerate(convs) if i in val]
