"""Encoder and collections: batch API, identity checks, content-hash dedup, filters, crash safety."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import date

import numpy as np
import pytest

from convtune.errors import ConfigError
from embeddings.encoder import Encoded, EncoderIdentity
from embeddings.index import Chunk, Collection, Filter

from .conftest import ROOT


class HashEncoder:
    """A deterministic bag-of-words encoder: texts sharing words are close. Counts its calls."""

    def __init__(self, dim: int = 64, name: str = "hash"):
        self.identity = EncoderIdentity(name, name + "-fp", dim, True, 128)
        self.dim = dim
        self.encoded = 0

    def encode(self, texts):
        self.encoded += len(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1.0
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
        return Encoded(out, 0)


DOCS = [
    Chunk("refund", "refund policy returns within thirty days", {"channel": "doc", "tags": ["policy"]}),
    Chunk("roaming", "international roaming pass daily fee", {"channel": "doc", "date": "2026-03-01"}),
    Chunk("call-1", "customer asks about roaming fee on bill",
          {"channel": "call", "speaker": "Customer", "date": "2026-03-05", "tags": ["billing", "roaming"]}),
    Chunk("call-2", "agent explains refund for broken blender",
          {"channel": "call", "speaker": "Agent", "date": "2026-04-10", "tags": ["refund"]}),
]


@pytest.fixture
def coll(tmp_path):
    c = Collection(tmp_path / "acme" / "kb", HashEncoder())
    c.add(DOCS)
    yield c
    c.close()


def test_search_ranks_by_shared_meaning(coll):
    (hits,) = coll.search("roaming fee", k=2)
    assert {h.id for h in hits} == {"roaming", "call-1"} and hits[0].score >= hits[1].score
    assert coll.search(["refund policy"], k=1)[0][0].id == "refund"


def test_unchanged_text_is_not_reembedded_and_updates_replace(coll):
    enc = coll.encoder
    before = enc.encoded
    report = coll.add(DOCS)
    assert (report.unchanged, report.added, enc.encoded) == (4, 0, before)
    report = coll.add([Chunk("refund", "refund window is sixty days now", {"channel": "doc"})])
    assert (report.updated, enc.encoded) == (1, before + 1)
    assert coll.get("refund").text == "refund window is sixty days now" and len(coll) == 4


def test_delete_and_filters(coll):
    calls = coll.search("roaming refund fee", k=10, where=Filter(channel="call"))[0]
    assert {h.id for h in calls} == {"call-1", "call-2"}
    assert [h.id for h in coll.search("fee", k=10, where=Filter(speaker="Agent"))[0]] == ["call-2"]
    march = coll.search("fee", k=10, where=Filter(date_from=date(2026, 3, 1), date_to=date(2026, 3, 31)))[0]
    assert {h.id for h in march} == {"roaming", "call-1"}
    assert {h.id for h in coll.search("x", k=10, where=Filter(tags=["billing", "roaming"]))[0]} == {"call-1"}
    assert coll.search("x", k=10, where=Filter(channel="email")) == [[]]
    assert coll.delete(["call-1", "nope"]) == 1
    assert "call-1" not in {h.id for h in coll.search("roaming fee", k=10)[0]}


def test_persisted_without_pickle_and_reopened(coll, tmp_path):
    coll.search("fee")
    files = sorted(p.name for p in coll.folder.iterdir() if not p.name.startswith("docs.sqlite-"))
    assert files == ["docs.sqlite", "index.faiss", "index.json"]
    for p in coll.folder.iterdir():
        assert b"\x80\x04\x95" not in p.read_bytes()[:64]  # no pickle protocol header
    again = Collection(coll.folder, HashEncoder())
    assert again.search("roaming fee", k=1)[0][0].id in {"roaming", "call-1"} and len(again) == 4
    again.close()


def test_a_different_encoder_is_refused(coll):
    with pytest.raises(ConfigError, match="different|not this one"):
        Collection(coll.folder, HashEncoder(dim=32, name="other"))


def test_hnsw_above_the_threshold_finds_the_exact_neighbours(tmp_path):
    enc = HashEncoder(dim=32)
    c = Collection(tmp_path / "big", enc, approximate_above=100)
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    c.add([Chunk(f"c{i}", " ".join(rng.choice(words, 6)), {"channel": "chat" if i % 2 else "call"})
           for i in range(400)])
    approx = c.search(["w1 w2 w3", "w10 w20"], k=10)
    assert c.stats()["index"]["kind"] == "hnsw"
    exact_index = c.build("flat")
    assert exact_index.ntotal == 400
    exact = c.search(["w1 w2 w3", "w10 w20"], k=10)
    # ties are common with bag-of-words vectors: an approximate hit counts when it scores as high
    # as the exact 10th neighbour
    recall = np.mean([sum(h.score >= e[-1].score - 1e-5 for h in a) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9
    c.build("hnsw")
    assert all(h.metadata["channel"] == "chat" for h in c.search("w1", k=10, where=Filter(channel="chat"))[0])
    c.close()


WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from tests.test_embeddings import HashEncoder
    from embeddings.index import Chunk, Collection
    c = Collection({folder!r}, HashEncoder())
    i = 0
    while True:
        batch = [Chunk(f"n{{i}}-{{j}}", f"note {{i}} item {{j}} roaming", {{}}) for j in range(50)]
        c.add(batch, batch_size=50)
        print(i, flush=True)
        i += 1
""")


