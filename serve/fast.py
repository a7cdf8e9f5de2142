"""Faster CPU inference: int8 dynamic quantisation of the linear layers (``--fast-cpu``).

Each quantised ``nn.Linear`` keeps its float weight, so PEFT can still wrap it
and load any tenant's LoRA adapter onto it, but runs through PyTorch's
dynamic-quantised int8 kernel: weights int8 per output channel, activations
quantised per batch on the fly. LoRA's own small matrices stay float, and so
do the output head (tied to the embeddings) and the MLP output projections
(``down_proj``): they carry the activation outliers of small Llama-style
models, and quantising them too raised SmolLM2-135M's perplexity on the
sample transcripts from 27 to 63-82 (31 without them). Speed and quality cost
on this project's machine: ``benchmarks/serve_load.py``, quoted in the README.
"""

from __future__ import annotations

from typing import Any

import torch


class Int8Linear(torch.nn.Linear):
    """An ``nn.Linear`` (so PEFT accepts it) whose forward is a dynamic int8 matmul."""

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> Int8Linear:
        new = cls.__new__(cls)
        torch.nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight, new.bias = linear.weight, linear.bias
        # per output channel: one scale per row (a per-tensor scale cost far more perplexity here)
        linear.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        packed = torch.ao.nn.quantized.dynamic.Linear.from_float(linear)
        object.__setattr__(new, "_int8", packed)  # not a submodule: state_dict stays the float one
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._int8(x)


KEEP_FLOAT = ("down_proj",)  # see the module docstring


def quantize_for_cpu(model: Any, keep_float: tuple[str, ...] = KEEP_FLOAT) -> Any:
    """Swap the linear layers (but the output head and ``keep_float`` names) for
    :class:`Int8Linear`, in place."""
    import warnings

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    swaps = []
    for module in model.modules():
        for child_name, child in module.named_children():
            if type(child) is torch.nn.Linear and child is not head and child_name not in keep_float:
                swaps.append((module, child_name, child))
    with warnings.catch_warnings():  # torch deprecates the quantized tensor API in favour of torchao
        warnings.simplefilter("ignore")
        for parent, child_name, child in swaps:
            setattr(parent, child_name, Int8Linear.from_linear(child))
    model.eval()
    return model
