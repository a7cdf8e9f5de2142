"""Task quality on real data: what convtune serves, its base model, and cheap baselines, per task.

One command, read-only use of the public datasets in ``../shared/datasets``
(``--datasets-dir``; a dataset that is absent is skipped with a message). For
every task, in one run and through the code users run:

* **served**: ``convtune.training.train`` (LoRA SFT on the default model, the
  task declared in a custom task file as a user would) and then
  ``convtune.evaluation.evaluate(RUN_DIR, ...)``, which answers the task with
  whatever the run serves: the tuned LM (constrained to the labels), or the
  predictor recorded in ``RUN_DIR/predictors/selection.json`` when the run has
  one (``predictor`` in the JSON; ``lm`` otherwise);
* **tuned LM** (label tasks whose run serves another predictor): the same run
  with ``evaluate(..., predictors=False)``, on the base model's sample;
* **base_model**: ``evaluate(<model name>, ...)`` with the same task, decoding
  constrained to the labels, on a smaller stratified sample (``n_test_base``;
  constrained scoring of many labels costs seconds per text on a CPU);
* **baselines**: label tasks: majority label, TF-IDF (word 1-2 grams) + logistic
  regression, MiniLM (``embeddings.Encoder()``, the packaged all-MiniLM-L6-v2)
  1-nearest-neighbour and + logistic regression, trained on the same training
  examples; summaries: the extractive baselines of ``tasks/extractive.py``.

Tasks and data choices (override sizes with ``--set DATASET.KEY=VALUE``; see SIZES):

* ``banking77/intent``: 77 intents; train 10 per intent stratified from
  ``train.csv`` (seed 0, the same examples as ``benchmarks/banking77.py``);
  the run's own stratified validation split (2 of each 10) chooses the
  predictor, which is then refitted on all 10 (label tasks here get no extra
  validation data: the baselines see the same labelled examples);
  test: all 3,080 ``test.csv`` texts; base model: 2 per intent.
* ``multidogo/intent``: customer turns of the ``insurance`` and ``software``
  domains (turn-level annotation) pooled into one task (shared dialogue-act
  labels such as ``confirmation`` merged: 19 labels); turns with several intents
  (``a<div>b``) are dropped; train up to 20 per intent from ``train.tsv``,
  validation: the run's own 20% split, test up to 40 per intent from
  ``test.tsv`` (a stratified cap: 7,584 test turns otherwise), base model 10 per
  intent of that test sample.
* ``dailydialog/sentiment``: utterance emotion mapped to negative (anger,
  disgust, fear, sadness) / neutral (none) / positive (happiness, surprise);
  metric macro-F1; validation: the run's own 20% split; train up to 300 per class from the
  rest of the official validation split (negative has 170 in all: 150 train);
  test: every test-split utterance (7,740; 82% neutral); base model 100 per class.
* ``dialogsum/summary``: ROUGE-L F (rouge-score, Porter stemming), best of the
  three references, on the first 100 test dialogues; train on the first 180
  ``dev`` dialogues (one reference each), summary task only; base model on the
  first 50 test dialogues. Dialogues go through convtune's transcript parser
  (``#Person1#: ...`` lines); speakers keep their names (the references say
  ``#Person1#``), roles: ``#Person1#`` = agent (it opens most service
  encounters), ``#Person2#`` = customer. Every system also gets faithfulness,
  repetition rate and loop count (``tasks.metrics``).

``served`` is measured on the whole test set when the run answers fast enough
(projected from the base-sample pass, ``--served-full-max-seconds``; an
encoder-head predictor does), else on the base-model sample; ``n_test`` says
which, and ``baselines`` are always on the same texts as ``served``.
``*_on_base_sample`` keys compare everything on the base model's sample. A run
with predictors refits them on train + validation (``served_labelled_examples``),
so ``baselines_train_plus_validation`` gives the baselines that labelled pool too;
``baselines`` are trained on the training examples only.

A rerun continues where a run stopped: work lives in ``runs/quality/<dataset>/``
(``--workdir``), each stage's result is kept there with a key of its inputs and
settings and reused when they match; an unfinished training run is resumed from
its last checkpoint, a finished one (``metrics.json``) is reused.
``benchmarks/results/quality.json`` is rewritten after every stage (other
datasets' entries already in it are kept).

    HF_HUB_OFFLINE=1 python benchmarks/quality.py [--datasets banking77 multidogo dailydialog dialogsum]
        [--quick] [--skip-lm] [--threads 2] [--set banking77.train=30]

``--quick``: tiny samples and 2 training steps (a smoke run of every stage;
work in ``runs/quality-quick/``, result in ``runs/quality-quick/quality.json``).
``--skip-lm``: baselines only (no model is trained or loaded; LM results kept
from an earlier run with the same settings are still reported).
``--train-set GROUP.KEY=VALUE``: an extra ``convtune train`` config key for every
run (e.g. ``predictors.enabled=false`` for LM-only runs).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.banking77 import read_split, stratified  # noqa: E402
from benchmarks.common import machine, write_result  # noqa: E402

DATASETS = ("banking77", "multidogo", "dailydialog", "dialogsum")
DEFAULT_DATASETS_DIR = ROOT.parent / "shared" / "datasets"
OUT = ROOT / "benchmarks" / "results" / "quality.json"

# Per-dataset sizes and training settings (``--set DATASET.KEY=VALUE``); ``QUICK`` replaces some.
# train/val/test/base: examples per label (dialogsum: dialogues, the first N).
# test 0 = the whole test split. Training: LoRA SFT, fp32 on CPU, ~100-120 tokens/s on 2 cores.
SIZES: dict[str, dict[str, Any]] = {
    "banking77": {"train": 10, "val": 0, "test": 0, "base": 2, "epochs": 1, "lr": 1e-3, "batch_size": 8,
                  "max_seq_len": 256, "transcript_tokens": 192},
    "multidogo": {"train": 20, "val": 0, "test": 40, "base": 10, "epochs": 1, "lr": 1e-3, "batch_size": 8,
                  "max_seq_len": 256, "transcript_tokens": 192, "domains": "insurance,software"},
    "dailydialog": {"train": 300, "val": 0, "test": 0, "base": 100, "epochs": 1, "lr": 1e-3,
                    "batch_size": 8, "max_seq_len": 256, "transcript_tokens": 192},
    "dialogsum": {"train": 180, "val": 0, "test": 100, "base": 50, "epochs": 1, "lr": 5e-4, "batch_size": 1,
                  "grad_accum": 4, "max_seq_len": 768, "transcript_tokens": 576},
}
QUICK: dict[str, dict[str, Any]] = {
    "banking77": {"train": 3, "val": 1, "test": 2, "base": 4},
    "multidogo": {"train": 3, "val": 1, "test": 5, "base": 4},
    "dailydialog": {"train": 20, "val": 3, "test": 30, "base": 4},
    "dialogsum": {"train": 4, "test": 6, "base": 2},
}
QUICK_MAX_STEPS = 2

Row = tuple[str, str]  # (text, label)


# ---- small helpers ----------------------------------------------------------------------


def say(msg: str) -> None:
    print(msg, flush=True)


def key_of(*parts: Any) -> str:
    """A short fingerprint of a stage's inputs (data and settings): a stage reruns when it changes."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def capped(rows: list[Row], per_label: int, seed: int) -> list[Row]:
    """Stratified cap: at most ``per_label`` rows per label (0: every row, order kept)."""
    return list(rows) if per_label <= 0 else stratified(rows, per_label, seed)


