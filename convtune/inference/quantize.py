"""Weight-only low-precision linear layers for fast CPU decoding.

Decoding one token reads every weight once, so on CPU its speed is set by the bytes of
weight read per token plus the Python work per layer. This module shrinks the bytes:
each ``nn.Linear`` of the transformer becomes a :class:`QuantLinear` whose weight is kept
in 4 bits (groups of 32 input channels, one scale and offset per group, the layout of
llama.cpp's Q4_1) or 8 bits (one scale per output channel), multiplied by PyTorch's own
CPU kernels (``aten._weight_int4pack_mm_for_cpu`` / ``aten._weight_int8pack_mm``, which
take bf16 activations). Only the weights are quantised: activations stay float, so the
outliers of small Llama-style models cost nothing (PyTorch's dynamic quantisation, int8
activations with one scale per tensor, raised SmolLM2-135M's perplexity 2.7x in a probe
with every layer quantised).

Schemes (measured on SmolLM2-135M by ``benchmarks/decode_speed.py``, quoted in the README):

* ``int4`` (default): 4-bit transformer layers, 8-bit output head (a 4-bit head alone
  added ~5% perplexity).
* ``int8``: 8-bit everywhere: slower, and no closer to fp32 in a probe.

Each :class:`QuantLinear` is an ``nn.Linear`` that keeps its float weight (state dicts,
adapter loading and PEFT's checks see the original layer), so PEFT wraps it like any
linear layer and any tenant's LoRA adapter runs unmerged on top of it: the base matmul is
low-precision, LoRA's small matrices stay float. The packed weights are extra memory
(about 1/8 of the fp32 model for ``int4``, 1/4 for ``int8``), shared by every adapter.
Layers whose shapes the kernels do not take (4-bit needs input channels divisible by 32
and output channels by 16) fall back to 8 bits.

Prefill runs on the float weight: a forward over ``float_rows`` or more token rows (a
prompt, not a decode step) multiplies by the kept fp32 weight, where a GEMM beats the
packed kernels (their advantage is bytes read per token, which a many-row matmul
amortises anyway; measured 1.2-1.6x slower than fp32 at 256 rows) and the prompt's KV
cache is the fp32 model's. Decode steps (one row per sequence) read the packed weight.
``float_rows=None`` multiplies every forward by the packed weight (the quality probe of
``benchmarks/decode_speed.py`` measures perplexity that way, the worst case).

Where the CPU multiplies bf16 fast (AVX512-BF16 / AMX, through oneDNN), the prefill weight is
a bf16 copy of the float weight (activations cast to bf16, outputs back to fp32; norms,
attention and the KV cache stay fp32): :func:`bf16_prefill_pays` measures it once per process
(a 256-row GEMM, bf16 must be 1.3x faster). Measured on the 2-core dev machine (AMD EPYC with
AVX512-BF16; ``benchmarks/inference_levers.py``): 1,000-token prefill of SmolLM2-135M 369 ->
759 tokens/s, perplexity of 12 sample transcripts 25.254 -> 25.255. Decode steps of many
rows (a batch) use the bf16 copy too from :data:`BF16_ROWS` rows, where it beats the packed
kernel. Elsewhere the prefill weight is the
fp32 one, as before. Extra memory: half the float weights (``prefill_bytes``).
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import torch

Scheme = Literal["int4", "int8"]
SCHEMES: tuple[str, ...] = ("int4", "int8")
GROUP_SIZE = 32  # input channels per 4-bit group (llama.cpp's Q4 block)
_ACT = torch.bfloat16  # the dtype the CPU low-precision kernels multiply in
FLOAT_ROWS = 128  # forwards of this many token rows or more (prefill) use the float weight
#: With a bf16 copy of the weight, forwards of this many rows or more use it (by the layer's
#: packed bits): where a bf16 GEMM beat the packed kernel on the dev machine (SmolLM2-135M's
#: 576 x 49152 8-bit head: 6.4 vs 11.3 ms at 16 rows, 5.1 vs 5.9 at 8; 4-bit 576 x 1536:
#: 0.159 vs 0.171 ms at 16 rows; ``benchmarks/inference_levers.py``).
BF16_ROWS = {4: 16, 8: 8}


def _pack_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (int8 weight [N, K], bf16 scales [N])."""
    scale = (weight.abs().amax(dim=1) / 127).clamp_min(1e-8)
    q = (weight / scale[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous()
    return q, scale.to(_ACT)


def _pack_int4(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit in groups of ``group`` input channels: (packed weight, bf16 scales
    and zeros [K / group, N, 2]) in the layout ``_weight_int4pack_mm_for_cpu`` reads
    (weight = (q - 8) * scale + zero)."""
    n, k = weight.shape
    g = weight.reshape(n, k // group, group)
    low, high = g.amin(dim=-1, keepdim=True), g.amax(dim=-1, keepdim=True)
    scale = ((high - low) / 15).clamp_min(1e-8)
    q = ((g - low) / scale).round().clamp(0, 15).to(torch.int32).reshape(n, k)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    zero = low + scale * 8
    scales_zeros = torch.stack([scale.squeeze(-1), zero.squeeze(-1)], dim=-1).transpose(0, 1)
    return packed, scales_zeros.contiguous().to(_ACT)


def int4_fits(linear: torch.nn.Linear, group: int = GROUP_SIZE) -> bool:
    return linear.in_features % group == 0 and linear.out_features % 16 == 0


class QuantLinear(torch.nn.Linear):
    """An ``nn.Linear`` (so PEFT accepts it) whose forward multiplies by its packed 4- or
    8-bit weight. The float ``weight`` is kept but not read by ``forward``."""

    bits: int
    float_rows: int | None = FLOAT_ROWS

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, bits: int = 4, group: int = GROUP_SIZE, *,
                    bf16_prefill: bool = False) -> QuantLinear:
        """``bf16_prefill``: multiply prefill forwards by a bf16 copy of the weight (see the module
        docstring); else by the float weight itself."""
        if bits == 4 and not int4_fits(linear, group):
            bits = 8
        new = cls.__new__(cls)
        torch.nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight, new.bias = linear.weight, linear.bias
        new.bits, new.group = bits, group
        weight = linear.weight.detach().float()
        packed, scales = _pack_int4(weight, group) if bits == 4 else _pack_int8(weight)
        # plain attributes, not buffers: the state dict stays the float layer's
        object.__setattr__(new, "_packed", packed)
        object.__setattr__(new, "_scales", scales)
        object.__setattr__(new, "_prefill", weight.to(_ACT).contiguous() if bf16_prefill else None)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.numel() // shape[-1]
        if self.float_rows is not None:
            if self._prefill is not None and rows >= min(BF16_ROWS[self.bits], self.float_rows):
                y = torch.nn.functional.linear(x.to(_ACT), self._prefill).to(x.dtype)
                return y if self.bias is None else y + self.bias
            if rows >= self.float_rows:
                return torch.nn.functional.linear(x, self.weight, self.bias)
        flat = x.reshape(-1, shape[-1]).to(_ACT)
        if self.bits == 4:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self._packed, self.group, self._scales)
        else:
            y = torch.ops.aten._weight_int8pack_mm(flat, self._packed, self._scales)
        y = y.to(x.dtype).reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}"


def quantize_for_cpu(model: Any, scheme: Scheme = "int4", *, bf16_prefill: bool | None = None) -> Any:
    """Swap ``model``'s linear layers for :class:`QuantLinear`, in place: transformer layers
    at the scheme's bits, the output head at 8 bits. A model not on CPU is returned as is
    (CUDA keeps its bf16 weights). In a PEFT model only the base layers are packed: LoRA's own
    matrices stay float and run unmerged on top. ``bf16_prefill``: prefill on bf16 weights
    (None: where :func:`bf16_prefill_pays`)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown CPU weight scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    first = next(model.parameters(), None)
    if first is None or first.device.type != "cpu":
        return model
    if bf16_prefill is None:
        bf16_prefill = bf16_prefill_pays()
    bits = 4 if scheme == "int4" else 8
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    swaps = []
    for qualified, module in model.named_modules():
        if ".lora_" in f".{qualified}":  # lora_A / lora_B of a PEFT layer
            continue
        for name, child in module.named_children():
            if type(child) is torch.nn.Linear and not name.startswith("lora_"):
                swaps.append((module, name, child, 8 if child is head else bits))
    for parent, name, child, child_bits in swaps:
        setattr(parent, name, QuantLinear.from_linear(child, child_bits, bf16_prefill=bf16_prefill))
    model.eval()
    return model


@functools.cache
def bf16_prefill_pays(min_speedup: float = 1.3) -> bool:
    """Whether this CPU multiplies a prefill-sized bf16 GEMM at least ``min_speedup`` x faster
    than fp32 (oneDNN's AVX512-BF16 / AMX kernels; without them bf16 is emulated and slower).
    Measured once per process (~0.1 s), best of 3 each."""
    import time

    def best(dtype: torch.dtype) -> float:
        a, w = torch.randn(256, 576, dtype=dtype), torch.randn(1536, 576, dtype=dtype)
        torch.nn.functional.linear(a, w)  # warm-up (kernel selection)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(4):
                torch.nn.functional.linear(a, w)
            times.append(time.perf_counter() - t0)
        return min(times)

    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False
    return best(torch.float32) >= min_speedup * best(_ACT)


def prefill_bytes(model: Any) -> int:
    """Bytes held by the bf16 prefill weights (0 where the prefill uses the float weights)."""
    return sum(m._prefill.numel() * m._prefill.element_size()
               for m in model.modules() if isinstance(m, QuantLinear) and m._prefill is not None)


def _libgomp() -> Any:
    """PyTorch's own OpenMP runtime (the one its CPU kernels use), or None."""
    import ctypes
    from pathlib import Path

    for lib in sorted((Path(torch.__file__).parent / "lib").glob("libgomp*.so*")):
        try:
            return ctypes.CDLL(str(lib))  # already loaded by torch: the same instance
        except OSError:
            continue
    return None


def engine_thread_setup(model: Any) -> int:
    """Call first on the thread that will run a quantised ``model`` (the engine thread); returns
    the intra-op threads it will use.

    The packed kernels are small OpenMP regions, fast only while their worker threads spin
    between regions; GNU OpenMP stops spinning once it manages more threads than the machine
    has cores, which happens as soon as a second thread of the process owns an OpenMP team
    (measured on 2 cores, a 576x1536 4-bit layer: 55 us alone, 155-260 us with another team
    alive; HF ``generate`` of SmolLM2-135M int4 31 tokens/s vs 12-14). So this thread keeps
    the process's thread count, and every thread that initialises PyTorch's threading after
    it gets one thread (no team); helper threads that may call MKL directly start with
    :func:`single_openmp_thread`. The model must be loaded on a thread that has exited
    (``serve.app`` does both), not on a long-lived one. Without PyTorch's libgomp (other
    builds), this thread falls back to one intra-op thread."""
    if not uses_packed_weights(model):
        return torch.get_num_threads()
    n = torch.get_num_threads()  # also initialises this thread's OpenMP settings
    torch.set_num_threads(1)  # the default for threads initialised from now on
    gomp = _libgomp()
    if gomp is None:
        return 1
    gomp.omp_set_num_threads(n)  # this thread only
    return n


def single_openmp_thread() -> None:
    """Give the calling thread one OpenMP thread (its kernels and MKL's then start no team):
    the initializer of the server's helper threads while the engine decodes quantised
    (``engine_thread_setup``). A no-op without PyTorch's libgomp."""
    gomp = _libgomp()
    if gomp is not None:
        gomp.omp_set_num_threads(1)


def set_float_rows(model: Any, rows: int | None) -> None:
    """Set every packed layer's prefill threshold (see the module docstring); ``None``: always
    multiply by the packed weights."""
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.float_rows = rows


def uses_packed_weights(model: Any) -> bool:
    modules = getattr(model, "modules", None)
    return callable(modules) and any(isinstance(m, QuantLinear) for m in modules())


def packed_bytes(model: Any) -> int:
    """Bytes held by the packed low-precision weights (the fast path's extra memory)."""
    return sum(m._packed.numel() * m._packed.element_size() + m._scales.numel() * m._scales.element_size()
               for m in model.modules() if isinstance(m, QuantLinear))
