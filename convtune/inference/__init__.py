"""The inference core: everything that decodes, shared by the server's engine and task answering.

Imports nothing from ``serve`` or ``convtune.evaluation``; both schedule work over it.

* :class:`~convtune.inference.model.Generator`: a (model, tokenizer) ready to decode.
* :class:`~convtune.inference.batch.KVBatch`: rows sharing one KV cache (prefill with prefix
  reuse, select, join, one decode step, label scoring).
* :class:`~convtune.inference.kvcache.KVCache`: its cache, layers that write each decode step
  into spare buffer room instead of concatenating.
* :class:`~convtune.inference.decode.DecodeLoop` and :class:`~convtune.inference.decode.Seq`:
  the one decode loop and one answer's state (stop tokens and strings, budgets, repeat
  guards, streamed text with hold-back).
* :mod:`~convtune.inference.sampling`: decoding settings and the batched sampler.
* :class:`~convtune.inference.detokenize.Detokenizer`: incremental detokenization.
* :mod:`~convtune.inference.quantize`: the fast CPU path, 4-/8-bit weight-only linear
  layers that PEFT still wraps (``quantize_for_cpu``), bf16 prefill weights where the CPU
  multiplies bf16 fast.
"""

from convtune.inference.batch import Generation, KVBatch
from convtune.inference.decode import DecodeLoop, Seq
from convtune.inference.detokenize import Detokenizer
from convtune.inference.model import Generator
from convtune.inference.sampling import Sampler, Sampling

__all__ = ["DecodeLoop", "Detokenizer", "Generation", "Generator", "KVBatch", "Sampler", "Sampling", "Seq"]