def minus(rows: list[Row], taken: list[Row]) -> list[Row]:
    """``rows`` without the (text, label) pairs in ``taken`` (each occurrence removed once)."""
    left = Counter(taken)
    out = []
    for r in rows:
        if left[r] > 0:
            left[r] -= 1
        else:
            out.append(r)
    return out


def label_scores(gold: Sequence[str], pred: Sequence[str | None]) -> dict[str, float]:
    from tasks.metrics import accuracy, macro_f1

    return {"accuracy": round(accuracy(list(gold), list(pred)), 4),
            "macro_f1": round(macro_f1(list(gold), list(pred)), 4)}


class Stages:
    """Stage results of one dataset in ``WORKDIR/stages.json``, each under the key of its inputs."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def get(self, name: str, key: str) -> Any:
        hit = self.data.get(name)
        return hit["result"] if isinstance(hit, dict) and hit.get("key") == key else None

    def put(self, name: str, key: str, result: Any) -> Any:
        self.data[name] = {"key": key, "result": result}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)
        return result


class Embedder:
    """Sentence embeddings with a cache; the packaged MiniLM unless an encoder is given (tests)."""

    def __init__(self, encoder: Any = None):
        self._encoder = encoder
        self.cache: dict[str, Any] = {}

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from embeddings.encoder import Encoder

            self._encoder = Encoder()
        return self._encoder

    def __call__(self, texts: Sequence[str]):
        import numpy as np

        todo = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if todo:
            self.cache.update(zip(todo, self.encoder.encode(todo).vectors, strict=True))
        return np.stack([self.cache[t] for t in texts])


# ---- the data ---------------------------------------------------------------------------


@dataclass
class LabelData:
    """A label task: training/validation/test rows and how they were chosen."""

    key: str  # "banking77/intent"
    dataset: str
    task: dict[str, Any]  # the task-file entry (name, type, instruction, labels, metric, ...)
    train: list[Row]
    validation: list[Row]
    test: list[Row]
    base: list[int]  # indices into test: the base model's sample
    majority: str  # the most common label of the split the training rows come from
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        return self.task.get("metric", "accuracy")


@dataclass
class SummaryData:
    key: str
    dataset: str
    task: dict[str, Any]
    train: list[tuple[Any, str]]  # (Conversation, reference)
    test: list[tuple[Any, list[str]]]  # (Conversation, references)
    base: int  # the base model sees the first ``base`` test dialogues
    info: dict[str, Any] = field(default_factory=dict)

    metric = "rougeL"


def base_sample(test: list[Row], per_label: int, seed: int) -> list[int]:
    """Indices of a stratified sample of ``test`` (``per_label`` each; 0: all)."""
    if per_label <= 0:
        return list(range(len(test)))
    idx_by_label: dict[str, list[int]] = defaultdict(list)
    for i, (_, y) in enumerate(test):
        idx_by_label[y].append(i)
    rng = random.Random(seed)
    out: list[int] = []
    for label in sorted(idx_by_label):
        items = idx_by_label[label][:]
        rng.shuffle(items)
        out += items[:per_label]
    return sorted(out)


def quick_base(idx: list[int], test: list[Row], n: int) -> list[int]:
    """--quick: the first ``n`` of a sample, spread over labels (one per label first)."""
    seen, first, rest = set(), [], []
    for i in idx:
        (first if test[i][1] not in seen else rest).append(i)
        seen.add(test[i][1])
    return sorted((first + rest)[:n])


def load_banking77(root: Path, s: dict[str, Any], quick: bool) -> LabelData | str:
    folder = root / "banking77"
    train_csv, test_csv = folder / "train.csv", folder / "test.csv"
    if not (train_csv.is_file() and test_csv.is_file()):
        return f"Banking77 not found at {folder} (expected train.csv and test.csv)"
    train_all, test_all = read_split(train_csv), read_split(test_csv)
    labels = sorted({y for _, y in train_all})
    train = stratified(train_all, s["train"], seed=0)
    val = stratified(minus(train_all, train), s["val"], seed=2) if s["val"] else []
    test = capped(test_all, s["test"], seed=1)
    base = base_sample(test, s["base"] if not quick else 1, seed=1)
    if quick:
        base = quick_base(base, test, s["base"])
    task = {"name": "banking_intent", "type": "classification",
            "instruction": "Which banking request is the customer making?", "labels": labels,
            "metric": "accuracy", "show_labels": False, "constrained": True}
    info = {"source": "banking77 train.csv / test.csv", "labels": len(labels),
            "train": f"{s['train']} per intent, stratified from train.csv (seed 0)",
            "validation": f"{s['val']} per intent from the rest of train.csv (seed 2)",
            "test": "all of test.csv" if not s["test"] else f"{s['test']} per intent of test.csv"}
    return LabelData("banking77/intent", "banking77", task, train, val, test, base,
                     Counter(y for _, y in train_all).most_common(1)[0][0], info)


def read_multidogo(path: Path) -> tuple[list[Row], int]:
    """(utterance, intent) of one turn-level tsv (default csv quoting: quoted cells hold newlines);
    turns with several intents (``a<div>b``) are dropped and counted."""
    rows, multi = [], 0
    with path.open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            text, intent = " ".join((r.get("utterance") or "").split()), (r.get("intent") or "").strip()
            if not text or not intent:
                continue
            if "<div>" in intent:
                multi += 1
                continue
            rows.append((text, intent))
    return rows, multi


def load_multidogo(root: Path, s: dict[str, Any], quick: bool) -> LabelData | str:
    folder = root / "multidogo" / "turn_level"
    domains = [d.strip() for d in str(s["domains"]).split(",") if d.strip()]
    missing = [str(folder / d / f"{sp}.tsv") for d in domains for sp in ("train", "dev", "test")
               if not (folder / d / f"{sp}.tsv").is_file()]
    if missing:
        return f"MultiDoGo not found ({missing[0]} is missing)"
    split: dict[str, list[Row]] = {"train": [], "dev": [], "test": []}
    dropped: dict[str, int] = {}
    for d in domains:
        for sp in split:
            rows, multi = read_multidogo(folder / d / f"{sp}.tsv")
            split[sp] += rows
            dropped[f"{d}/{sp}"] = multi
    labels = sorted({y for _, y in split["train"]})
    known = set(labels)
    unseen = Counter(y for rows in (split["dev"], split["test"]) for _, y in rows if y not in known)
    dev = [r for r in split["dev"] if r[1] in known]
    test_all = [r for r in split["test"] if r[1] in known]
    train = stratified(split["train"], s["train"], seed=0)
    val = stratified(dev, s["val"], seed=2) if s["val"] else []
    test = capped(test_all, s["test"], seed=1)
    base = base_sample(test, s["base"] if not quick else 1, seed=1)
    if quick:
        base = quick_base(base, test, s["base"])
    task = {"name": "multidogo_intent", "type": "classification",
            "instruction": "What is the customer doing in this turn of a customer-service chat?",
            "labels": labels, "metric": "accuracy", "show_labels": False, "constrained": True}
    info = {"source": "multidogo turn_level train/dev/test.tsv", "domains": domains, "labels": len(labels),
            "multi_intent_turns": "dropped", "multi_intent_dropped": dropped,
            "test_labels_not_in_train_dropped": dict(unseen),
            "train": f"up to {s['train']} per intent, stratified from train.tsv (seed 0)",
            "validation": f"up to {s['val']} per intent from dev.tsv (seed 2)",
            "test": (f"up to {s['test']} per intent of test.tsv (seed 1), of {len(test_all)}" if s["test"]
                     else "all of test.tsv"), "test_split_size": len(test_all)}
    return LabelData("multidogo/intent", "multidogo", task, train, val, test, base,
                     Counter(y for _, y in split["train"]).most_common(1)[0][0], info)


SENTIMENT_OF_EMOTION = {"0": "neutral", "1": "negative", "2": "negative", "3": "negative",
                        "4": "positive", "5": "negative", "6": "positive"}


def read_dailydialog(folder: Path) -> list[Row]:
    """(utterance, sentiment) for every utterance of a split (one dialogue per line, ``__eou__``)."""
    dialogues = (folder / "dialogues.txt").read_text(encoding="utf-8").splitlines()
    emotions = (folder / "dialogues_emotion.txt").read_text(encoding="utf-8").splitlines()
    rows = []
    for d, e in zip(dialogues, emotions, strict=True):
        utts = [" ".join(u.split()) for u in d.split("__eou__")]
        if utts and not utts[-1]:
            utts.pop()
        labels = e.split()
        if len(utts) != len(labels):  # not in the official files; skip such a line rather than misalign
            continue
        rows += [(u, SENTIMENT_OF_EMOTION[y]) for u, y in zip(utts, labels)
                 if u and y in SENTIMENT_OF_EMOTION]
    return rows


def load_dailydialog(root: Path, s: dict[str, Any], quick: bool) -> LabelData | str:
    folder = root / "dailydialog"
    need = [folder / sp / f for sp in ("validation", "test")
            for f in ("dialogues.txt", "dialogues_emotion.txt")]
    if not all(p.is_file() for p in need):
        return f"DailyDialog not found at {folder} (expected validation/ and test/ with dialogues*.txt)"
    val_split, test_all = read_dailydialog(folder / "validation"), read_dailydialog(folder / "test")
    val = stratified(val_split, s["val"], seed=2) if s["val"] else []
    train = stratified(minus(val_split, val), s["train"], seed=0)
    test = capped(test_all, s["test"], seed=1)
    base = base_sample(test, s["base"] if not quick else 1, seed=1)
    if quick:
        base = quick_base(base, test, s["base"])
    task = {"name": "emotion_sentiment", "type": "classification",
            "instruction": "What is the sentiment of the speaker's utterance?",
            "labels": ["negative", "neutral", "positive"], "metric": "macro_f1", "constrained": True}
    info = {"source": "dailydialog validation (train + validation) / test (test)",
            "mapping": {"negative": "anger 1, disgust 2, fear 3, sadness 5", "neutral": "none 0",
                        "positive": "happiness 4, surprise 6"},
            "train": f"up to {s['train']} per class from the validation split (after validation, seed 0)",
            "validation": f"{s['val']} per class from the validation split (seed 2)",
            "test": ("every utterance of the test split" if not s["test"]
                     else f"{s['test']} per class of test"),
            "train_class_counts": dict(Counter(y for _, y in train)),
            "test_class_counts": dict(Counter(y for _, y in test))}
    return LabelData("dailydialog/sentiment", "dailydialog", task, train, val, test, base,
                     Counter(y for _, y in val_split).most_common(1)[0][0], info)


def dialogsum_conversation(dialogue: str, conv_id: str):
    """A DialogSum dialogue through convtune's transcript parser; #Person1# agent, #Person2# customer."""
    from convtune.conversation import Role
    from convtune.ingest.transcript import conversation_from_text

    conv = conversation_from_text(dialogue, conv_id)
    roles = {"#person1#": Role.agent, "#person2#": Role.customer}
    turns = [t.model_copy(update={"role": roles.get(t.speaker.lower(), Role.other)}) for t in conv.turns]
    return conv.model_copy(update={"turns": turns})


