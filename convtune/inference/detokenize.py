"""Incremental detokenization: the text each new token adds, in constant work per token.

Decoding the whole output after every token (to find stop strings, to stream) costs
O(n) per token, O(n^2) per answer. :class:`Detokenizer` decodes only a short window:
the tokens since the last emitted boundary (``prefix``) with and without the newest
ones, and emits the difference once it is whole text (not an incomplete UTF-8 byte
sequence, shown by tokenizers as U+FFFD). The window keeps a few already-emitted tokens
in front so tokenizers whose decoding depends on the left neighbour (SentencePiece's
leading space) give the same characters as a full decode. The scheme is vLLM's and
text-generation-inference's.
"""

from __future__ import annotations

from typing import Any


class Detokenizer:
    """Feed token ids with :meth:`push`; ``text`` is always ``decode(ids)`` (special tokens
    skipped), built from the pieces."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0  # window start: a few tokens already in ``text``, for context
        self._read = 0  # tokens before this are in ``text``

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        """Add one token; return the text it completes ("" while a character is unfinished)."""
        self.ids.append(token)
        before = self._decode(self.ids[self._prefix:self._read])
        now = self._decode(self.ids[self._prefix:])
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return ""  # nothing new yet, or half a multi-byte character
        piece = now[len(before):]
        self.text += piece
        self._prefix, self._read = self._read, len(self.ids)
        return piece

    def flush(self) -> str:
        """At the end: whatever is left, unfinished characters as U+FFFD (as a full decode shows them)."""
        rest = self._decode(self.ids[self._prefix:])[len(self._decode(self.ids[self._prefix:self._read])):]
        self.text += rest
        self._prefix = self._read = len(self.ids)
        return rest
