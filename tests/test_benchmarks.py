"""Benchmark scripts: mechanics only (no timings, no real training here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter

import pytest

from .conftest import ROOT


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
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


def write_tiny_datasets(root):
    """A few rows in each dataset's real layout (quirks included: CRLF csv, quoted tsv cells with
    newlines, multi-intent turns, ``__eou__`` dialogues, DialogSum's ``#Person1#`` turns)."""
    b77 = root / "banking77"
    b77.mkdir(parents=True)
    words = {"card_arrival": "card arrive delivered post", "exchange_rate": "exchange rate euro dollar",
             "lost_card": "lost stolen missing gone"}
    for split, n in (("train", 6), ("test", 3)):
        lines = ["text,category"] + [f"{w} number {i},{label}"
                                     for label, w in words.items() for i in range(n)]
        (b77 / f"{split}.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    header = "conversationId\tturnNumber\tutteranceId\tutterance\tslot-labels\tintent"
    for domain in ("insurance", "software"):
        for split in ("train", "dev", "test"):
            rows = [header]
            for i in range(4):
                rows += [f"c{i}\t1\tu{i}a\thello there {i}\tO\topeninggreeting",
                         f"c{i}\t2\tu{i}b\t\"my {domain} claim\nstatus {i}\"\tO\t{domain}status",
                         f"c{i}\t3\tu{i}c\tboth {i}\tO\t{domain}status<div>openinggreeting"]
            d = root / "multidogo" / "turn_level" / domain
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    for split in ("validation", "test"):
        d = root / "dailydialog" / split
        d.mkdir(parents=True)
        dialogues = ["I love it ! __eou__ I hate this . __eou__ It is at noon . __eou__"] * 8
        (d / "dialogues.txt").write_text("\n".join(dialogues) + "\n")
        (d / "dialogues_emotion.txt").write_text("\n".join(["4 1 0"] * 8) + "\n")
        (d / "dialogues_act.txt").write_text("\n".join(["1 1 1"] * 8) + "\n")
    ds = root / "dialogsum"
    ds.mkdir()
    dialogue = ("#Person1#: Hello, how can I help you?\n#Person2#: My order is late.\n"
                "#Person1#: I will check it.")
    dev = [{"fname": f"dev_{i}", "dialogue": dialogue, "summary": "#Person2#'s order is late.", "topic": "t"}
           for i in range(4)]
    test = [{"fname": f"test_{i}", "dialogue": dialogue, "summary1": "#Person2#'s order is late.",
             "summary2": "An order is late.", "summary3": "#Person1# checks a late order.",
             "topic1": "t", "topic2": "t", "topic3": "t"} for i in range(3)]
    (ds / "dialogsum.dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dev))
    (ds / "dialogsum.test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))


def test_quality_skips_missing_datasets(tmp_path, capsys):
    quality = load_script("quality")
    out = tmp_path / "quality.json"
    argv = ["--datasets-dir", str(tmp_path / "absent"), "--skip-lm", "--workdir", str(tmp_path / "w"),
            "--out", str(out)]
    assert quality.main(argv) == 0
    printed = capsys.readouterr().out
    assert all(f"skipped {ds}" in printed for ds in quality.DATASETS) and not out.exists()


def test_quality_baselines_on_tiny_datasets_and_rerun(tmp_path, capsys):
    """The --skip-lm path end to end on synthetic data (bag-of-words encoder: no model loads)."""
    from tests.test_embeddings import HashEncoder

    quality = load_script("quality")
    root, out = tmp_path / "datasets", tmp_path / "quality.json"
    write_tiny_datasets(root)
    argv = ["--datasets-dir", str(root), "--skip-lm", "--quick", "--workdir", str(tmp_path / "w"),
            "--out", str(out)]
    assert quality.main(argv, encoder=HashEncoder()) == 0
    result = json.loads(out.read_text())
    assert set(result["machine"]) >= {"platform", "torch", "threads"}
    tasks = result["tasks"]
    assert set(tasks) == {"banking77/intent", "multidogo/intent", "dailydialog/sentiment",
                          "dialogsum/summary"}
    for key in ("banking77/intent", "multidogo/intent", "dailydialog/sentiment"):
        e = tasks[key]
        assert e["served"] is None and e["base_model"] is None and not e["complete"]
        assert set(e["baselines"]) == {"majority", "tfidf_logreg", "minilm_1nn", "minilm_logreg"}
        assert all(0.0 <= v <= 1.0 for v in e["baselines"].values()) and e["n_test"] > 0
    b77 = tasks["banking77/intent"]
    assert b77["metric"] == "accuracy" and b77["n_test"] == 6 and b77["n_train"] == 9  # quick: 3 per intent
    assert b77["baselines"]["tfidf_logreg"] == 1.0  # the label words separate the intents
    mdg = tasks["multidogo/intent"]
    assert mdg["data"]["domains"] == ["insurance", "software"] and mdg["labels"] == 3
    assert mdg["data"]["multi_intent_dropped"]["software/test"] == 4
    dd = tasks["dailydialog/sentiment"]
    assert dd["metric"] == "macro_f1" and dd["data"]["test_class_counts"] == {
        "positive": 8, "negative": 8, "neutral": 8}
    assert tasks["dialogsum/summary"]["metric"] == "rougeL" and tasks["dialogsum/summary"]["n_test"] == 3
    task_file = tmp_path / "w" / "banking77" / "tasks.yaml"
    from tasks import load_task_file

    (task,) = load_task_file(task_file)  # what training and the base model are given
    assert task.constrained_default and not task.show_labels and len(task.labels) == 3
    assert not (tmp_path / "w" / "banking77" / "run").exists()  # --skip-lm trains nothing
    capsys.readouterr()
    assert quality.main(argv, encoder=HashEncoder()) == 0  # a rerun reuses every stage
    assert "baselines: reused" in capsys.readouterr().out
    assert json.loads(out.read_text())["tasks"] == tasks


def test_quality_dialogsum_roles_and_best_reference_rouge():
    quality = load_script("quality")
    conv = quality.dialogsum_conversation("#Person1#: Hi, how can I help?\n#Person2#: My card\nis lost.", "d")
    assert [(t.speaker, t.role.value, t.text) for t in conv.turns] == [  # a continuation line joins its turn
        ("#Person1#", "agent", "Hi, how can I help?"), ("#Person2#", "customer", "My card is lost.")]
    refs = ["the card is lost", "something else entirely"]
    assert quality.rouge_l_best("the card is lost", refs) == 1.0
    assert quality.rouge_l_best(None, refs) == 0.0 == quality.rouge_l_best("  ", refs)


def test_decode_speed_greedy_agreement_counts_identical_outputs_and_shared_prefixes():
    ds = load_script("decode_speed")
    same, prefix = ds.agreement([[1, 2, 3, 4], [5, 6, 7, 8]], [[1, 2, 3, 4], [5, 6, 0, 8]])
    assert same == 0.5 and prefix == 0.75  # (4/4 + 2/4) / 2
    assert ds.agreement([[1, 2]], [[1, 2, 3, 4]]) == (0.0, 0.5)  # a shorter output is not identical