def load_dialogsum(root: Path, s: dict[str, Any], quick: bool) -> SummaryData | str:
    folder = root / "dialogsum"
    dev, test = folder / "dialogsum.dev.jsonl", folder / "dialogsum.test.jsonl"
    if not (dev.is_file() and test.is_file()):
        return f"DialogSum not found at {folder} (expected dialogsum.dev.jsonl and dialogsum.test.jsonl)"

    def rows(path: Path, n: int) -> list[dict]:
        out = []
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    out.append(json.loads(line))
                if len(out) >= n:
                    break
        return out

    train = [(dialogsum_conversation(r["dialogue"], f"dialogsum-{r['fname']}"), r["summary"].strip())
             for r in rows(dev, s["train"])]
    tests = []
    for r in rows(test, s["test"]):
        refs = [r[k].strip() for k in ("summary1", "summary2", "summary3") if (r.get(k) or "").strip()]
        tests.append((dialogsum_conversation(r["dialogue"], f"dialogsum-{r['fname']}"), refs))
    task = {"name": "dialogue_summary", "type": "text", "metric": "rouge",
            "instruction": "Summarize the dialogue in 1-3 sentences: who wants what and what happens. "
                           "Refer to the speakers as #Person1# and #Person2#."}
    info = {"source": "dialogsum dev (train) / test (test)",
            "train": f"the first {len(train)} dev dialogues (one reference each)",
            "test": f"the first {len(tests)} test dialogues, ROUGE-L best of summary1..3",
            "roles": {"#Person1#": "agent", "#Person2#": "customer"},
            "speakers": "kept as written (#Person1#, #Person2#: the references use them)"}
    return SummaryData("dialogsum/summary", "dialogsum", task, train, tests, min(s["base"], len(tests)), info)


