"""Decoding settings of one answer and the batched sampler that picks every row's next token.

Greedy is temperature 0 (or top-k 1). A row that samples draws from its own seeded
``torch.Generator``, so a seed reproduces its output whatever else is in the batch.
Every row's pick stays a tensor until the end of the step; one ``tolist()`` brings the
whole batch's tokens to the host (one sync per step on an accelerator).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MIN_TEMPERATURE = 1e-3  # smaller temperatures decode greedily (their limit), never 0/0 in fp32


@dataclass(frozen=True)
class Sampling:
    """How one answer is decoded and when it ends."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0  # CTRL-style: >1 discourages tokens already generated
    schema: dict[str, Any] | None = None  # JSON schema the output follows (grammar-guided)
    strip_links: bool = False  # markdown links/images -> their text (answers grounded in retrieval)
    stop_repeats: bool = False  # end an unguided answer that loops or says a passage again (task answers)

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE or self.top_k == 1


class Sampler:
    """One row's token choice: greedy, or temperature + top-k + nucleus (top_p) sampling."""

    def __init__(self, s: Sampling):
        import torch

        self.torch = torch
        self.s = s
        self.gen = None
        if not s.greedy:
            self.gen = torch.Generator()
            seed = s.seed if s.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
            self.gen.manual_seed(seed)

    @property
    def batched_greedy(self) -> bool:
        """Picked by the batch's one argmax (nothing of its own to apply first)."""
        return self.gen is None and self.s.repetition_penalty == 1.0

    def pick(self, logits: Any, previous: Sequence[int]) -> Any:
        """The next token of one row (a 0-d tensor) from its ``(vocab,)`` logits."""
        torch = self.torch
        s = self.s
        if s.repetition_penalty != 1.0 and previous:
            logits = logits.clone()
            seen = torch.tensor(sorted(set(previous)), dtype=torch.long, device=logits.device)
            vals = logits[seen]
            logits[seen] = torch.where(vals > 0, vals / s.repetition_penalty, vals * s.repetition_penalty)
        if self.gen is None:
            return logits.argmax()
        logits = logits.float().cpu()
        logits = (logits - logits.max()) / s.temperature  # max first: a tiny temperature gives -inf, not NaN
        if s.top_k > 1:
            kth = torch.topk(logits, min(s.top_k, logits.numel())).values[-1]
            logits = torch.where(logits < kth, torch.full_like(logits, float("-inf")), logits)
        probs = torch.softmax(logits, dim=-1)
        if s.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < s.top_p  # always keeps the most likely token
            sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
            return order[torch.multinomial(sorted_p, 1, generator=self.gen)[0]]
        return torch.multinomial(probs, 1, generator=self.gen)[0]


def pick_tokens(logits: Any, samplers: Sequence[Sampler], previous: Sequence[Sequence[int]]) -> list[int]:
    """Every row's next token: one argmax for the greedy rows, each sampling row on its own
    generator; one host transfer for the whole batch."""
    picks = logits.argmax(dim=-1)
    own = [g for g, s in enumerate(samplers) if not s.batched_greedy]
    if own:
        picks = picks.cpu().clone()
        for g in own:
            picks[g] = samplers[g].pick(logits[g], previous[g]).to(picks.device)
    return picks.tolist()
