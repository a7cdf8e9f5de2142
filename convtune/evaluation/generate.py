"""Batched greedy generation over renderer prompts, KV-cache prefix reuse, constrained labels.

Everything here works on token ids that come from :class:`convtune.renderer.Renderer`;
no prompt text is built in this module.

The engine (:class:`Rows`) keeps one KV cache for a batch of *rows* (one row per
conversation being answered). Each row remembers the token ids it has already
run through the model ("live" tokens). A new prompt for a row is compared with
them: the longest common prefix is reused from the cache, cached tokens after
it are masked out (attention mask 0; dead columns are dropped when the cache is
re-packed before the next prefill), and only the rest is computed. Positions
are counted over live tokens only, so a row's tokens see exactly the positions
and keys they would see alone: left padding, masking and re-packing change
nothing but float rounding (tests assert identical greedy token ids). While
decoding, finished rows leave the computed batch once half of it has finished.

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

import functools
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from convtune.conversation import Conversation
from convtune.errors import ConfigError
from convtune.guided import close_truncated_list
from convtune.renderer import ContextChunk, Encoded, Renderer, TaskTurn

STRATEGIES = ("independent", "chained")

# Generation budget per task kind; a task may override with a ``max_new_tokens`` attribute.
DEFAULT_MAX_NEW_TOKENS: dict[str, int] = {"classification": 16, "structured": 192, "text": 128}

# End-of-turn tokens of common chat templates (used when present in the vocabulary).
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


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


def stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """EOS ids of the tokenizer and generation config, plus known end-of-turn tokens."""
    ids: set[int] = set()

    def add(x: Any) -> None:
        if x is None:
            return
        if isinstance(x, (list, tuple, set)):
            for y in x:
                add(y)
        else:
            ids.add(int(x))

    add(tokenizer.eos_token_id)
    add(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    vocab = tokenizer.get_vocab()
    for tok in _END_OF_TURN_TOKENS:
        if tok in vocab:
            ids.add(vocab[tok])
    if not ids:
        raise ConfigError("the tokenizer defines no end-of-sequence token; generation could not stop")
    return ids


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class Generation:
    """One greedy generation. ``token_ids`` includes the stop token when ``stopped``."""

    token_ids: list[int]
    text: str
    stopped: bool


@dataclass
class StepStats:
    """Work done by one prefill or decode call on a batch."""

    rows: int = 0
    computed_tokens: int = 0  # prompt tokens run through the model (after cache reuse)
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0


class Generator:
    """Greedy generation and label scoring for one (model, tokenizer), in eval mode, no grad."""

    def __init__(self, model: Any, tokenizer: Any, *, guides: Any = None):
        """``guides``: a :class:`convtune.guided.Guides` of this tokenizer to reuse (else built lazily)."""
        import torch

        self.torch = torch
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.stop_ids = stop_token_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.stop_ids))
        self._check_full_attention()
        model.eval()
        # transformers 5.x renamed forward(past_key_values=) to cache= (the old name warns until 5.40).
        import inspect

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(base.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self._guides: Any = guides
        #: time.monotonic() after which prefill/decode raise TimeoutError (None: no deadline).
        self.deadline: float | None = None

    @property
    def guides(self) -> Any:
        """Grammar guides for this tokenizer (:mod:`convtune.guided`), built on first use."""
        if self._guides is None:
            from convtune.guided import Guides

            vocab = max(len(self.tokenizer), int(getattr(self.model.config, "vocab_size", 0) or 0))
            self._guides = Guides(self.tokenizer, self.stop_ids, vocab)
        return self._guides

    @functools.cached_property
    def sentence_end_ids(self) -> frozenset[int]:
        """Token ids whose text ends a sentence or a line (``.``, ``!``, ``?``, newline)."""
        vocab = len(self.tokenizer)
        texts = self.tokenizer.batch_decode([[i] for i in range(vocab)])
        return frozenset(i for i, t in enumerate(texts) if any(ch in t for ch in ".!?\n"))

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TimeoutError("generation passed its deadline")

    def forward(self, **kwargs: Any) -> Any:
        """The model's forward with the KV cache passed under this transformers version's name."""
        kwargs[self.cache_kw] = kwargs.pop("cache")
        return self.model(**kwargs)

    def _check_full_attention(self) -> None:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(config=self.model.config)
        if any(type(layer) is not DynamicLayer for layer in cache.layers):
            raise ConfigError(
                "the model uses sliding-window or hybrid attention; convtune's evaluator supports "
                "full-attention decoder models (Llama, SmolLM2, Qwen2 ...)"
            )

    def rows(self, n: int, *, reuse: bool = True, adapter_names: Sequence[str] | None = None) -> Rows:
        """A fresh batch of ``n`` rows. ``reuse=False`` recomputes every prompt from scratch.
        ``adapter_names``: one PEFT adapter per row (``"__base__"``: none), for mixed batches."""
        return Rows(self, n, reuse=reuse, adapter_names=adapter_names)

    def decode_text(self, ids: Sequence[int]) -> str:
        body = list(ids)
        if body and body[-1] in self.stop_ids:
            body = body[:-1]
        return self.tokenizer.decode(body, skip_special_tokens=True)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int | Sequence[int],
        *,
        batch_size: int = 8,
    ) -> list[Generation]:
        """Greedy generations for independent prompts, batched by length (left padding)."""
        n = len(prompts)
        budgets = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
        order = sorted(range(n), key=lambda i: len(prompts[i]))
        out: list[Generation | None] = [None] * n
        for start in range(0, n, max(1, batch_size)):
            idx = order[start:start + batch_size]
            rows = self.rows(len(idx), reuse=False)
            logits = rows.prefill([list(prompts[i]) for i in idx])
            for i, g in zip(idx, rows.decode(logits, [budgets[i] for i in idx])):
                out[i] = g
        return out  # type: ignore[return-value]


#: A greedy loop: the last ``LOOP_COPIES * p`` generated tokens are one cycle of ``p`` tokens
#: (``LOOP_MIN_PERIOD <= p <= LOOP_MAX_PERIOD``) repeated back to back.
LOOP_MIN_PERIOD = 4
LOOP_MAX_PERIOD = 64
LOOP_COPIES = 3


def loop_period(ids: Sequence[int]) -> int:
    """The shortest cycle length ``p`` that the tail of ``ids`` repeats :data:`LOOP_COPIES`
    times back to back, or 0. Checks only the tail: integer comparisons, cheap per step."""
    n = len(ids)
    if n < LOOP_COPIES * LOOP_MIN_PERIOD:
        return 0
    last = ids[-1]
    for p in range(LOOP_MIN_PERIOD, min(LOOP_MAX_PERIOD, n // LOOP_COPIES) + 1):
        if all(ids[n - 1 - k * p] == last for k in range(1, LOOP_COPIES)):  # cheap filter first
            tail = ids[n - p:]
            if all(ids[n - (k + 1) * p:n - k * p] == tail for k in range(1, LOOP_COPIES)):
                return p
    return 0


#: A repeated passage: the last ``REPEAT_MIN_TOKENS`` generated tokens already occurred, whole
#: and not overlapping, earlier in the same answer (a summary saying a sentence again).
REPEAT_MIN_TOKENS = 24


def repeated_span(ids: Sequence[int], seen: dict[tuple[int, ...], int]) -> int:
    """Length of the passage at the tail of ``ids`` that repeats an earlier one, or 0.

    ``seen`` maps each window of :data:`REPEAT_MIN_TOKENS` tokens to where it first started;
    the caller keeps one per row and calls this after every appended token (one dict lookup),
    so the repeat is caught as soon as its first window is complete: trimming the window
    leaves the first telling.
    """
    n, w = len(ids), REPEAT_MIN_TOKENS
    if n < w:
        return 0
    start = n - w
    first = seen.setdefault(tuple(ids[start:]), start)
    return w if first + w <= start else 0  # new, or overlapping itself (a cycle: loop_period's case)


#: A retold sentence: a finished sentence of at least ``RETELL_MIN_WORDS`` words whose word
#: trigrams mostly (``RETELL_OVERLAP``) occur earlier in the same answer, small changes and all.
RETELL_MIN_WORDS = 6
RETELL_OVERLAP = 0.6
_WORD = re.compile(r"\w+")


def retold(earlier: str, sentence: str) -> bool:
    """Whether ``sentence`` mostly says again what ``earlier`` (the answer so far) said."""
    words = _WORD.findall(sentence.lower())
    if len(words) < RETELL_MIN_WORDS:
        return False
    before = _WORD.findall(earlier.lower())
    seen = {tuple(before[i:i + 3]) for i in range(len(before) - 2)}
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return sum(g in seen for g in grams) >= RETELL_OVERLAP * len(grams)


class Rows:
    """A batch of token sequences sharing one KV cache (see the module docstring)."""

    def __init__(self, gen: Generator, n: int, *, reuse: bool = True,
                 adapter_names: Sequence[str] | None = None):
        self.gen = gen
        self.n = n
        self.reuse = reuse
        if adapter_names is not None and len(adapter_names) != n:
            raise ValueError(f"expected {n} adapter names, got {len(adapter_names)}")
        self.adapter_names = list(adapter_names) if adapter_names is not None else None
        self.stats = StepStats()
        self._reset()

    def _reset(self) -> None:
        torch = self.gen.torch
        self.cache = None
        self.mask = torch.zeros(self.n, 0, dtype=torch.long, device=self.gen.device)
        self.live: list[list[int]] = [[] for _ in range(self.n)]  # token ids run through the model
        self.cols: list[list[int]] = [[] for _ in range(self.n)]  # their cache columns
        self.last_computed: list[int] = [0] * self.n  # tokens each row computed in the last prefill

    def _forward(self, ids: Any, block_mask: Any, positions: Any, logits_to_keep: int) -> Any:
        from transformers import DynamicCache

        torch = self.gen.torch
        if self.cache is None:
            self.cache = DynamicCache(config=self.gen.model.config)
        self.mask = torch.cat([self.mask, block_mask], dim=1)
        extra = {"adapter_names": self.adapter_names} if self.adapter_names is not None else {}
        out = self.gen.forward(
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
            **extra,
        )
        return out.logits

    def _compact(self) -> None:
        """Drop masked-out cache columns (old answers, divergent tails, stale padding).

        Rows are re-packed left-padded to the longest live row; positions follow the
        live tokens, so this changes what is stored, never what a token attends to.
        Without it, dead columns pile up over a conversation and slow every decode step.
        """
        if self.cache is None:
            return
        torch = self.gen.torch
        width = max(len(c) for c in self.cols)
        if width == self.mask.shape[1]:
            return
        dev = self.gen.device
        idx = torch.zeros(self.n, width, dtype=torch.long)
        mask = torch.zeros(self.n, width, dtype=torch.long)
        for r, cols in enumerate(self.cols):
            off = width - len(cols)
            idx[r, off:] = torch.tensor(cols, dtype=torch.long)
            mask[r, off:] = 1
            self.cols[r] = list(range(off, width))
        idx, mask = idx.to(dev), mask.to(dev)
        keep = mask[:, None, :, None].bool()
        for layer in self.cache.layers:
            gather = idx[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
            # Padding columns are zeroed: masked, and never NaN/inf that could leak through 0 * x.
            layer.keys = torch.where(keep, layer.keys.gather(2, gather), 0.0)
            layer.values = torch.where(keep, layer.values.gather(2, gather), 0.0)
        self.mask = mask

    def prefill(self, prompts: Sequence[Sequence[int] | None]) -> Any:
        """Run each row's prompt (``None``: row idle) through the model, reusing the
        longest cached prefix. Returns next-token logits ``(n, vocab)`` (float32)."""
        torch = self.gen.torch
        if len(prompts) != self.n:
            raise ValueError(f"expected {self.n} prompts, got {len(prompts)}")
        self.gen.check_deadline()
        t0 = time.perf_counter()
        if not self.reuse:
            self._reset()
        suffixes: list[list[int]] = []
        for r, p in enumerate(prompts):
            if p is None:
                suffixes.append([])
                continue
            if not p:
                raise ValueError("empty prompt")
            keep = min(_common_prefix(self.live[r], p), len(p) - 1)  # >= 1 token to get logits
            if keep < len(self.live[r]):
                self.mask[r, self.cols[r][keep:]] = 0
                del self.live[r][keep:], self.cols[r][keep:]
            suffixes.append(list(p[keep:]))
        self._compact()
        width = max(len(s) for s in suffixes)
        if width == 0:
            raise ValueError("every row is idle")
        base = self.mask.shape[1]
        ids = torch.full((self.n, width), self.gen.pad_id, dtype=torch.long)
        block = torch.zeros((self.n, width), dtype=torch.long)
        pos = torch.zeros((self.n, width), dtype=torch.long)
        for r, s in enumerate(suffixes):
            if not s:
                continue
            off = width - len(s)  # left padding inside the block
            ids[r, off:] = torch.tensor(s)
            block[r, off:] = 1
            pos[r, off:] = torch.arange(len(self.live[r]), len(self.live[r]) + len(s))
            self.live[r].extend(s)
            self.cols[r].extend(range(base + off, base + width))
        dev = self.gen.device
        logits = self._forward(ids.to(dev), block.to(dev), pos.to(dev), logits_to_keep=1)
        self.last_computed = [len(s) for s in suffixes]
        self.stats.rows += sum(p is not None for p in prompts)
        self.stats.computed_tokens += sum(len(s) for s in suffixes)
        self.stats.prefill_seconds += time.perf_counter() - t0
        return logits[:, -1, :].float()

    def decode(self, logits: Any, max_new_tokens: Sequence[int],
               active: Sequence[bool] | None = None,
               guides: Sequence[Any | None] | None = None) -> list[Generation | None]:
        """Greedy decoding from the logits ``prefill`` returned. Rows stop at a stop token or
        their budget; inactive rows return ``None``. ``guides[r]`` (a :class:`convtune.guided.Guide`)
        restricts row ``r`` to tokens that keep its answer valid for a JSON schema.

        An unguided row whose last tokens repeat one cycle :data:`LOOP_COPIES` times
        (:func:`loop_period`) has fallen into a greedy loop, and one that says a passage of
        :data:`REPEAT_MIN_TOKENS`+ tokens again (:func:`repeated_span`) or ends a sentence that
        retells an earlier one (:func:`retold`) is going round: it stops there (``stopped``
        False) with the repeats trimmed, one telling kept. Other rows are unaffected.

        When half the rows of the computed batch have finished, the batch shrinks to the
        running rows (a copy of their cache), so one long answer does not make every
        finished row pay for its steps; the rows are merged back at the end.
        """
        from transformers import DynamicCache

        from convtune.guided import mask_rows_

        torch = self.gen.torch
        t0 = time.perf_counter()
        active = list(active) if active is not None else [True] * self.n
        done = [not a or m <= 0 for a, m in zip(active, max_new_tokens)]
        out: list[list[int]] = [[] for _ in range(self.n)]
        stopped = [False] * self.n
        dev = self.gen.device
        group = list(range(self.n))  # rows of the batch being computed, in cache order
        cache, mask = self.cache, self.mask
        parents: list[tuple[Any, Any, list[int]]] = []
        guides = list(guides) if guides is not None else [None] * self.n
        seen: list[dict[tuple[int, ...], int]] = [{} for _ in range(self.n)]  # for repeated_span
        sentence = [0] * self.n  # where each row's current sentence began in out[r]
        ends = self.gen.sentence_end_ids
        while True:
            self.gen.check_deadline()
            mask_rows_(logits, [guides[r] if not done[r] else None for r in group])
            nxt = logits.argmax(dim=-1).tolist()
            for g, r in enumerate(group):
                if done[r]:
                    continue
                if guides[r] is not None:
                    guides[r].advance(nxt[g])
                out[r].append(nxt[g])
                if nxt[g] in self.gen.stop_ids:
                    done[r] = stopped[r] = True
                elif guides[r] is None and (cycle := loop_period(out[r])):
                    del out[r][len(out[r]) - (LOOP_COPIES - 1) * cycle:]  # keep one copy of the cycle
                    done[r] = True
                elif guides[r] is None and (again := repeated_span(out[r], seen[r])):
                    del out[r][len(out[r]) - again:]  # the first telling stays
                    done[r] = True
                elif guides[r] is None and nxt[g] in ends:
                    said, now = out[r][:sentence[r]], out[r][sentence[r]:]
                    if retold(self.gen.decode_text(said), self.gen.decode_text(now)):
                        del out[r][sentence[r]:]
                        done[r] = True
                    sentence[r] = len(out[r])
                elif len(out[r]) >= max_new_tokens[r]:
                    done[r] = True
            running = [g for g, r in enumerate(group) if not done[r]]
            if not running:
                break
            if len(group) > 1 and len(running) <= len(group) // 2:
                parents.append((cache, mask, group))
                idx = torch.tensor(running, dtype=torch.long, device=dev)
                cache = DynamicCache([(layer.keys.index_select(0, idx), layer.values.index_select(0, idx))
                                      for layer in cache.layers])
                mask = mask.index_select(0, idx)
                nxt = [nxt[g] for g in running]
                group = [group[g] for g in running]
            base = mask.shape[1]
            k = len(group)
            ids = torch.full((k, 1), self.gen.pad_id, dtype=torch.long)
            block = torch.zeros((k, 1), dtype=torch.long)
            pos = torch.zeros((k, 1), dtype=torch.long)
            for g, r in enumerate(group):
                if done[r]:
                    continue
                ids[g, 0] = nxt[g]
                block[g, 0] = 1
                pos[g, 0] = len(self.live[r])
                self.live[r].append(nxt[g])
                self.cols[r].append(base)
            mask = torch.cat([mask, block.to(dev)], dim=1)
            logits = self.gen.forward(input_ids=ids.to(dev), attention_mask=mask, position_ids=pos.to(dev),
                                      cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]
        # Merge shrunk batches back into their parents (dead columns are padded with mask 0).
        while parents:
            p_cache, p_mask, p_group = parents.pop()
            extra = mask.shape[1] - p_mask.shape[1]
            where = torch.tensor([p_group.index(r) for r in group], dtype=torch.long, device=dev)
            layers = []
            for parent, child in zip(p_cache.layers, cache.layers):
                merged = []
                for pt, ct in ((parent.keys, child.keys), (parent.values, child.values)):
                    t = torch.cat([pt, pt.new_zeros(pt.shape[0], pt.shape[1], extra, pt.shape[3])], dim=2)
                    t[where] = ct
                    merged.append(t)
                layers.append(tuple(merged))
            cache = DynamicCache(layers)
            p_mask = torch.cat([p_mask, p_mask.new_zeros(p_mask.shape[0], extra)], dim=1)
            p_mask[where] = mask
            mask, group = p_mask, p_group
        self.cache, self.mask = cache, mask
        self.stats.new_tokens += sum(len(o) for o in out)
        self.stats.decode_seconds += time.perf_counter() - t0
        return [
            Generation(out[r], self.gen.decode_text(out[r]), stopped[r]) if active[r] else None
            for r in range(self.n)
        ]

    def score(self, row: int, logits: Any, candidates: Sequence[Sequence[int]], *,
              chunk: int = 8) -> list[float]:
        """Log-likelihood of each candidate continuation of ``row``'s last prompt.

        ``logits`` are the row's next-token logits from :meth:`prefill`. The row's live
        cache is copied once per chunk of candidates; the batch state is left unchanged.
        """
        from transformers import DynamicCache

        torch = self.gen.torch
        t0 = time.perf_counter()
        first = torch.log_softmax(logits.float(), dim=-1)
        scores = [float(first[c[0]]) for c in candidates]
        rest = [i for i, c in enumerate(candidates) if len(c) > 1]
        if rest:
            dev = self.gen.device
            cols = torch.tensor(self.cols[row], dtype=torch.long, device=dev)
            n_live = len(self.cols[row])
            kv = [(layer.keys[row:row + 1].index_select(2, cols),
                   layer.values[row:row + 1].index_select(2, cols)) for layer in self.cache.layers]
            for start in range(0, len(rest), chunk):
                idx = rest[start:start + chunk]
                k = len(idx)
                width = max(len(candidates[i]) - 1 for i in idx)
                ids = torch.full((k, width), self.gen.pad_id, dtype=torch.long)
                block = torch.zeros((k, width), dtype=torch.long)
                for j, i in enumerate(idx):
                    feed = candidates[i][:-1]
                    ids[j, : len(feed)] = torch.tensor(feed)  # right padding: never seen by real tokens
                    block[j, : len(feed)] = 1
                pos = torch.arange(n_live, n_live + width).unsqueeze(0).expand(k, -1)
                cache = DynamicCache([(a.expand(k, -1, -1, -1), b.expand(k, -1, -1, -1)) for a, b in kv])
                mask = torch.cat([torch.ones(k, n_live, dtype=torch.long, device=dev), block.to(dev)], dim=1)
                out = self.gen.forward(input_ids=ids.to(dev), attention_mask=mask, position_ids=pos.to(dev),
                                       cache=cache, use_cache=True)
                logp = torch.log_softmax(out.logits.float(), dim=-1)
                for j, i in enumerate(idx):
                    target = torch.tensor(candidates[i][1:], device=dev)
                    steps = torch.arange(len(target), device=dev)
                    scores[i] += float(logp[j, steps, target].sum())
        self.stats.decode_seconds += time.perf_counter() - t0
        return scores


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

    def run_step(rows: Rows, task: Any, items: list[tuple[int, Any] | None]) -> list[Answer | None]:
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
                labels, texts, ids = candidates.get(task, conversations[it[0]])
                s = rows.score(r, logits[r], ids)
                best = max(range(len(labels)), key=lambda i: s[i])
                gens[r] = Generation(list(ids[best]), texts[best], stopped=True)
                label_scores[r] = {str(lab): sc for lab, sc in zip(labels, s)}
        else:
            schema = task.output_schema() if is_constrained else None
            guides = [None if it is None or schema is None else generator.guides.guide(schema)
                      for it in items]
            gens = rows.decode(logits, [budgets[task.name]] * len(items),
                               active=[it is not None for it in items], guides=guides)
            if schema is not None and schema.get("type") == "array":
                for g in gens:  # out of budget mid-list: keep the items the model finished
                    if g is not None and not g.stopped:
                        g.text = close_truncated_list(g.text) or g.text
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
            g = gens[r]
            answers[r] = Answer(
                conversation_id=conversations[it[0]].id, task=task.name, text=g.text, token_ids=g.token_ids,
                stopped=g.stopped, constrained=is_constrained, prompt_tokens=len(it[1].input_ids),
                computed_prompt_tokens=computed[r], seconds=share, label_scores=label_scores[r],
                confidence=label_share(label_scores[r], g.text) if label_scores[r] else None,
            )
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
