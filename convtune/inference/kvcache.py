"""The KV cache of a :class:`~convtune.inference.batch.KVBatch`: transformers' ``DynamicCache``
with layers that grow in place.

``DynamicLayer`` appends a decode step's key and value column with ``torch.cat``: every step
copies the whole cache, and batched decoding over long prompts pays for that copy every step
(``benchmarks/inference_levers.py``, 2 cores, SmolLM2-135M fast path: a 16-row step at 1,500
tokens of context 190 ms copying vs 133 ms in place). :class:`SlackLayer` keeps each layer's
keys and values as views into buffers with :data:`SLACK` spare columns; a step writes its
column into the spare room, and only a full buffer (or a tensor the batch replaced: a select,
join or re-pack) is copied into a new buffer with room again. Attention reads the same values either way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

#: Spare key/value columns a layer's buffer gets when it is (re)allocated: a buffer is copied
#: once per this many decode steps at most. Memory: SLACK x 2 x kv_heads x head_dim x layers x
#: 4 bytes per row (SmolLM2-135M fp32: 12 MB per row).
SLACK = 256


class SlackLayer(DynamicLayer):
    """A full-attention cache layer that writes new columns into spare room (module docstring).

    ``keys`` and ``values`` stay plain ``[batch, heads, seq, head_dim]`` tensors (views), so code
    that reads or replaces them (``KVBatch.select``, ``join``, ``_compact``) works as with a
    ``DynamicLayer``; a replaced tensor simply gets a new buffer on the next update. A view
    adopted with its buffer (``rows_with_room``, ``joined_with_room``) must be the only layer
    using that buffer: two layers sharing one would write their steps into the same room."""

    def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None):
        super().__init__()
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None
        if keys is not None and values is not None:
            self.keys, self.values = keys, values  # adopted as they are, with their buffers' room
            self._kbuf, self._vbuf = keys._base, values._base  # (views made by with_room)
            self.device = keys.device
            self.is_initialized = True

    def _has_room(self, add: int) -> bool:
        """Whether ``keys``/``values`` are still the views of this layer's buffers, with room for
        ``add`` more columns."""
        kb, vb = self._kbuf, self._vbuf
        if kb is None or vb is None or kb.dim() != 4 or vb.dim() != 4:
            return False
        k, v = self.keys, self.values
        return (k.data_ptr() == kb.data_ptr() and v.data_ptr() == vb.data_ptr()
                and k.stride() == kb.stride() and v.stride() == vb.stride()
                and k.shape[:2] == kb.shape[:2] and k.shape[-2] + add <= kb.shape[-2])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.keys.shape[-2] if self.keys.dim() == 4 else 0
        add = key_states.shape[-2]
        if not self._has_room(add):
            self._kbuf = _buffer(self.keys if n else None, key_states, n + add + SLACK)
            self._vbuf = _buffer(self.values if n else None, value_states, n + add + SLACK)
        self._kbuf[:, :, n:n + add] = key_states
        self._vbuf[:, :, n:n + add] = value_states
        self.keys = self._kbuf[:, :, :n + add]
        self.values = self._vbuf[:, :, :n + add]
        return self.keys, self.values


def _buffer(old: torch.Tensor | None, new: torch.Tensor, columns: int) -> torch.Tensor:
    """A buffer of ``columns`` columns shaped like ``new`` (batch, heads, head_dim), holding ``old``
    in its first columns. The columns after them are never read before they are written."""
    b, h, _, d = new.shape
    buf = new.new_empty(b, h, columns, d)
    if old is not None:
        buf[:, :, :old.shape[-2]] = old
    return buf


@torch.no_grad()  # a cache is never differentiated (and out= refuses tensors that require grad)
def rows_with_room(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` of ``t`` (``[batch, heads, seq, head_dim]``) in a new buffer with :data:`SLACK`
    spare columns (one copy; a :class:`SlackLayer` adopting the view writes into its room)."""
    b, h, n, d = len(idx), t.shape[1], t.shape[2], t.shape[3]
    view = t.new_empty(b, h, n + SLACK, d)[:, :, :n]
    return torch.index_select(t, 0, idx, out=view)


@torch.no_grad()
def joined_with_room(parts: list[torch.Tensor], width: int) -> torch.Tensor:
    """``parts`` stacked along the batch, each left-padded with zero columns to ``width``, in a
    new buffer with :data:`SLACK` spare columns (one copy of each part)."""
    first = parts[0]
    b = sum(p.shape[0] for p in parts)
    view = first.new_empty(b, first.shape[1], width + SLACK, first.shape[3])[:, :, :width]
    at = 0
    for p in parts:
        pad = width - p.shape[2]
        view[at:at + p.shape[0], :, :pad] = 0
        view[at:at + p.shape[0], :, pad:] = p
        at += p.shape[0]
    return view


class KVCache(DynamicCache):
    """A ``DynamicCache`` of :class:`SlackLayer` s: empty (layers made on first use, one per model
    layer), or holding ``pairs`` of (keys, values) per layer, adopted without a copy."""

    def __init__(self, pairs: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None):
        if pairs is None:
            Cache.__init__(self, layer_class_to_replicate=SlackLayer)
        else:
            Cache.__init__(self, layers=[SlackLayer(k, v) for k, v in pairs])
