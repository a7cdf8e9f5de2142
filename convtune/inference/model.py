"""The model side of decoding: one (model, tokenizer) in eval mode, its stop tokens and forward.

:class:`Generator` is what the engine and task answering hand to the inference core;
``Generator.rows(n)`` starts a :class:`~convtune.inference.batch.KVBatch`, and
``Generator.generate`` is greedy decoding of independent prompts batched by length.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

from convtune.errors import ConfigError
from convtune.inference.batch import Generation, KVBatch

# End-of-turn tokens of common chat templates (used when present in the vocabulary).
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")



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



class Generator:
    """A decoder model and its tokenizer, ready to decode (eval mode): stop tokens, padding,
    the forward with the KV cache under this transformers version's name, grammar guides."""

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
                "the model uses sliding-window or hybrid attention; convtune decodes "
                "full-attention decoder models (Llama, SmolLM2, Qwen2 ...)"
            )

    def rows(self, n: int, *, reuse: bool = True, adapter_names: Sequence[str] | None = None) -> KVBatch:
        """A fresh batch of ``n`` rows (:class:`~convtune.inference.batch.KVBatch`)."""
        return KVBatch(self, n, reuse=reuse, adapter_names=adapter_names)

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
