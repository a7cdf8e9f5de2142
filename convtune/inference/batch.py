"""A batch of token sequences sharing one KV cache: prefill with prefix reuse, select, join.

Each row remembers the token ids it has already run through the model ("live"
tokens) and their cache columns. A new prompt for a row is compared with them: the
longest common prefix is reused from the cache, cached tokens after it are masked out
(attention mask 0; dead columns are dropped when the cache is re-packed before the next
prefill), and only the rest is computed. Positions are counted over live tokens only, so
a row's tokens see exactly the positions and keys they would see alone: left padding,
masking, re-packing, selecting rows and concatenating batches change nothing but float
rounding (tests assert identical greedy token ids).

* :meth:`KVBatch.prefill`: each row's prompt, reusing its cached prefix.
* :meth:`KVBatch.select`: rows by index, copied (finished rows leave; one prefill copied to
  ``n`` rows for ``n > 1`` and best-of, by repeating its index).
* :meth:`KVBatch.join`: batches' rows in one batch (requests joining a running batch).
* :meth:`KVBatch.step`: one token per row (a decode step).
* :meth:`KVBatch.score`: log-likelihoods of candidate continuations of a row (label answers).
* :meth:`KVBatch.decode`: decode every row to the end with :class:`~convtune.inference.decode.DecodeLoop`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Generation:
    """One decoded answer. ``token_ids`` includes the end-of-turn token when ``stopped``."""

    token_ids: list[int]
    text: str
    stopped: bool


@dataclass
class StepStats:
    """Work done by the prefill and decode calls on a batch."""

    rows: int = 0
    computed_tokens: int = 0  # prompt tokens run through the model (after cache reuse)
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class KVBatch:
    """Rows sharing one KV cache (see the module docstring)."""

    def __init__(self, gen: Any, n: int, *, reuse: bool = True, adapter_names: Sequence[str] | None = None):
        """``gen``: the :class:`~convtune.inference.model.Generator` running the model.
        ``reuse=False`` recomputes every prompt from scratch. ``adapter_names``: one PEFT adapter
        per row (``"__base__"``: none), for mixed batches."""
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
        self.cache: Any = None
        self.mask = torch.zeros(self.n, 0, dtype=torch.long, device=self.gen.device)
        self.live: list[list[int]] = [[] for _ in range(self.n)]  # token ids run through the model
        self.cols: list[list[int]] = [[] for _ in range(self.n)]  # their cache columns
        self.last_computed: list[int] = [0] * self.n  # tokens each row computed in the last prefill

    # ---- rows ---------------------------------------------------------------------------------

    def select(self, rows: Sequence[int]) -> KVBatch:
        """A new batch of these rows (copies; an index may repeat)."""
        from convtune.inference.kvcache import KVCache, rows_with_room

        torch = self.gen.torch
        out = KVBatch.__new__(KVBatch)
        out.gen, out.n, out.reuse, out.stats = self.gen, len(rows), self.reuse, StepStats()
        out.adapter_names = [self.adapter_names[r] for r in rows] if self.adapter_names is not None else None
        idx = torch.tensor(list(rows), dtype=torch.long, device=self.gen.device)
        out.cache = None if self.cache is None else KVCache(
            [(rows_with_room(layer.keys, idx), rows_with_room(layer.values, idx))
             for layer in self.cache.layers])
        out.mask = self.mask.index_select(0, idx)
        out.live = [list(self.live[r]) for r in rows]
        out.cols = [list(self.cols[r]) for r in rows]
        out.last_computed = [self.last_computed[r] for r in rows]
        return out

    @staticmethod
    def join(batches: Sequence[KVBatch]) -> KVBatch:
        """One batch of all these batches' rows, in order, the narrower caches left-padded with
        masked zero columns (one copy of each cache). Keys are stored rotated (RoPE applied at
        their own positions), so a column's index changes nothing a token attends to."""
        from convtune.inference.kvcache import KVCache, joined_with_room

        first = batches[0]
        torch = first.gen.torch
        if len({b.adapter_names is None for b in batches}) > 1:
            raise ValueError("cannot join a mixed-adapter batch with a single-model one")
        if len({b.cache is None for b in batches}) > 1:
            raise ValueError("cannot join a batch that has run nothing yet")
        width = max(b.mask.shape[1] for b in batches)
        pads = [width - b.mask.shape[1] for b in batches]
        out = KVBatch.__new__(KVBatch)
        out.gen, out.reuse, out.stats = first.gen, first.reuse, StepStats()
        out.n = sum(b.n for b in batches)
        out.cache = None
        if first.cache is not None:
            layers = zip(*(b.cache.layers for b in batches))
            out.cache = KVCache([(joined_with_room([la.keys for la in group], width),
                                  joined_with_room([la.values for la in group], width)) for group in layers])
        out.mask = torch.cat([torch.cat([b.mask.new_zeros(b.n, n), b.mask], dim=1)
                              for b, n in zip(batches, pads)])
        out.cols = [[c + n for c in cols] for b, n in zip(batches, pads) for cols in b.cols]
        out.live = [list(x) for b in batches for x in b.live]
        out.last_computed = [x for b in batches for x in b.last_computed]
        out.adapter_names = (None if first.adapter_names is None
                             else [a for b in batches for a in b.adapter_names])
        return out

    # ---- model calls ------------------------------------------------------------------------

    def _forward(self, ids: Any, block_mask: Any, positions: Any, logits_to_keep: int) -> Any:
        from convtune.inference.kvcache import KVCache

        torch = self.gen.torch
        if self.cache is None:
            self.cache = KVCache()
        self.mask = torch.cat([self.mask, block_mask], dim=1)
        extra = {"adapter_names": self.adapter_names} if self.adapter_names is not None else {}
        out = self.gen.forward(input_ids=ids, attention_mask=self.mask, position_ids=positions,
                               cache=self.cache, use_cache=True, logits_to_keep=logits_to_keep, **extra)
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

    def step(self, tokens: Sequence[int]) -> Any:
        """Run one token per row (a decode step); next-token logits ``(n, vocab)`` (float32)."""
        torch = self.gen.torch
        dev = self.gen.device
        base = self.mask.shape[1]
        pos = [len(live) for live in self.live]
        for r, t in enumerate(tokens):
            self.live[r].append(int(t))
            self.cols[r].append(base)
        ids = torch.tensor([[int(t)] for t in tokens], dtype=torch.long, device=dev)
        positions = torch.tensor(pos, dtype=torch.long, device=dev).unsqueeze(1)
        block = torch.ones(self.n, 1, dtype=torch.long, device=dev)
        return self._forward(ids, block, positions, logits_to_keep=1)[:, -1, :].float()

    def decode(self, logits: Any, max_new_tokens: Sequence[int],
               active: Sequence[bool] | None = None,
               guides: Sequence[Any | None] | None = None) -> list[Generation | None]:
        """Greedy decoding from the logits ``prefill`` returned, to the end of every row (the
        batch keeps every row's cache for the next prefill). Rows stop at a stop token or their
        budget, and unguided rows when they go round (:mod:`convtune.inference.decode`);
        inactive rows return ``None``. ``guides[r]`` (a :class:`convtune.guided.Guide`) restricts
        row ``r`` to tokens that keep its answer valid for a JSON schema."""
        from convtune.inference.decode import DecodeLoop, Seq
        from convtune.inference.sampling import Sampling

        t0 = time.perf_counter()
        active = list(active) if active is not None else [True] * self.n
        guides = list(guides) if guides is not None else [None] * self.n
        seqs = [Seq(self.gen, Sampling(max_tokens=max_new_tokens[r] if active[r] else 0, stop_repeats=True),
                    guide=guides[r] if active[r] else None, owner=r, keep_kv=True, incremental=False)
                for r in range(self.n)]
        loop = DecodeLoop(self.gen)
        rows: dict[int, KVBatch] = {}
        for seq, kv in loop.add(self, seqs, logits):  # the loop decodes on this batch's own cache
            rows[seq.owner] = kv
        while loop:
            self.gen.check_deadline()
            for seq, kv in loop.step():
                rows[seq.owner] = kv
        merged = KVBatch.join([rows[r] for r in range(self.n)])  # every row back, in order
        self.cache, self.mask, self.live, self.cols = merged.cache, merged.mask, merged.live, merged.cols
        self.stats.new_tokens += sum(len(s.token_ids) for s in seqs)
        self.stats.decode_seconds += time.perf_counter() - t0
        return [Generation(s.token_ids, s.text, s.stopped) if active[r] else None for r, s in enumerate(seqs)]

    def score(self, row: int, logits: Any, candidates: Sequence[Sequence[int]], *,
              max_tokens: int = 512) -> list[float]:
        """Log-likelihood of each candidate continuation of ``row``'s last prompt.

        ``logits`` are the row's next-token logits from :meth:`prefill`. The candidates run
        side by side in one sequence after the row's live tokens (up to ``max_tokens`` tokens per
        forward): a 4D mask lets each candidate token see the row's cache and its own earlier
        tokens only, and positions restart after the cache for each candidate, so each is scored
        as if alone, without copying the row's cache per candidate. The row's live cache is copied
        once; the batch state is left unchanged.
        """
        from convtune.inference.kvcache import KVCache

        torch = self.gen.torch
        t0 = time.perf_counter()
        first = torch.log_softmax(logits.float(), dim=-1)
        scores = [float(first[c[0]]) for c in candidates]
        rest = [i for i, c in enumerate(candidates) if len(c) > 1]
        dev = self.gen.device
        cols = torch.tensor(self.cols[row], dtype=torch.long, device=dev)
        n_live = len(self.cols[row])
        extra = {"adapter_names": [self.adapter_names[row]]} if self.adapter_names is not None else {}
        one = slice(row, row + 1)
        live = [(layer.keys[one].index_select(2, cols), layer.values[one].index_select(2, cols))
                for layer in self.cache.layers] if rest else []
        while rest:
            take, width = [], 0  # candidates of this forward: at least one, up to max_tokens tokens
            while rest and (not take or width + len(candidates[rest[0]]) - 1 <= max_tokens):
                take.append(rest.pop(0))
                width += len(candidates[take[-1]]) - 1
            feeds = [list(candidates[i][:-1]) for i in take]  # the last token is only predicted
            ids = torch.tensor([[t for f in feeds for t in f]], dtype=torch.long, device=dev)
            pos = torch.tensor([[n_live + j for f in feeds for j in range(len(f))]], device=dev)
            which = torch.tensor([k for k, f in enumerate(feeds) for _ in f], device=dev)
            step = torch.tensor([j for f in feeds for j in range(len(f))], device=dev)
            own = (which[:, None] == which[None, :]) & (step[:, None] >= step[None, :])
            see = torch.cat([torch.ones(width, n_live, dtype=torch.bool, device=dev), own], dim=1)
            dtype = self.cache.layers[0].keys.dtype
            mask = torch.zeros(1, 1, width, n_live + width, dtype=dtype, device=dev)
            mask.masked_fill_(~see, torch.finfo(dtype).min)  # additive: what sdpa and eager take
            out = self.gen.forward(input_ids=ids, attention_mask=mask, position_ids=pos,
                                   cache=KVCache(live), use_cache=True, **extra)  # live is not written
            logp = torch.log_softmax(out.logits[0].float(), dim=-1)
            at = 0
            for i, f in zip(take, feeds):
                target = torch.tensor(candidates[i][1:], device=dev)
                scores[i] += float(logp[at + torch.arange(len(f), device=dev), target].sum())
                at += len(f)
        self.stats.decode_seconds += time.perf_counter() - t0
        return scores
