"""Which label-head choices pay: an ablation of convtune's predictors on Banking77 at 10 per intent.

The quality benchmark (``benchmarks/quality.py``) measures what a run serves; this one
asks why, on data the run never chooses on. Train: 10 per intent of ``train.csv``;
validation: the next 5 per intent of ``train.csv`` (385 texts, used to read the
variants, never trained on); test: all 3,080 ``test.csv`` texts. Both encoder variants
are tuned with convtune's own :func:`convtune.predictors.encoder.tune_encoder` (label-aware
multiple-negatives ranking, 2 epochs at lr 5e-5: what a run picks for these sizes):

* ``plain``: the training texts;
* ``names``: the training texts plus each label's name as one more example
  (``predictors.label_names``).

On each encoder (and on the untuned MiniLM, and both concatenated) it scores the
predictors a run chooses between: the logistic-regression head at C 1/10/100, k-NN at
k 1/5/10, and ``head_knn`` (head C 10 with k-NN k 5, weight 0.3/0.5/0.7). Tuned
encoders are kept in ``--workdir`` and reused by a rerun.

    HF_HUB_OFFLINE=1 python benchmarks/predictor_ablation.py [--workdir runs/predictor-ablation]

Writes ``benchmarks/results/predictor_ablation.json``:
``{"machine", "data", "encoders": {variant: {tuning record}}, "results": [{"encoder", "features",
"predictor", "setting", "validation", "test"}]}``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, write_result  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "banking77"
OUT = ROOT / "benchmarks" / "results" / "predictor_ablation.json"


def read(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f)]


def splits(folder: Path, n_train: int, n_val: int, seed: int = 0):
    """``n_train`` then ``n_val`` per label from train.csv (one seeded shuffle per label); all of test."""
    by: dict[str, list[str]] = defaultdict(list)
    for text, label in read(folder / "train.csv"):
        by[label].append(text)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by):
        texts = by[label][:]
        rng.shuffle(texts)
        train += [(t, label) for t in texts[:n_train]]
        val += [(t, label) for t in texts[n_train:n_train + n_val]]
    return train, val, read(folder / "test.csv"), sorted(by)


def scored(where: dict[str, str], kind: str, setting: str, proba: Any, va: np.ndarray, y_val: np.ndarray,
           te: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:
    return {**where, "predictor": kind, "setting": setting,
            "validation": round(float((proba(va).argmax(1) == y_val).mean()), 4),
            "test": round(float((proba(te).argmax(1) == y_test).mean()), 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "predictor-ablation")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if not (args.data / "train.csv").is_file():
        print(f"Banking77 not found at {args.data}: skipped")
        return 0
    import torch

    from convtune.predictors import heads as H
    from convtune.predictors.encoder import tune_encoder
    from convtune.predictors.fit import label_text
    from embeddings import default_encoder_dir
    from embeddings.encoder import Encoder

    torch.set_num_threads(args.threads)
    train, val, test, labels = splits(args.data, 10, 5)
    lid = {lab: i for i, lab in enumerate(labels)}
    y_val = np.array([lid[y] for _, y in val])
    y_test = np.array([lid[y] for _, y in test])
    base = Encoder(default_encoder_dir())
    encoders: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for variant in ("plain", "names"):
        texts = [t for t, _ in train] + ([label_text(lab) for lab in labels] if variant == "names" else [])
        ys = [lid[y] for _, y in train] + (list(range(len(labels))) if variant == "names" else [])
        folder = args.workdir / f"encoder-{variant}"
        t0 = time.perf_counter()
        if not (folder / "config.json").is_file():
            encoders[variant] = tune_encoder(default_encoder_dir(), {"intent": (texts, ys)}, folder, epochs=2,
                                             seed=0, report=print)
        else:
            encoders[variant] = {"reused": str(folder)}
        print(f"{variant}: encoder ready in {time.perf_counter() - t0:.0f} s")
        tuned = Encoder(folder)
        sets = {name: [e.encode(x).vectors for x in (texts, [t for t, _ in val], [t for t, _ in test])]
                for name, e in (("tuned", tuned), ("base", base))}
        sets["concat"] = [np.hstack([a, b]) / np.sqrt(2) for a, b in zip(sets["tuned"], sets["base"])]
        for features, (tr, va, te) in sets.items():
            where = {"encoder": variant, "features": features}
            for c in (1.0, 10.0, 100.0):
                rows.append(scored(where, "head", f"C={c:g}", H.fit_head(tr, ys, len(labels), c=c).proba,
                                   va, y_val, te, y_test))
            for k in (1, 5, 10):
                rows.append(scored(where, "knn", f"k={k}", H.KNN(tr, np.array(ys), len(labels), k).proba,
                                   va, y_val, te, y_test))
            head, knn = H.fit_head(tr, ys, len(labels), c=10.0), H.KNN(tr, np.array(ys), len(labels), 5)
            for w in (0.3, 0.5, 0.7):
                vote = functools.partial(lambda x, w, h, n: H.combine(h.proba(x), n.proba(x), w),
                                         w=w, h=head, n=knn)
                rows.append(scored(where, "head_knn", f"C=10,k=5,w={w}", vote, va, y_val, te, y_test))
    print(f"\n{'encoder':7} {'features':8} {'predictor':9} {'setting':16} {'val':>6} {'test':>6}")
    for r in rows:
        print(f"{r['encoder']:7} {r['features']:8} {r['predictor']:9} {r['setting']:16} "
              f"{r['validation']:6.3f} {r['test']:6.3f}")
    return write_result(args.out, {
        "benchmark": "predictor_ablation", "machine": machine(args.threads),
        "data": {"train": "10 per intent of train.csv (770)", "validation": "the next 5 per intent (385)",
                 "test": f"all of test.csv ({len(test)})", "labels": len(labels)},
        "encoders": encoders, "results": rows})


if __name__ == "__main__":
    raise SystemExit(main())