def test_kill_9_during_adds_leaves_a_readable_index(coll):
    coll.search("fee")  # the index file exists before the writer starts
    script = WRITER.format(root=str(ROOT), folder=str(coll.folder))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        for _ in range(3):  # let it commit a few batches, then kill it mid-write
            assert proc.stdout.readline(), "writer died"
        time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    reopened = Collection(coll.folder, HashEncoder())
    n = len(reopened)
    assert n >= 4 + 150 and (n - 4) % 50 == 0  # whole batches only
    hits = reopened.search("refund policy returns within thirty days", k=3)[0]  # its exact text
    assert hits and hits[0].id == "refund"
    assert reopened.index().ntotal == n
    reopened.close()


# ---- the real default encoder and the CLI on the sample data -------------------------------

ADD = ["index", "add", str(ROOT / "examples/data/test.jsonl"), "-c", "calls", "--tenant", "acme"]
QUERIES = [  # hand-checked against examples/data/test.jsonl
    ("fiber line cut by construction crew, internet outage", "telecom-022", 1),
    ("savings account for my eight year old daughter", "banking-021", 1),
    ("will the dishwasher fit my cutout", "retail-010", 1),
    ("calls fail after switching to an eSIM", "telecom-004", 3),
]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    from convtune.cli import main

    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("CONVTUNE_HOME")
    os.environ["CONVTUNE_HOME"] = str(home)
    try:
        assert main(ADD) == 0
        yield home
    finally:
        if old is None:
            os.environ.pop("CONVTUNE_HOME", None)
        else:
            os.environ["CONVTUNE_HOME"] = old


