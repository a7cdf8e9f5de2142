"""Contrastive tuning of the sentence encoder on a run's labelled texts.

sentence-transformers' own trainer does the work (``SentenceTransformerTrainer``):
one training set per label field (texts with the field's label), each with its
own loss, batches drawn from one field at a time, so labels of different tasks
are never compared with each other. The loss is multiple-negatives ranking
(``MultipleNegativesRankingLoss``'s in-batch softmax over (text, another text of
the same label) pairs) with one change, :class:`LabelAwareMNRL`: in-batch
candidates that share the anchor's label are masked out instead of counted as
negatives, so it also works for label sets smaller than a batch (sentiment's
three labels). The tuned encoder is saved as a sentence-transformers folder in
safetensors.
"""

from __future__ import annotations

import math
import random
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: Pairs per label and epoch are capped so a large label keeps its share without dominating.
MAX_PAIRS_PER_LABEL = 48
BATCH_SIZE = 32
SCALE = 20.0  # sentence-transformers' MNRL default (1 / temperature on cosine similarities)


def same_label_pairs(texts: Sequence[str], labels: Sequence[int], *, seed: int,
                     max_pairs_per_label: int = MAX_PAIRS_PER_LABEL) -> list[tuple[str, str, int]]:
    """Shuffled (anchor, positive, label) pairs of distinct texts sharing a label; a label with
    a single text gives none."""
    rng = random.Random(seed)
    by: dict[int, list[str]] = defaultdict(list)
    for t, y in zip(texts, labels):
        by[y].append(t)
    out: list[tuple[str, str, int]] = []
    for y, xs in sorted(by.items()):
        pairs = [(a, b) for i, a in enumerate(xs) for b in xs[i + 1:] if a != b]
        rng.shuffle(pairs)
        out += [(a, b, y) if rng.random() < 0.5 else (b, a, y) for a, b in pairs[:max_pairs_per_label]]
    rng.shuffle(out)
    return out


def label_aware_mnrl(model: Any) -> Any:
    """Multiple-negatives ranking loss whose same-label in-batch candidates are not negatives."""
    import torch
    from torch import nn

    class LabelAwareMNRL(nn.Module):
        def __init__(self, model: Any):
            super().__init__()
            self.model = model

        def forward(self, sentence_features: Any, labels: Any) -> Any:
            anchors, positives = (self.model(f)["sentence_embedding"] for f in sentence_features)
            scores = SCALE * nn.functional.normalize(anchors, dim=-1) @ nn.functional.normalize(
                positives, dim=-1).T
            same = labels.view(-1, 1) == labels.view(1, -1)
            eye = torch.eye(len(labels), dtype=torch.bool, device=scores.device)
            scores = scores.masked_fill(same & ~eye, float("-inf"))
            return nn.functional.cross_entropy(scores, torch.arange(len(labels), device=scores.device))

        def get_config_dict(self) -> dict[str, Any]:
            return {"scale": SCALE, "same_label": "masked"}

    return LabelAwareMNRL(model)


def tune_encoder(base: Path, fields: Mapping[str, tuple[Sequence[str], Sequence[int]]], out: Path, *,
                 epochs: int, seed: int, lr: float = 5e-5, device: str = "cpu",
                 report: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Tune the encoder at ``base`` on each field's (texts, label ids); save it to ``out``.

    Returns what was done (pairs per field, steps, seconds) for the run's record.
    """
    import time

    import datasets
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import MultiDatasetBatchSamplers
    from transformers.trainer_utils import set_seed

    set_seed(seed)
    say = report or (lambda _m: None)
    model = SentenceTransformer(str(base), device=device, trust_remote_code=False)
    train: dict[str, Any] = {}
    pairs_per_field: dict[str, int] = {}
    for key, (texts, labels) in fields.items():
        rows: list[tuple[str, str, int]] = []
        for epoch in range(epochs):  # a fresh pairing per epoch, run in order
            rows += same_label_pairs(texts, labels, seed=seed * 1000 + epoch)
        if len({y for _, _, y in rows}) >= 2:
            train[key.replace(".", "_")] = datasets.Dataset.from_dict(
                {"anchor": [a for a, _, _ in rows], "positive": [b for _, b, _ in rows],
                 "label": [y for _, _, y in rows]})
            pairs_per_field[key] = len(rows) // max(1, epochs)
    if not train:
        return {"tuned": False, "reason": "no field has two labels with two texts each to pair"}
    loss = {k: label_aware_mnrl(model) for k in train}
    steps = sum(math.ceil(len(d) / BATCH_SIZE) for d in train.values())
    with tempfile.TemporaryDirectory(prefix="convtune-encoder-") as tmp:
        args = SentenceTransformerTrainingArguments(
            output_dir=tmp, num_train_epochs=1, per_device_train_batch_size=BATCH_SIZE,
            learning_rate=lr, warmup_steps=0.1, seed=seed, data_seed=seed,  # < 1: a ratio
            multi_dataset_batch_sampler=MultiDatasetBatchSamplers.PROPORTIONAL,
            save_strategy="no", report_to="none", logging_steps=max(1, steps // 5), disable_tqdm=True,
            use_cpu=device == "cpu", bf16=False, fp16=False, dataloader_num_workers=0,
        )
        t0 = time.perf_counter()
        say(f"encoder: contrastive tuning on {sum(pairs_per_field.values())} pairs x {epochs} epochs "
            f"({steps} steps)")
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss)
        trainer.train()
        seconds = time.perf_counter() - t0
    tmp_out = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    model.save(str(tmp_out), safe_serialization=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp_out.rename(out)
    return {"tuned": True, "epochs": epochs, "pairs_per_epoch": pairs_per_field, "steps": steps,
            "seconds": round(seconds, 1), "lr": lr, "loss": "label-aware MultipleNegativesRankingLoss"}
