"""Grammar-guided decoding: generated text that always parses against a JSON schema.

A :class:`Guide` follows one answer token by token (llguidance, the engine
behind vLLM's and transformers' structured output) and masks every next
token that could not continue a value of the schema. Decoding picks among
the allowed tokens only, so the answer is valid JSON of the schema's shape
once the grammar completes; after that only the end-of-turn token is allowed.

JSON is written in the canonical form training targets use
(:func:`tasks.parsing.dumps`: ``", "`` and ``": "`` separators, no other
whitespace), which keeps the model on the token paths it learned and rules out
whitespace loops.

    guides = Guides(tokenizer, stop_ids, vocab_size)   # once per tokenizer (~0.5 s)
    guide = guides.guide({"type": "object"})            # one per answer
    guide.mask_(logits)                                 # before picking a token
    guide.advance(token)                                # after
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

#: Canonical separators of training targets; no free whitespace.
JSON_OPTIONS = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}


class SchemaError(ValueError):
    """A JSON schema the grammar compiler rejects (unsupported keyword, bad ``$ref``, ...)."""


#: Largest schema accepted (characters of its JSON): compiling is linear in it, but not free.
MAX_SCHEMA_CHARS = 32_000


def compile_schema(schema: dict[str, Any], tokenizer: Any = None) -> str:
    """The llguidance grammar of a JSON schema; :class:`SchemaError` when it cannot be used."""
    import llguidance

    if not isinstance(schema, dict):
        raise SchemaError("a JSON schema must be an object")
    text = json.dumps(schema)
    if len(text) > MAX_SCHEMA_CHARS:
        raise SchemaError(f"the schema is {len(text)} characters; at most {MAX_SCHEMA_CHARS}")
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(text, overrides=JSON_OPTIONS)
    except ValueError as exc:
        raise SchemaError(str(exc)) from None
    error = llguidance.LLMatcher.validate_grammar(grammar, tokenizer)
    if error:
        raise SchemaError(error.strip().splitlines()[0])
    return grammar


def check_schema(schema: dict[str, Any]) -> None:
    """Raise :class:`SchemaError` when guided decoding cannot follow ``schema`` (no tokenizer needed)."""
    compile_schema(schema)


class Guide:
    """The grammar state of one answer."""

    def __init__(self, matcher: Any, vocab_size: int):
        import torch

        self._matcher = matcher
        self._vocab = vocab_size
        self._words = torch.full((1, (vocab_size + 31) // 32), -1, dtype=torch.int32)
        self._bits = torch.arange(32, dtype=torch.int32)

    @property
    def complete(self) -> bool:
        """The value is finished (only the end of the answer may follow)."""
        return self._matcher.is_stopped() or self._matcher.is_accepting()

    def allowed(self) -> Any:
        """Boolean mask over the vocabulary of tokens that keep the answer valid."""
        from llguidance.torch import fill_next_token_bitmask

        fill_next_token_bitmask(self._matcher, self._words)
        bits = (self._words[0, :, None] >> self._bits) & 1
        return bits.reshape(-1)[: self._vocab].bool()

    def mask_(self, logits: Any) -> Any:
        """Set the logits (1-D) of disallowed tokens to -inf, in place."""
        allowed = self.allowed()
        n = min(len(allowed), logits.shape[-1])
        logits[:n].masked_fill_(~allowed[:n].to(logits.device), float("-inf"))
        logits[n:] = float("-inf")
        return logits

    def advance(self, token: int) -> None:
        """Consume the token decoding picked (it must have been allowed)."""
        if not self._matcher.consume_token(int(token)):
            raise RuntimeError(f"guided decoding: token {token} rejected: {self._matcher.get_error()}")


def mask_rows_(logits: Any, guides: Sequence[Guide | None]) -> Any:
    """Mask every guided row of a ``(rows, vocab)`` logits tensor in one pass, in place: each
    guide fills its row of one bitmask (llguidance, native code), then one vectorised unpack
    and ``masked_fill`` covers all rows (unguided rows, ``None``, are left as they are)."""
    import torch
    from llguidance.torch import fill_next_token_bitmask

    rows = [(i, g) for i, g in enumerate(guides) if isinstance(g, Guide)]
    for i, g in enumerate(guides):
        if g is not None and not isinstance(g, Guide):  # another kind of guide: its own mask
            g.mask_(logits[i])
    if not rows:
        return logits
    vocab = rows[0][1]._vocab
    words = torch.full((len(rows), (vocab + 31) // 32), -1, dtype=torch.int32)
    for j, (_, g) in enumerate(rows):
        fill_next_token_bitmask(g._matcher, words, j)
    allowed = ((words[:, :, None] >> rows[0][1]._bits) & 1).reshape(len(rows), -1)[:, :vocab].bool()
    n = min(vocab, logits.shape[-1])
    idx = torch.tensor([i for i, _ in rows], dtype=torch.long, device=logits.device)
    sub = logits.index_select(0, idx)
    sub[:, :n].masked_fill_(~allowed[:, :n].to(logits.device), float("-inf"))
    sub[:, n:] = float("-inf")
    logits.index_copy_(0, idx, sub)
    return logits


class Guides:
    """Builds :class:`Guide` objects for one tokenizer; compiled grammars are cached per schema."""

    def __init__(self, tokenizer: Any, stop_ids: Collection[int], vocab_size: int | None = None):
        import llguidance.hf

        self.vocab_size = int(vocab_size or len(tokenizer))
        self._tokenizer = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=self.vocab_size, eos_token=sorted(int(i) for i in stop_ids)
        )
        self._grammars: dict[str, str] = {}

    def grammar(self, schema: dict[str, Any]) -> str:
        """The compiled grammar of a JSON schema; :class:`SchemaError` when it cannot be compiled."""
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            if len(self._grammars) >= 256:  # request schemas vary; keep the cache bounded
                self._grammars.pop(next(iter(self._grammars)))
            self._grammars[key] = compile_schema(schema, self._tokenizer)
        return self._grammars[key]

    def guide(self, schema: dict[str, Any]) -> Guide:
        import llguidance

        matcher = llguidance.LLMatcher(self._tokenizer, self.grammar(schema), log_level=0)
        if matcher.is_error():
            raise SchemaError(matcher.get_error())
        return Guide(matcher, self.vocab_size)


def close_truncated_list(text: str) -> str | None:
    """A guided list answer cut off by its token budget, closed after its last complete item
    (``[a, b, {"te`` -> ``[a, b]``); None when ``text`` is not the start of a JSON list.

    Guided output is canonical (items separated by ``", "``), so the cut points are the
    separators; a candidate is kept only if it decodes as a JSON list. Nothing is invented:
    the result holds exactly the items the model finished.
    """
    body = text.strip()
    if not body.startswith("["):
        return None
    cuts = [i for i in range(len(body) - 1, 0, -1) if body.startswith(", ", i)] + [1]
    for cut in cuts:
        candidate = body[:cut] + "]"
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, list):
            return candidate
    return None


def bound_strings(schema: Any, max_length: int) -> Any:
    """A copy of ``schema`` where every string without a ``maxLength`` (or enum/const/pattern)
    gets ``max_length``: a guided answer cannot spend its whole budget inside one string."""
    if isinstance(schema, list):
        return [bound_strings(s, max_length) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bound_strings(v, max_length) for k, v in schema.items()}
    free = not ({"maxLength", "enum", "const", "pattern"} & out.keys())
    if out.get("type") == "string" and free:
        out["maxLength"] = max_length
    return out