LOADERS: dict[str, Callable[[Path, dict[str, Any], bool], Any]] = {
    "banking77": load_banking77, "multidogo": load_multidogo, "dailydialog": load_dailydialog,
    "dialogsum": load_dialogsum,
}


# ---- baselines --------------------------------------------------------------------------


def label_baselines(train: list[Row], tests: dict[str, list[Row]], embed: Embedder, majority: str
                    ) -> dict[str, dict[str, dict[str, float]]]:
    """``{baseline: {test_name: {"accuracy", "macro_f1"}}}`` for majority, TF-IDF + LR, MiniLM 1-NN / + LR."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    texts, ys = [t for t, _ in train], [y for _, y in train]
    out: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    tfidf = LogisticRegression(max_iter=3000, C=10.0).fit(vec.fit_transform(texts), ys)
    xtr, ytr = embed(texts), np.array(ys)
    emb_lr = LogisticRegression(max_iter=3000, C=10.0).fit(xtr, ytr)
    for name, rows in tests.items():
        gold, xs = [y for _, y in rows], [t for t, _ in rows]
        out["majority"][name] = label_scores(gold, [majority] * len(rows))
        out["tfidf_logreg"][name] = label_scores(gold, list(tfidf.predict(vec.transform(xs))))
        xte = embed(xs)
        out["minilm_1nn"][name] = label_scores(gold, list(ytr[(xte @ xtr.T).argmax(axis=1)]))
        out["minilm_logreg"][name] = label_scores(gold, list(emb_lr.predict(xte)))
    return dict(out)


_SCORER: list[Any] = []


def rouge_l_best(pred: str | None, refs: Sequence[str]) -> float:
    """ROUGE-L F (rouge-score, Porter stemming) against the best of the references; no answer: 0."""
    if not pred or not pred.strip():
        return 0.0
    if not _SCORER:
        from rouge_score import rouge_scorer

        _SCORER.append(rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True))
    return max(_SCORER[0].score(ref, pred)["rougeL"].fmeasure for ref in refs)


def quality_helpers() -> tuple[Any, Any, Any, Any]:
    """(EXTRACTIVE_BASELINES, faithfulness, repetition_rate, has_loop), ``None`` for each one missing."""
    try:
        from tasks.extractive import EXTRACTIVE_BASELINES
    except ImportError:
        EXTRACTIVE_BASELINES = None
    import tasks.metrics as m

    return (EXTRACTIVE_BASELINES, getattr(m, "faithfulness", None), getattr(m, "repetition_rate", None),
            getattr(m, "has_loop", None))


def summary_scores(outputs: Sequence[str | None], data: Sequence[tuple[Any, list[str]]]) -> dict[str, Any]:
    """ROUGE-L (best reference), mean faithfulness and repetition rate, loop count of some outputs."""
    _, faithful, repetition, loop = quality_helpers()
    texts = [o or "" for o in outputs]
    out: dict[str, Any] = {"rougeL": round(sum(rouge_l_best(o, refs) for o, (_, refs) in zip(texts, data))
                                           / max(1, len(data)), 4), "n": len(data)}
    if faithful is not None:
        # mean over outputs with checkable words (None: nothing to check), as score_answers does
        found = [f for f in (faithful(o, c.transcript()) for o, (c, _) in zip(texts, data)) if f is not None]
        out["faithfulness"] = round(sum(found) / len(found), 4) if found else 1.0
    if repetition is not None:
        out["repetition_rate"] = round(sum(repetition(o) for o in texts) / max(1, len(texts)), 4)
    if loop is not None:
        out["loops"] = sum(bool(loop(o)) for o in texts)
    return out


# ---- convtune: train and evaluate ---------------------------------------------------------


def write_task_file(path: Path, entry: dict[str, Any]) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"tasks": [entry]}, sort_keys=False, allow_unicode=True))
    return path


def one_turn(rows: Sequence[Row], prefix: str, task: str) -> list[Any]:
    """Each text a one-turn conversation (role customer) labelled for ``task``."""
    from convtune.conversation import Conversation, Role, Turn

    return [Conversation(id=f"{prefix}-{i}", turns=[Turn(id="t1", speaker="Customer", role=Role.customer,
                                                         text=text)], labels={task: label})
            for i, (text, label) in enumerate(rows)]


def labelled(convs: Sequence[Any], task: str, labels: Sequence[str]) -> list[Any]:
    return [c.model_copy(update={"labels": {task: y}}) for c, y in zip(convs, labels, strict=True)]


def train_flags(ds: str, s: dict[str, Any], args, workdir: Path, task_file: Path, task_name: str,
                has_val: bool) -> dict[str, Any]:
    flags = {
        "model.name": args.model, "data.train": str(workdir / "train.jsonl"),
        "data.max_transcript_tokens": s["transcript_tokens"], "tasks.names": [task_name],
        "tasks.files": [str(task_file)], "train.epochs": s["epochs"], "train.batch_size": s["batch_size"],
        "train.grad_accum": s.get("grad_accum", 1), "train.max_seq_len": s["max_seq_len"],
        "train.lr": s["lr"],
        "train.warmup_ratio": 0.05, "train.eval_every": 0, "train.save_every": s.get("save_every", 25),
        "train.log_every": 10, "train.seed": 0, "train.device": args.device,
        "output.dir": str(workdir / "run"),
    }
    if has_val:
        flags["data.validation"] = str(workdir / "validation.jsonl")
    elif ds == "dialogsum":  # no label task: nothing to choose on validation, train on everything
        flags["data.validation_fraction"] = 0.0
    # else: convtune's own auto split (a stratified 20% of the same labelled examples the baselines
    # get) chooses the predictor, and serving refits on all of them: the same labelled budget
    if args.quick:
        flags["train.max_steps"] = QUICK_MAX_STEPS
    flags.update(args.train_sets)
    return flags


def stage(stages: Stages, name: str, key: str, args, what: str, compute: Callable[[], Any]) -> Any:
    """A stage's result: kept from an earlier run when its key matches, else computed and kept
    (``--skip-lm``: only what is kept, ``None`` when nothing is)."""
    hit = stages.get(name, key)
    if hit is not None or args.skip_lm:
        return hit
    say(f"  {what} ...")
    return stages.put(name, key, compute())


def train_stage(stages: Stages, flags: dict[str, Any], data_key: str, files: dict[str, list[Any]], args,
                what: str) -> tuple[Path, dict[str, Any]] | None:
    """Train (or resume an unfinished run, or reuse a finished one) on ``files`` (name ->
    conversations, written into the work folder); returns the run directory and training stats
    (``--skip-lm``: only a finished run, ``None`` without one)."""
    run = Path(flags["output.dir"])
    key = key_of(flags, data_key)
    done = stages.get("train", key)
    if done is not None and (run / "metrics.json").is_file():
        say(f"  training: reusing the finished run {run}")
        return run, done
    started = stages.get("train_started", key) is not None and (run / "config.json").is_file()
    if started and (run / "metrics.json").is_file():  # finished, but the stats were not kept
        return run, stages.put("train", key, stats_of(json.loads((run / "metrics.json").read_text()), None))
    if args.skip_lm:
        return None
    from convtune.ingest import write_conversations
    from convtune.training import load_config, train

    for fname, convs in files.items():
        write_conversations(run.parent / fname, convs)
    stages.put("train_started", key, True)
    say(f"  {what} ...")
    if started:
        say(f"  training: resuming {run}")
        cfg = load_config(flags=flags, resume=True)
    else:
        cfg = load_config(flags={**flags, "output.overwrite": True})
    t0 = time.perf_counter()
    res = train(cfg, resume=started, progress=True)
    return res.run_dir, stages.put("train", key, stats_of(res.metrics, time.perf_counter() - t0))


def record_training(entry: dict[str, Any], trained: tuple[Path, dict[str, Any]] | None, report: Any,
                    key: str) -> Path | None:
    """Keep a training stage's stats in the task's entry (saved at once); the run directory, or
    None when there is no finished run (``--skip-lm``)."""
    if trained is None:
        return None
    run_dir, stats = trained
    entry["train"] = stats
    say(f"  trained: {stats}")
    report.save(key, entry)
    return run_dir


def run_fingerprint(run_dir: Path) -> str:
    """Changes whenever the run is trained again (results of an earlier training are not reused)."""
    try:
        return hashlib.sha256((run_dir / "metrics.json").read_bytes()).hexdigest()[:16]
    except OSError:
        return "unfinished"


def stats_of(metrics: dict[str, Any], seconds: float | None) -> dict[str, Any]:
    keep = ("steps", "tokens", "tokens_per_second", "final_train_loss", "final_eval_loss", "train_seconds",
            "examples", "pairs")
    out = {k: metrics[k] for k in keep if k in metrics}
    if seconds is not None:
        out["wall_seconds"] = round(seconds, 1)
    return out


class Throttled:
    """evaluate()'s progress messages, at most one a minute."""

    def __init__(self, label: str, every: float = 60.0):
        self.label, self.every, self.last = label, every, time.monotonic()

    def __call__(self, msg: str) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            say(f"    {self.label}: {msg}")


