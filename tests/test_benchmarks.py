"""Benchmark scripts: mechanics only (no timings, no real training here)."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter

import pytest

from .conftest import ROOT


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def b77():
    return load_script("banking77")


def test_banking77_skips_cleanly_without_the_dataset(b77, tmp_path, capsys):
    out = tmp_path / "b77.json"
    assert b77.main(["--data-dir", str(tmp_path / "absent"), "--out", str(out)]) == 0
    assert "skipped" in capsys.readouterr().out and not out.exists()


def test_banking77_stratified_sample_is_balanced_and_seeded(b77):
    rows = [(f"text {label} {i}", label) for label in "abc" for i in range(20)] + [("only one", "d")]
    sample = b77.stratified(rows, 5, seed=0)
    assert Counter(y for _, y in sample) == {"a": 5, "b": 5, "c": 5, "d": 1}
    assert sample == b77.stratified(rows, 5, seed=0) != b77.stratified(rows, 5, seed=1)


def test_banking77_tfidf_baseline_and_lm_task(b77, tmp_path):
    train = [("where is my card", "card_arrival"), ("card has not arrived yet", "card_arrival"),
             ("what is the exchange rate", "exchange_rate"), ("exchange rate for euros", "exchange_rate")]
    test = [("my card never arrived", "card_arrival"), ("euro exchange rate today", "exchange_rate")]
    assert b77.tfidf_lr(train, {"t": test}) == {"t": 1.0}
    task = b77.make_task(["card_arrival", "exchange_rate"])
    assert task.constrained_default and "card_arrival" not in task.instruction
    (conv,) = b77.conversations(test[:1], "x")
    assert conv.turns[0].text == "my card never arrived" and task.gold(conv) == "card_arrival"


def test_training_throughput_baseline_rows_are_one_task_per_example(default_model_dir):
    bench = load_script("training_throughput")

    class Args:
        model = str(default_model_dir)
        data = ROOT / "examples" / "data" / "train.jsonl"
        convs = 2
        max_seq_len = 1024

    rows, n = bench.baseline_rows(Args)
    assert n == 2 and len(rows) == 8  # 4 core tasks each
    for row in rows:
        assert [m["role"] for m in row["prompt"]] == ["system", "user"]
        assert row["completion"][0]["role"] == "assistant"
    json.dumps(rows)  # a plain TRL dataset row


def test_banking77_few_shot_context_holds_labelled_neighbours(b77):
    from tests.test_embeddings import HashEncoder

    train = [("where is my new card", "card_arrival"), ("card still not delivered", "card_arrival"),
             ("euro exchange rate", "exchange_rate"), ("what rate for dollars", "exchange_rate")]
    test = [("my card was not delivered", "card_arrival")]
    task = b77.make_task(["card_arrival", "exchange_rate"])
    ctx = b77.few_shot(train, test, task, 2, HashEncoder())
    (examples,) = ctx.values()
    assert len(examples) == 2 and examples[0].text.endswith("Answer (banking_intent): card_arrival")


def test_embeddings_index_scale_reports_recall_per_ef_search(tmp_path):
    import numpy as np

    bench = load_script("embeddings_index")
    vecs = np.random.default_rng(0).standard_normal((620, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    row = bench.scale(600, 20, vecs, "random", tmp_path)
    assert row["chunks"] == 600 and row["flat_p50_ms"] > 0
    recalls = [row[f"hnsw_ef{ef}"]["recall_at_10"] for ef in bench.EF_SEARCH]
    assert all(0 <= r <= 1 for r in recalls) and recalls[-1] >= recalls[0] and recalls[-1] > 0.9
    assert row["hnsw_index_bytes_per_100k"] > row["flat_index_bytes_per_100k"] > 0
    texts = bench.real_texts(tmp_path / "no-datasets")
    assert texts == []  # no datasets: the caller falls back to random vectors


def test_feedback_experiment_rule_is_the_documented_preference():
    fa = load_script("feedback_alignment")
    ref = ("Customer was charged a $35 activation fee for a line added online. "
           "Agent applied a $35 credit to the next statement.")
    good = "Customer disputed a $35 activation fee. Agent applied a credit to the next bill."
    assert fa.clauses(good, ref) == dict.fromkeys(
        ("at_most_2_sentences", "at_most_30_words", "names_issue", "names_resolution"), True
    )
    assert fa.rating(good, ref) == 5 and fa.satisfied(good, ref)
    long = good + " " + " ".join(["The customer then talked about other things."] * 2)
    assert fa.clauses(long, ref)["at_most_2_sentences"] is False and not fa.satisfied(long, ref)
    vague = "Customer called. Agent helped the customer and the customer said thanks."
    c = fa.clauses(vague, ref)  # "customer"/"agent"/"called" name nothing
    assert c["names_issue"] is False and c["names_resolution"] is False and fa.rating(vague, ref) == 3
    # test pairs: every two answers of a prompt with different ratings, better first
    samples = [{"reference": ref, "texts": [good, vague, vague]}]
    assert fa.test_pairs(samples) == [(0, 0, 1), (0, 0, 2)]
