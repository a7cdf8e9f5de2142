"""The inference core: incremental detokenization equals a full decode, piece by piece."""

from __future__ import annotations

import random

from convtune.inference import Detokenizer


def test_incremental_detokenization_equals_a_full_decode(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = ["Héllo wörld, naïve café 😀 日本語のテキスト", "The refund of $35.00 was issued.\n\nThanks!",
             "  spaces   and\ttabs "]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        d = Detokenizer(tok)
        pieces = [d.push(i) for i in ids]
        assert "".join(pieces) == d.text == tok.decode(ids, skip_special_tokens=True)
        assert all("\ufffd" not in p for p in pieces)  # half characters are held back, never sent
    rng = random.Random(0)
    for _ in range(200):  # arbitrary token sequences, invalid UTF-8 included
        ids = [rng.randrange(len(tok)) for _ in range(rng.randrange(1, 30))]
        d = Detokenizer(tok)
        for i in ids:
            d.push(i)
        d.flush()
        assert d.text == tok.decode(ids, skip_special_tokens=True)