def lm_eval(ref: Any, convs: Sequence[Any], task: Any, args, label: str, out: Path,
            predictors: bool = True) -> dict[str, Any]:
    """``convtune.evaluation.evaluate`` on ``convs`` (constrained to the labels where it applies;
    ``predictors=False``: the LM answers even where the run records another predictor); the
    records go to ``out`` (jsonl); returns ``{"by_id": {id: parsed answer}, "metrics", ...}``."""
    from convtune.evaluation.evaluate import evaluate

    t0 = time.perf_counter()
    res = evaluate(ref, list(convs), [task], constrained=True, batch_size=args.eval_batch_size,
                   device=args.device, progress=Throttled(label),
                   **({} if predictors else {"predictors": False}))  # older evaluate(): no such argument
    seconds = time.perf_counter() - t0
    name = task if isinstance(task, str) else task.name
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for r in res.records:
            f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
    by_id = {r["conversation_id"]: (r["parsed"] if r["parse_ok"] else None) for r in res.records}
    outputs = {r["conversation_id"]: r["output"] for r in res.records}
    tr = res.tasks.get(name)
    predictors = res.settings.get("predictors") or {}
    return {"by_id": by_id, "outputs": outputs, "metrics": tr.metrics if tr else {},
            "predictor": predictors.get(name, "lm"), "seconds": round(seconds, 1),
            "seconds_per_example": round(seconds / max(1, len(convs)), 3), "n": len(convs)}


LM_PREDICTORS = ("lm", "lm_retrieval")  # == convtune.predictors.store.LM_PREDICTORS


def summary_of(r: dict[str, Any]) -> dict[str, Any]:
    """An lm_eval result without its per-conversation answers (those are in the predictions files)."""
    return {k: v for k, v in r.items() if k not in ("by_id", "outputs")}


def selection_table(run_dir: Path) -> Any:
    """The validation table of ``RUN_DIR/predictors/selection.json`` (None: the run has no predictors)."""
    try:
        selection = json.loads((run_dir / "predictors" / "selection.json").read_text())
    except (OSError, ValueError):
        return None
    try:
        from convtune.predictors.fit import validation_table

        return validation_table(selection)
    except (ImportError, KeyError, TypeError):
        return selection


# ---- one task, stage by stage -------------------------------------------------------------


