"""The inference core: incremental detokenization equals a full decode, piece by piece."""

from __future__ import annotations

import random

import pytest

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


def test_kv_cache_layers_write_decode_steps_in_place_and_equal_concatenation():
    """A SlackLayer holds what DynamicLayer's concatenation holds; a decode step writes into the
    spare room of its buffer (no copy of the cache) until it is full or the tensor is replaced."""
    import torch
    from transformers.cache_utils import DynamicLayer

    from convtune.inference.kvcache import SLACK, KVCache, SlackLayer, joined_with_room, rows_with_room

    torch.manual_seed(0)
    slack, plain = SlackLayer(), DynamicLayer()
    blocks = [torch.randn(2, 3, 17, 8), *[torch.randn(2, 3, 1, 8) for _ in range(SLACK + 5)]]
    buffers = set()
    for i, block in enumerate(blocks):
        k, v = slack.update(block, -block)
        ref_k, ref_v = plain.update(block, -block)
        assert torch.equal(k, ref_k) and torch.equal(v, ref_v)
        buffers.add(slack._kbuf.data_ptr())
        if i == 1:
            first_step_buffer = slack._kbuf.data_ptr()
        if 1 <= i <= SLACK - 17:  # the first buffer had SLACK spare columns after the prompt
            assert slack._kbuf.data_ptr() == first_step_buffer
    assert len(buffers) == 2  # one buffer for the prompt and SLACK steps, one when it was full
    slack.keys = slack.keys[:1].clone()  # replaced from outside (a select): a new buffer, same values
    slack.values = slack.values[:1].clone()
    before = slack.keys.clone()
    k, _ = slack.update(torch.ones(1, 3, 1, 8), torch.ones(1, 3, 1, 8))
    assert torch.equal(k[:, :, :-1], before) and torch.equal(k[:, :, -1:], torch.ones(1, 3, 1, 8))
    adopted = KVCache([(torch.zeros(1, 3, 4, 8), torch.zeros(1, 3, 4, 8))])
    assert adopted.get_seq_length() == 4 and isinstance(adopted.layers[0], SlackLayer)
    # rows selected or batches joined come with room: the next step writes in place
    full = torch.randn(3, 3, 5, 8)
    idx = torch.tensor([2, 0])
    picked = (rows_with_room(full, idx), rows_with_room(-full, idx))
    parts = [full[:1], full[:2, :, 2:]]
    joined = (joined_with_room(parts, 5), joined_with_room([-p for p in parts], 5))
    assert torch.equal(picked[0], full[[2, 0]]) and torch.equal(picked[1], -full[[2, 0]])
    assert torch.equal(joined[0][1:, :, :2], torch.zeros(2, 3, 2, 8))
    assert torch.equal(joined[0][1:, :, 2:], full[:2, :, 2:]) and torch.equal(joined[0][:1], full[:1])
    for t, u in (picked, joined):
        layer = KVCache([(t, u)]).layers[0]
        base = t.data_ptr()
        k, _ = layer.update(torch.ones(t.shape[0], 3, 1, 8), torch.ones(t.shape[0], 3, 1, 8))
        assert k.data_ptr() == base and torch.equal(k[:, :, :5], t)


def test_label_scores_do_not_depend_on_how_candidates_share_a_forward(tiny_model_dir):
    """KVBatch.score runs candidates side by side under a 4D mask: all in one forward or one per
    forward, each gets the log-likelihood of a plain forward over the prompt and that candidate
    (another row in the batch changes nothing)."""
    import torch

    from convtune.inference import Generator
    from convtune.models import load_model

    model, tok = load_model(str(tiny_model_dir), device="cpu")
    gen = Generator(model, tok)
    prompt = tok.encode("The caller asks about a refund for a double charge.", add_special_tokens=False)
    cands = [tok.encode(t, add_special_tokens=False) for t in (" refund", " billing question", " a b c d e")]
    with torch.inference_mode():
        kv = gen.rows(2)
        logits = kv.prefill([prompt, prompt[:5]])
        together = kv.score(0, logits[0], cands)
        alone = kv.score(0, logits[0], cands, max_tokens=1)
        ref = []  # each candidate appended to the prompt, in a forward of its own
        for c in cands:
            out = model(torch.tensor([prompt + c])).logits[0].float()
            logp = torch.log_softmax(out, -1)
            ref.append(sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(c)))
    assert together == pytest.approx(ref, abs=1e-4) and alone == pytest.approx(ref, abs=1e-4)


def test_batches_added_between_steps_join_the_running_cache_once(tiny_model_dir, monkeypatch):
    """Requests joining a running DecodeLoop between two steps cost one join (one copy of the
    running cache) at the next step, however many there are; their rows decode as if alone."""
    import torch

    from convtune.inference import DecodeLoop, Generator, KVBatch, Sampling, Seq
    from convtune.models import load_model

    model, tok = load_model(str(tiny_model_dir), device="cpu")
    gen = Generator(model, tok)
    texts = ("Refund my order", "Where is it", "Hi", "Cancel")
    prompts = [tok.encode(t, add_special_tokens=False) for t in texts]

    seqs = [Seq(gen, Sampling(max_tokens=6)) for _ in prompts]
    loop = DecodeLoop(gen)
    joins = []
    real = KVBatch.join
    monkeypatch.setattr(KVBatch, "join", staticmethod(lambda bs: joins.append(len(bs)) or real(bs)))
    with torch.inference_mode():
        for i, (p, s) in enumerate(zip(prompts, seqs)):
            kv = gen.rows(1, reuse=False)
            loop.add(kv, [s], kv.prefill([p]))
            if i == 0:
                loop.step()  # the first request runs; the other three are added before the next step
        loop.step()
        assert joins == [4]  # the running batch and the three added, in one join
        while loop:
            loop.step()
        for p, s in zip(prompts, seqs):  # each row decoded as it does alone
            kv = gen.rows(1, reuse=False)
            assert s.token_ids == kv.decode(kv.prefill([p]), [6])[0].token_ids