@pytest.mark.parametrize(("query", "conversation", "within"), QUERIES)
def test_cli_search_finds_the_right_conversation(indexed, capsys, query, conversation, within):
    from convtune.cli import main

    capsys.readouterr()
    assert main(["index", "search", query, "-c", "calls", "--tenant", "acme", "-k", "3", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert conversation in [h["metadata"]["conversation_id"] for h in hits[:within]]
    top = hits[0]
    assert top["text"].startswith("[t") and top["metadata"]["turn_ids"][0] in top["text"]


def test_cli_stats_filters_and_delete(indexed, capsys):
    from convtune.cli import main

    capsys.readouterr()
    assert main(ADD) == 0
    assert "0 added, 0 updated, 155 unchanged" in capsys.readouterr().out  # nothing re-embedded
    assert main(["index", "search", "refund", "-c", "calls", "--tenant", "acme", "--channel", "chat",
                 "-k", "10", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert hits and all(h["metadata"]["channel"] == "chat" for h in hits)
    assert main(["index", "stats", "-c", "calls", "--tenant", "acme"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["encoder"]["name"] == "all-minilm-l6-v2" and stats["encoder"]["dim"] == 384
    assert stats["index"]["kind"] == "flat" and stats["count"] == 155
    assert main(["index", "delete", "-c", "calls", "--tenant", "acme", "--conversation", "telecom-022"]) == 0
    assert main(["index", "search", QUERIES[0][0], "-c", "calls", "--tenant", "acme", "--json"]) == 0
    assert "telecom-022" not in capsys.readouterr().out.split("deleted")[-1]


def test_cli_errors(indexed, capsys):
    from convtune.cli import main

    assert main(["index", "search", "x", "-c", "nope", "--tenant", "acme"]) == 2
    assert "no collection 'nope'" in capsys.readouterr().err
    assert main(["index", "search", "x", "-c", "calls", "--tenant", "globex"]) == 2  # other tenant: not found
    capsys.readouterr()
    assert main([*ADD[:3], "-c", "../escape"]) == 2
    assert "collection name" in capsys.readouterr().err


def test_document_chunks_follow_headings_with_overlap():
    from embeddings.chunking import chunk_document

    para = " ".join(f"w{i}" for i in range(40))
    text = f"# Refunds\n\n{para}\n\n{para}\n\n{para}\n\n## Roaming\n\nDaily pass costs ten dollars.\n"
    chunks = chunk_document("policy", text, max_words=90)
    assert [c.id for c in chunks] == ["policy#0", "policy#1", "policy#2"]
    assert all(c.text.startswith("Refunds\n") for c in chunks[:2]) and chunks[2].text.startswith("Roaming\n")
    assert chunks[1].text.count(para) == 2  # the previous chunk's last paragraph is repeated
    assert chunks[2].metadata == {"source": "policy", "kind": "document", "chunk": 2, "heading": "Roaming"}


def test_conversation_windows_cover_every_turn_and_keep_speakers():
    from convtune.conversation import Conversation, Turn
    from embeddings.chunking import chunk_conversation

    turns = [Turn(id=f"t{i}", speaker="Customer" if i % 2 else "Agent", text=f"x{i}") for i in range(1, 12)]
    conv = Conversation(id="c9", turns=turns)
    chunks = chunk_conversation(conv, window=4, stride=3)
    covered = {t for c in chunks for t in c.metadata["turn_ids"]}
    assert covered == {f"t{i}" for i in range(1, 12)} and chunks[-1].metadata["turn_ids"][-1] == "t11"
    assert chunks[0].id == "c9#t1-t4" and chunks[0].text.splitlines()[0] == "[t1] Customer: x1"
    assert chunks[0].metadata["speakers"] == ["Customer", "Agent"]
    with pytest.raises(ConfigError):
        chunk_conversation(conv, window=2, stride=3)


def test_few_shot_context_brings_similar_labelled_examples(tmp_path):
    from convtune.conversation import Conversation, Turn
    from embeddings.fewshot import few_shot_context, index_examples
    from tasks import ClassificationTask

    task = ClassificationTask("topic", "Topic?", ["roaming", "refund"])

    def conv(cid, text, label=None):
        return Conversation(id=cid, turns=[Turn(id="t1", speaker="Customer", text=text)],
                            labels={"topic": label} if label else {})

    train = [conv("a", "roaming pass charged twice abroad", "roaming"),
             conv("b", "refund for broken blender please", "refund"),
             conv("c", "roaming data abroad not working", "roaming")]
    coll = Collection(tmp_path / "ex", HashEncoder())
    assert index_examples(coll, train + [conv("u", "no label here")], task) == 3
    ctx = few_shot_context(coll, [conv("q", "charged for roaming abroad"), train[0]], task, k=2)
    assert [c.source for c in ctx["q"]][0] in {"example a", "example c"}  # the nearest comes first
    assert ctx["q"][0].text.endswith("Answer (topic): roaming") and "[t1] Customer:" in ctx["q"][0].text
    assert "example a" not in [c.source for c in ctx["a"]] and len(ctx["a"]) == 2  # never itself
    coll.close()


DOC_QUERIES = [
    ("can I still return headphones I already opened", "returns-policy"),
    ("I was charged for using my phone in Spain", "roaming"),
    ("my new card still has not come in the post", "cards"),
]


def test_documents_ground_a_chat_answer(indexed, capsys, default_model_dir):
    from convtune.cli import main

    docs = str(ROOT / "examples" / "docs")
    assert main(["index", "add", docs, "-c", "kb", "--tenant", "acme"]) == 0
    for query, doc in DOC_QUERIES:
        capsys.readouterr()
        assert main(["index", "search", query, "-c", "kb", "--tenant", "acme", "-k", "1", "--json"]) == 0
        (hit,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert hit["metadata"]["source"] == doc and hit["id"].startswith(f"{doc}#")
    capsys.readouterr()
    assert main(["chat", DOC_QUERIES[0][0], "-c", "kb", "--tenant", "acme", "-k", "2", "--show-context",
                 "--model", str(default_model_dir), "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr()
    assert "[context] returns-policy#" in out.err and out.out.strip()
    assert main(["chat", "hi", "-c", "missing", "--tenant", "acme"]) == 2
    assert "no collection 'missing'" in capsys.readouterr().err