class Report:
    """The quality.json being built: other datasets' entries already in the file are kept."""

    def __init__(self, args):
        self.args = args
        self.tasks: dict[str, Any] = {}
        self.notes: list[str] = []
        try:
            old = json.loads(args.out.read_text())
            self.tasks = dict(old.get("tasks") or {})
            self.notes = list(old.get("notes") or [])
        except (OSError, ValueError, AttributeError):
            pass
        self.wrote = False

    def save(self, key: str, entry: dict[str, Any]) -> None:
        # how this entry was measured, so entries from different runs in one file stay explained
        entry["command"] = " ".join(["python benchmarks/quality.py", *sys.argv[1:]])
        entry["measured"] = time.strftime("%Y-%m-%d")
        self.tasks[key] = entry
        payload = {"benchmark": "quality", "model": self.args.model, "quick": self.args.quick,
                   "machine": machine(self.args.threads), "tasks": self.tasks,
                   **({"notes": self.notes} if self.notes else {})}
        write_result(self.args.out, payload)
        self.wrote = True


def run_label_task(d: LabelData, s: dict[str, Any], args, report: Report, embed: Embedder) -> dict[str, Any]:
    workdir = args.workdir / d.dataset
    preds = workdir / "predictions"
    stages = Stages(workdir / "stages.json")
    name, metric = d.task["name"], d.metric
    base_rows = [d.test[i] for i in d.base]
    entry: dict[str, Any] = {
        "metric": metric, "served": None, "predictor": None, "base_model": None, "baselines": {},
        "n_test": len(d.test), "n_test_base": len(base_rows), "n_train": len(d.train),
        "n_validation": len(d.validation), "labels": len(d.task["labels"]), "task": {
            k: v for k, v in d.task.items() if k != "labels"}, "data": d.info,
        "majority_label": d.majority, "complete": False,
    }
    say(f"{d.key}: {len(d.train)} train / {len(d.validation)} validation / {len(d.test)} test "
        f"({len(base_rows)} for the base model), {len(d.task['labels'])} labels")

    # stage 1: baselines on the whole test set and on the base model's sample
    data_key = key_of(d.train, d.validation, d.task)
    bkey = key_of("baselines", d.train, d.validation, d.test, d.base, d.majority)
    base_lines = stages.get("baselines", bkey)
    if base_lines is None:
        t0 = time.perf_counter()
        base_lines = stages.put("baselines", bkey, label_baselines(
            d.train, {"test": d.test, "base_sample": base_rows}, embed, d.majority))
        if d.validation:  # the labelled pool a run with predictors serves from (refit on train + validation)
            pooled = label_baselines(d.train + d.validation, {"test": d.test, "base_sample": base_rows},
                                     embed, d.majority)
            base_lines = stages.put("baselines", bkey, {**base_lines, **{
                f"{b}+validation": v for b, v in pooled.items() if b != "majority"}})
        say(f"  baselines ({time.perf_counter() - t0:.0f} s): " + ", ".join(
            f"{b} {v['test'][metric]:.3f}" for b, v in base_lines.items()))
    else:
        say("  baselines: reused")

    def fill(served_on: str) -> None:
        def pick(on: str, pooled: bool) -> dict[str, float]:
            return {b.removesuffix("+validation"): v[on][metric] for b, v in base_lines.items()
                    if b.endswith("+validation") == pooled}

        entry["baselines"] = pick(served_on, False)
        entry["baselines_on_base_sample"] = pick("base_sample", False)
        if d.validation:
            entry["baselines_train_plus_validation"] = pick(served_on, True)
        entry["baselines_detail"] = base_lines

    fill("test")
    report.save(d.key, entry)

    task_file = write_task_file(workdir / "tasks.yaml", d.task)
    from tasks import load_task_file

    (task_obj,) = load_task_file(task_file)
    test_convs = one_turn(d.test, f"{d.dataset}-test", name)
    base_convs = [test_convs[i] for i in d.base]

    # stage 2: the base model, constrained to the labels, on the base sample
    base = stage(stages, "base", key_of("base", args.model, d.task, base_rows), args,
                 f"base model on {len(base_convs)} texts", lambda: summary_of(
                     lm_eval(args.model, base_convs, task_obj, args, "base", preds / "base.jsonl")))
    if base is not None:
        entry["base_model"] = base["metrics"].get(metric)
        entry["base_model_detail"] = base
        say(f"  base model {metric} {entry['base_model']:.3f} ({base['seconds_per_example']} s/text)")
        report.save(d.key, entry)

    # stage 3: train (LoRA SFT through convtune.training)
    flags = train_flags(d.dataset, s, args, workdir, task_file, name, bool(d.validation))
    files = {"train.jsonl": one_turn(d.train, f"{d.dataset}-train", name)}
    if d.validation:
        files["validation.jsonl"] = one_turn(d.validation, f"{d.dataset}-val", name)
    run_dir = record_training(entry, train_stage(
        stages, flags, data_key, files, args,
        f"training on {len(d.train)} texts ({s['epochs']} epoch, lr {s['lr']})"), report, d.key)
    if run_dir is None:
        return entry

    # stage 4: what the run serves, on the base sample, then (when fast enough) the whole test set
    run_key = key_of(flags, data_key, run_fingerprint(run_dir))
    served_base = stage(stages, "served_base", key_of("served_base", run_key, base_rows), args,
                        f"served (run {run_dir.name}) on the base sample", lambda: summary_of(
                            lm_eval(run_dir, base_convs, name, args, "served", preds / "served_base.jsonl")))
    if served_base is None:
        return entry
    predictor = served_base["predictor"]
    entry["predictor"] = predictor
    entry["served_on_base_sample"] = served_base["metrics"].get(metric)
    entry["served_base_detail"] = served_base
    say(f"  served ({predictor}) on the base sample: {metric} {entry['served_on_base_sample']:.3f} "
        f"({served_base['seconds_per_example']} s/text)")
    sel = selection_table(run_dir)
    if sel is not None:
        entry["selection"] = sel
        entry["served_labelled_examples"] = len(d.train) + len(d.validation)  # predictors refit on both
    if predictor in LM_PREDICTORS:
        entry["tuned_lm_on_base_sample"] = entry["served_on_base_sample"]
    elif not args.tuned_lm:
        entry["tuned_lm_on_base_sample"] = None  # --no-tuned-lm: not measured
    else:  # the tuned LM itself, for base vs tuned (the run serves another predictor)
        tuned = stage(stages, "tuned_lm", key_of("tuned_lm", run_key, base_rows), args,
                      "tuned LM (predictors off) on the base sample", lambda: summary_of(
                          lm_eval(run_dir, base_convs, name, args, "tuned LM", preds / "tuned_lm.jsonl",
                                  predictors=False)))
        if tuned is not None:
            entry["tuned_lm_on_base_sample"] = tuned["metrics"].get(metric)
            entry["tuned_lm_detail"] = tuned
            say(f"  tuned LM on the base sample: {metric} {entry['tuned_lm_on_base_sample']:.3f}")
    report.save(d.key, entry)

    projected = served_base["seconds_per_example"] * len(d.test)
    full_ok = len(base_rows) == len(d.test) or args.served_full or projected <= args.served_full_max_seconds
    if full_ok and len(base_rows) < len(d.test):
        full = stage(stages, "served_test", key_of("served_test", run_key, d.test), args,
                     f"served on all {len(d.test)} test texts (~{projected:.0f} s)", lambda: summary_of(
                         lm_eval(run_dir, test_convs, name, args, "served", preds / "served_test.jsonl")))
        if full is None:
            return entry
        entry["served"] = full["metrics"].get(metric)
        entry["served_detail"] = full
        entry["predictor"] = full["predictor"]
    elif full_ok:
        entry["served"] = entry["served_on_base_sample"]
    else:
        say(f"  served on the base sample only: all {len(d.test)} test texts would take ~{projected:.0f} s "
            f"(> --served-full-max-seconds {args.served_full_max_seconds:.0f})")
        entry["served"] = entry["served_on_base_sample"]
        entry["n_test"] = len(base_rows)
        entry["served_on"] = "base_sample"
        fill("base_sample")
    entry["complete"] = True
    say(f"  served ({entry['predictor']}) {metric} {entry['served']:.3f} on {entry['n_test']} test texts")
    report.save(d.key, entry)
    return entry


