"""The inference core shared by the server's engine and task answering (grows here piece by piece).

* :class:`~convtune.inference.detokenize.Detokenizer`: incremental detokenization, each
  token's new text from a short window instead of re-decoding the whole output.
* :mod:`~convtune.inference.quantize`: the fast CPU path, 4-/8-bit weight-only linear
  layers that PEFT still wraps (``quantize_for_cpu``).
"""

from convtune.inference.detokenize import Detokenizer

__all__ = ["Detokenizer"]
