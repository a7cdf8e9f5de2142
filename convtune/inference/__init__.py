"""The inference core shared by the server's engine and task answering (grows here piece by piece).

* :class:`~convtune.inference.detokenize.Detokenizer`: incremental detokenization, each
  token's new text from a short window instead of re-decoding the whole output.
"""

from convtune.inference.detokenize import Detokenizer

__all__ = ["Detokenizer"]