def run_summary_task(d: SummaryData, s: dict[str, Any], args, report: Report) -> dict[str, Any]:
    workdir = args.workdir / d.dataset
    preds = workdir / "predictions"
    stages = Stages(workdir / "stages.json")
    name = d.task["name"]
    extractive, *_ = quality_helpers()
    entry: dict[str, Any] = {
        "metric": "rougeL", "served": None, "predictor": "lm", "base_model": None, "baselines": {},
        "n_test": len(d.test), "n_test_base": d.base, "n_train": len(d.train), "task": d.task, "data": d.info,
        "rouge": "rouge-score ROUGE-L F, Porter stemming, best of the references", "systems": {},
        "complete": False,
    }
    say(f"{d.key}: {len(d.train)} train / {len(d.test)} test dialogues ({d.base} for the base model)")

    # stage 1: extractive baselines (on every test dialogue and on the base sample)
    if extractive is None:
        say("  extractive baselines: tasks/extractive.py is not available; skipped")
    else:
        for bname, fn in extractive.items():
            outs = [fn(conv) for conv, _ in d.test]
            sc = summary_scores(outs, d.test)
            sc["on_base_sample"] = summary_scores(outs[:d.base], d.test[:d.base])["rougeL"]
            entry["systems"][bname] = sc
            entry["baselines"][bname] = sc["rougeL"]
        # the method a user would get without looking at the test set: best on the training dialogues
        on_train = {b: sum(rouge_l_best(fn(c), [ref]) for c, ref in d.train) / max(1, len(d.train))
                    for b, fn in extractive.items()}
        picked = max(on_train, key=lambda b: on_train[b])
        entry["baselines"]["extractive_picked_on_train"] = entry["baselines"][picked]
        entry["extractive_picked_on_train"] = {"method": picked,
                                               "train_rougeL": {b: round(v, 4) for b, v in on_train.items()}}
        on_base = {b: v["on_base_sample"] for b, v in entry["systems"].items()}
        entry["baselines_on_base_sample"] = {**on_base, "extractive_picked_on_train": on_base[picked]}
        say("  extractive baselines: " + ", ".join(f"{b} {v:.3f}" for b, v in entry["baselines"].items()))
    report.save(d.key, entry)

    task_file = write_task_file(workdir / "tasks.yaml", d.task)
    from tasks import load_task_file

    (task_obj,) = load_task_file(task_file)
    test_convs = labelled([c for c, _ in d.test], name, [refs[0] for _, refs in d.test])
    base_convs, base_data = test_convs[:d.base], d.test[:d.base]

    def scored(ref: Any, convs: Sequence[Any], data: Sequence[tuple[Any, list[str]]], task: Any, label: str,
               out: Path) -> dict[str, Any]:
        r = lm_eval(ref, convs, task, args, label, out)
        return {"outputs": [r["by_id"].get(c.id) for c in convs], "predictor": r["predictor"],
                "seconds": r["seconds"], "seconds_per_example": r["seconds_per_example"],
                "first_reference_metrics": r["metrics"]}

    def scores(result: dict[str, Any], data: Sequence[tuple[Any, list[str]]]) -> dict[str, Any]:
        """Scored on every run from the kept outputs (metrics added later apply to old outputs too)."""
        sc = summary_scores(result["outputs"], data)
        sc["on_base_sample"] = summary_scores(result["outputs"][:d.base], base_data)["rougeL"]
        return sc

    # stage 2: the base model
    base = stage(stages, "base", key_of("base outputs", args.model, d.task, [c.id for c in base_convs]), args,
                 f"base model on {len(base_convs)} dialogues",
                 lambda: scored(args.model, base_convs, base_data, task_obj, "base", preds / "base.jsonl"))
    if base is not None:
        entry["systems"]["base_model"] = scores(base, base_data)
        entry["base_model"] = entry["systems"]["base_model"]["rougeL"]
        entry["base_model_detail"] = {k: v for k, v in base.items() if k != "outputs"}
        say(f"  base model ROUGE-L {entry['base_model']:.3f} ({base['seconds_per_example']} s/dialogue)")
        report.save(d.key, entry)

    # stage 3: train on the dev dialogues, the summary task only
    flags = train_flags(d.dataset, s, args, workdir, task_file, name, False)
    files = {"train.jsonl": labelled([c for c, _ in d.train], name, [ref for _, ref in d.train])}
    run_dir = record_training(entry, train_stage(
        stages, flags, key_of(d.task, [(c.id, ref) for c, ref in d.train]), files, args,
        f"training on {len(d.train)} dialogues ({s['epochs']} epoch, lr {s['lr']}, "
        f"max_seq_len {s['max_seq_len']})"), report, d.key)
    if run_dir is None:
        return entry

    # stage 4: served, on every test dialogue
    key = key_of("served outputs", flags, run_fingerprint(run_dir), [c.id for c in test_convs])
    served = stage(stages, "served_test", key, args,
                   f"served (run {run_dir.name}) on {len(test_convs)} dialogues",
                   lambda: scored(run_dir, test_convs, d.test, name, "served", preds / "served_test.jsonl"))
    if served is None:
        return entry
    entry["systems"]["served"] = scores(served, d.test)
    entry["served"] = entry["systems"]["served"]["rougeL"]
    entry["served_on_base_sample"] = entry["systems"]["served"]["on_base_sample"]
    entry["predictor"] = served["predictor"]
    entry["served_detail"] = {k: v for k, v in served.items() if k != "outputs"}
    entry["complete"] = True
    say(f"  served ROUGE-L {entry['served']:.3f} on {len(test_convs)} dialogues")
    report.save(d.key, entry)
    return entry


# ---- the table and the command ------------------------------------------------------------


def fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def print_table(entries: dict[str, dict[str, Any]]) -> None:
    if not entries:
        return
    say("\n" + f"{'task':<24}{'metric':<10}{'n':>6}{'served':>8}  {'predictor':<10}  baselines (same n)")
    for key, e in entries.items():
        lines = ", ".join(f"{b} {fmt(v)}" for b, v in e.get("baselines", {}).items())
        say(f"{key:<24}{e['metric']:<10}{e['n_test']:>6}{fmt(e.get('served')):>8}  "
            f"{str(e.get('predictor') or '-'):<10}  {lines}")
    say("\n" + f"{'on the base sample':<24}{'n':>6}{'base':>8}{'tuned LM':>10}{'served':>8}  baselines")
    for key, e in entries.items():
        lines = ", ".join(f"{b} {fmt(v)}" for b, v in e.get("baselines_on_base_sample", {}).items())
        say(f"{key:<24}{e.get('n_test_base', '-'):>6}{fmt(e.get('base_model')):>8}"
            f"{fmt(e.get('tuned_lm_on_base_sample')):>10}{fmt(e.get('served_on_base_sample')):>8}  {lines}")
    extra = {k: e for k, e in entries.items() if e.get("systems")}
    for key, e in extra.items():
        say(f"\n{key}: per system (ROUGE-L, faithfulness, repetition rate, loops)")
        for sname, sc in e["systems"].items():
            say(f"  {sname:<28}{fmt(sc.get('rougeL')):>7}{fmt(sc.get('faithfulness')):>7}"
                f"{fmt(sc.get('repetition_rate')):>7}{sc.get('loops', '-'):>5}")


def parse_sets(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    import yaml

    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for item in items:
        key, sep, raw = item.partition("=")
        ds, dot, name = key.strip().partition(".")
        if not sep or not dot or ds not in SIZES or name not in SIZES[ds]:
            raise SystemExit(f"--set {item!r}: expected DATASET.KEY=VALUE with KEY one of the SIZES keys, "
                             f"e.g. banking77.train=30")
        out[ds][name] = yaml.safe_load(raw)
    return out


def parse_train_sets(items: Sequence[str]) -> dict[str, Any]:
    """``["predictors.enabled=false"]`` -> ``{"predictors.enabled": False}`` (values read as YAML)."""
    import yaml

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--train-set {item!r}: expected GROUP.KEY=VALUE, e.g. train.lr=5e-4")
        out[key.strip()] = yaml.safe_load(raw)
    return out


def main(argv: list[str] | None = None, *, encoder: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    ap.add_argument("--datasets-dir", type=Path, default=DEFAULT_DATASETS_DIR)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--quick", action="store_true", help="tiny samples and 2 training steps (smoke run)")
    ap.add_argument("--skip-lm", action="store_true", help="baselines only: no training, no model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tuned-lm", action=argparse.BooleanOptionalAction, default=True,
                    help="also score the tuned LM alone on the base sample when the run serves another "
                    "predictor (--no-tuned-lm: skip it, it costs seconds per text)")
    ap.add_argument("--device", default="cpu", help="training and evaluation device (default cpu, fp32)")
    ap.add_argument("--eval-batch-size", type=int, default=16)
    ap.add_argument("--served-full", action="store_true",
                    help="always evaluate the served model on the whole test set")
    ap.add_argument("--served-full-max-seconds", type=float, default=1200.0,
                    help="else only when that is projected to take at most this long (default 1200)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="DATASET.KEY=VALUE",
                    help="override a size or training setting (see SIZES in the script)")
    ap.add_argument("--train-set", dest="train_sets", action="append", default=[], metavar="GROUP.KEY=VALUE",
                    help="extra training config key for every run (e.g. predictors.tune_encoder=false)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="runs and stage results (default runs/quality; --quick: runs/quality-quick)")
    ap.add_argument("--out", type=Path, default=None,
                    help="result JSON (default benchmarks/results/quality.json; --quick: in WORKDIR)")
    args = ap.parse_args(argv)
    args.workdir = args.workdir or ROOT / "runs" / ("quality-quick" if args.quick else "quality")
    args.out = args.out or (args.workdir / "quality.json" if args.quick else OUT)
    overrides = parse_sets(args.sets)
    args.train_sets = parse_train_sets(args.train_sets)

    import torch

    torch.set_num_threads(args.threads)
    report = Report(args)
    embed = Embedder(encoder)
    done: dict[str, dict[str, Any]] = {}
    for ds in args.datasets:
        s = {**SIZES[ds], **(QUICK[ds] if args.quick else {}), **overrides.get(ds, {})}
        t0 = time.perf_counter()
        data = LOADERS[ds](args.datasets_dir, s, args.quick)
        if isinstance(data, str):
            say(f"skipped {ds}: {data}")
            continue
        say(f"[{ds}] loaded in {time.perf_counter() - t0:.1f} s")
        if isinstance(data, SummaryData):
            done[data.key] = run_summary_task(data, s, args, report)
        else:
            done[data.key] = run_label_task(data, s, args, report, embed)
    if not done:
        say(f"skipped: no dataset found under {args.datasets_dir}; nothing written")
        return 0
    print_table(done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
