"""Fit a run's predictors and choose one per label field on validation.

Called by :func:`convtune.training.train` after the SFT stage, with the
run's train / validation conversations and a callable that asks the tuned LM
(so this module never handles model weights). Order of work:

1. collect each label field's (view text, label) examples; report what cannot be
   learnt or validated (a label with one example, a label seen only in
   validation, too few validation examples) as notes that say what to do; with
   ``label_names`` each trained label's name is one more training example of it;
2. tune the sentence encoder contrastively on the training examples;
3. on validation, score every candidate: ``lm`` (constrained), ``head`` (its C
   picked on validation), ``knn`` (its k picked on validation), ``head_knn`` (the two
   combined, weight picked on validation) and ``ensemble`` (head and LM, its weight
   picked on validation);
4. pick the best per field (ties: the cheaper one, in :data:`PREFERENCE` order); a
   field whose validation is too small to choose falls back to ``default`` and says so;
5. serve from train + validation with the settings validation chose: ``refit: encoder``
   re-tunes the encoder and refits the head and the k-NN bank on both, ``heads`` refits only
   the head and the bank on the validated encoder, ``none`` keeps what validation scored;
   write ``RUN_DIR/predictors/``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convtune.conversation import Conversation
from convtune.predictors import heads as H
from convtune.predictors.store import (
    ENCODER,
    ENCODER_ONLY,
    HEADS,
    PREDICTORS_DIR,
    SELECTION,
    lm_field_distribution,
)
from tasks.base import label_fields_of

#: Candidate order used to break ties: the cheapest to serve first.
PREFERENCE = ("head", "knn", "head_knn", "lm", "lm_retrieval", "ensemble")
ENSEMBLE_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(1, 10))

LmAnswers = Callable[[Sequence[Conversation], Sequence[Any]], dict[tuple[str, str], Any]]


def field_metric(metric: str, golds: Sequence[str], preds: Sequence[str | None], labels: Sequence[str]
                 ) -> float:
    from tasks.metrics import accuracy, macro_f1

    return float(macro_f1(list(golds), list(preds), list(labels)) if metric == "macro_f1"
                 else accuracy(list(golds), list(preds)))


#: Automatic contrastive budget: about this many pairs seen per field (measured on Banking77 at 10
#: per intent: 2 epochs of its 3,465 pairs at lr 5e-5 beat 1 epoch, 4 epochs at 1e-4 overfit).
PAIRS_BUDGET = 6000


def encoder_epochs(pairs_per_epoch: int, requested: int | None) -> int:
    """Epochs of contrastive tuning: ``requested``, else about ``PAIRS_BUDGET`` pairs seen in all,
    1 or 2 epochs (more overfit on Banking77)."""
    if requested:
        return requested
    return max(1, min(2, round(PAIRS_BUDGET / max(1, pairs_per_epoch))))


def label_text(label: str) -> str:
    """A label's name as text: ``pin_reset_request`` -> ``pin reset request``."""
    return " ".join(label.replace("_", " ").replace("-", " ").split())


def _examples(convs: Sequence[Conversation], task: Any, field: Any) -> tuple[list[str], list[str]]:
    from tasks.views import view_text

    texts, labels = [], []
    for c in convs:
        if task.has_label(c):
            texts.append(view_text(field.view, c))
            labels.append(task.field_values(task.gold(c))[field.key])
    return texts, labels


def plan_fields(tasks: Sequence[Any], train: Sequence[Conversation], val: Sequence[Conversation],
                settings: Any) -> tuple[dict[str, dict[str, Any]], dict[str, Any], list[str]]:
    """Each label field's examples and record, and what the data will not allow, said with what
    to do (no weights needed: training reports these before it loads any)."""
    from tasks.views import describe

    notes: list[str] = []
    fields: dict[str, dict[str, Any]] = {}
    data: dict[str, Any] = {}
    for task in tasks:
        for f in label_fields_of(task):
            tr_x, tr_y = _examples(train, task, f)
            va_x, va_y = _examples(val, task, f)
            counts = Counter(tr_y)
            rec: dict[str, Any] = {
                "task": task.name, "view": f.view, "reads": describe(f.view), "labels": list(f.labels),
                "metric": f.metric, "n_train": len(tr_y), "n_validation": len(va_y),
                "train_label_counts": dict(sorted(counts.items())), "notes": [],
            }
            thin = sorted(lab for lab, n in counts.items() if n < 2)
            if thin:
                more = ", ..." if len(thin) > 5 else ""
                rec["notes"].append(f"{len(thin)} label(s) with a single training example "
                                    f"({', '.join(thin[:5])}{more}): the head can barely learn them; "
                                    "add examples of each label")
            if len(counts) < 2:
                rec["notes"].append(f"{len(counts)} distinct label(s) in the training data: no head or k-NN "
                                    "can be trained; the LM answers (add conversations with other labels)")
            unseen = sorted(set(va_y) - set(tr_y))
            if unseen:
                rec["notes"].append(f"label(s) only in validation, never trained on: "
                                    f"{', '.join(unseen[:5])}; the head and k-NN cannot predict them "
                                    "(add training examples)")
            if len(va_y) < settings.min_validation or len(set(va_y)) < 2:
                rec["notes"].append(
                    f"validation has {len(va_y)} labelled example(s) over {len(set(va_y))} label(s); "
                    f"choosing needs at least {settings.min_validation} over 2+ labels, so the default "
                    f"predictor {settings.default!r} answers (more data, a larger "
                    "data.validation_fraction, or predictors.min_validation)")
            fields[f.key] = rec
            data[f.key] = (task, f, tr_x, tr_y, va_x, va_y)
            notes += [f"{f.key}: {n}" for n in rec["notes"]]
    return fields, data, notes


def fit_predictors(run_dir: Path, tasks: Sequence[Any], train: Sequence[Conversation],
                   val: Sequence[Conversation], *, settings: Any, lm_name: str,
                   lm_answers: LmAnswers | None, seed: int,
                   report: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """Fit, select and write ``run_dir/predictors``; returns the selection record (None when
    no selected task has label fields). ``settings`` is the config's ``predictors`` section."""
    from embeddings import default_encoder_dir
    from embeddings.encoder import Encoder, resolve_encoder

    say = report or (lambda _m: None)
    t0 = time.perf_counter()
    label_tasks = [t for t in tasks if label_fields_of(t)]
    if not label_tasks:
        return None
    fields, data, notes = plan_fields(label_tasks, train, val, settings)
    if settings.label_names:
        for key, (task, f, tr_x, tr_y, va_x, va_y) in data.items():
            names = [(label_text(lab), lab) for lab in sorted(set(tr_y), key=list(f.labels).index)]
            data[key] = (task, f, tr_x + [t for t, _ in names], tr_y + [y for _, y in names], va_x, va_y)
            fields[key]["label_name_examples"] = len(names)

    # 1. the encoder: tuned contrastively on the training examples, or the base one.
    base_name, base_dir = resolve_encoder(settings.encoder)
    if settings.encoder == "all-minilm-l6-v2":
        base_dir = default_encoder_dir()
    folder = run_dir / PREDICTORS_DIR
    tmp = run_dir / (PREDICTORS_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainable = {k: d for k, d in data.items() if len(set(d[3])) >= 2}
    encoder_info: dict[str, Any] = {"base": str(settings.encoder), "tuned": False}
    if settings.tune_encoder and trainable:
        from convtune.predictors.encoder import tune_encoder

        from convtune.predictors.encoder import same_label_pairs

        label_ids = {k: {lab: i for i, lab in enumerate(d[1].labels)} for k, d in trainable.items()}
        pairs = sum(len(same_label_pairs(d[2], [label_ids[k][y] for y in d[3]], seed=seed))
                    for k, d in trainable.items())
        epochs = encoder_epochs(pairs, settings.encoder_epochs)
        info = tune_encoder(
            base_dir, {k: (d[2], [label_ids[k][y] for y in d[3]]) for k, d in trainable.items()},
            tmp / ENCODER, epochs=epochs, seed=seed, lr=settings.encoder_lr, report=say)
        encoder_info.update(info)
    encoder = Encoder(tmp / ENCODER if encoder_info.get("tuned") else base_dir)
    encoder_info["identity"] = encoder.identity.as_dict()

    # 2. LM answers on validation (one chained pass over every label task).
    lm_val: dict[tuple[str, str], Any] = {}
    if lm_answers is not None and val:
        say(f"validation: asking the tuned model {len(label_tasks)} label task(s) about {len(val)} "
            "conversations")
        lm_val = lm_answers(val, label_tasks)

    tensors: dict[str, np.ndarray] = {}
    for key, (task, f, tr_x, tr_y, va_x, va_y) in data.items():
        rec = fields[key]
        labels = list(f.labels)
        lid = {lab: i for i, lab in enumerate(labels)}
        balanced = f.metric == "macro_f1"
        can_head = key in trainable
        scores: dict[str, float] = {}
        tr_v = encoder.encode(tr_x).vectors if tr_x else np.zeros((0, encoder.dim), np.float32)
        va_v = encoder.encode(va_x).vectors if va_x else np.zeros((0, encoder.dim), np.float32)
        y_tr = [lid[y] for y in tr_y]
        enough = len(va_y) >= settings.min_validation and len(set(va_y)) >= 2
        c, k, weight, knn_weight = H.DEFAULT_C, H.DEFAULT_K, 0.5, 0.5
        p_head = None
        if can_head and va_y:
            best = None
            for c_try in (H.C_GRID if enough else (H.DEFAULT_C,)):
                p = H.fit_head(tr_v, y_tr, len(labels), c=c_try, balanced=balanced, seed=seed).proba(va_v)
                s = field_metric(f.metric, va_y, [labels[i] for i in p.argmax(1)], labels)
                if best is None or s > best[0] + 1e-9:
                    best = (s, c_try, p)
            scores["head"], c, p_head = best
            best = None
            for k_try in (H.K_GRID if enough else (H.DEFAULT_K,)):
                p = H.KNN(tr_v, np.array(y_tr), len(labels), k_try).proba(va_v)
                s = field_metric(f.metric, va_y, [labels[i] for i in p.argmax(1)], labels)
                if best is None or s > best[0] + 1e-9:
                    best = (s, k_try, p)
            scores["knn"], k, p_knn = best
            best = None
            for w in (ENSEMBLE_WEIGHTS if enough else (0.5,)):
                p = H.combine(p_head, p_knn, w)
                s = field_metric(f.metric, va_y, [labels[i] for i in p.argmax(1)], labels)
                if best is None or s > best[0] + 1e-9:
                    best = (s, w)
            scores["head_knn"], knn_weight = best
        if lm_val and va_y:
            p_lm = np.stack([lm_field_distribution(task, key, labels, lm_val.get((c_.id, task.name)))
                             for c_ in val if task.has_label(c_)])
            scores[lm_name] = field_metric(f.metric, va_y, [labels[i] for i in p_lm.argmax(1)], labels)
            if p_head is not None:
                best = None
                for w in ENSEMBLE_WEIGHTS:
                    p = H.combine(p_head, p_lm, w)
                    s = field_metric(f.metric, va_y, [labels[i] for i in p.argmax(1)], labels)
                    if best is None or s > best[0] + 1e-9:
                        best = (s, w)
                scores["ensemble"], weight = best
        rec["validation"] = {name: round(v, 4) for name, v in scores.items()}
        default = settings.default if (settings.default != "head" or can_head) else lm_name
        if default == "lm":
            default = lm_name
        if not enough or not scores:
            rec["winner"] = default
            rec["fallback"] = (f"validation has {len(va_y)} labelled example(s) over {len(set(va_y))} "
                               f"label(s), too few to choose: using the default predictor {default!r}")
        else:
            top = max(scores.values())
            rec["winner"] = next(n for n in (*PREFERENCE, lm_name) if n in scores and scores[n] >= top - 1e-9)
            rec["fallback"] = None
        if rec["winner"] in (*ENCODER_ONLY, "ensemble") and not can_head:
            rec["winner"] = lm_name
        rec["head"] = {"c": c, "balanced": balanced}
        rec["knn"] = {"k": k}
        rec["head_knn"] = {"weight": knn_weight}
        rec["ensemble"] = {"weight": weight}

    # 3. serve from everything labelled: the encoder re-tuned and the heads refitted on
    #    train + validation, with the settings validation chose.
    if settings.refit == "encoder" and val and encoder_info.get("tuned"):
        from convtune.predictors.encoder import tune_encoder

        say("encoder: re-tuning on train + validation for serving")
        label_ids = {k: {lab: i for i, lab in enumerate(d[1].labels)} for k, d in trainable.items()}
        refit = tune_encoder(
            base_dir,
            {k: (d[2] + d[4], [label_ids[k][y] for y in d[3] + d[5]]) for k, d in trainable.items()},
            tmp / ENCODER, epochs=encoder_info["epochs"], seed=seed, lr=settings.encoder_lr, report=say)
        encoder_info["refit_on_validation"] = {k: refit.get(k) for k in ("steps", "seconds")}
        encoder = Encoder(tmp / ENCODER)
        encoder_info["identity"] = encoder.identity.as_dict()
    encoder_info["refit"] = settings.refit
    for key, (_task, f, tr_x, tr_y, va_x, va_y) in data.items():
        if key not in trainable:
            continue
        rec = fields[key]
        lid = {lab: i for i, lab in enumerate(f.labels)}
        served_x, served_y = (tr_x, tr_y) if settings.refit == "none" else (tr_x + va_x, tr_y + va_y)
        all_v = encoder.encode(served_x).vectors
        all_y = [lid[y] for y in served_y]
        head = H.fit_head(all_v, all_y, len(f.labels), c=rec["head"]["c"], balanced=rec["head"]["balanced"],
                          seed=seed)
        tensors[f"{key}.weight"] = head.weight
        tensors[f"{key}.bias"] = head.bias
        tensors[f"{key}.bank"] = np.ascontiguousarray(all_v, dtype=np.float32)
        tensors[f"{key}.bank_labels"] = np.asarray(all_y, dtype=np.int32)

    selection = {
        "version": 1,
        "lm": lm_name,
        "encoder": {**encoder_info, "path": ENCODER if encoder_info.get("tuned") else None},
        "fields": fields,
        "tasks": {t.name: _task_choice(t, fields) for t in label_tasks},
        "validation_conversations": len(val),
        "notes": notes,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if tensors:
        from safetensors.numpy import save_file

        save_file(tensors, str(tmp / HEADS))
    (tmp / SELECTION).write_text(json.dumps(selection, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return selection


def _task_choice(task: Any, fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    chosen = {f.key: fields[f.key]["winner"] for f in label_fields_of(task)}
    return {"predictor": "+".join(dict.fromkeys(chosen.values())), "fields": chosen}


def validation_table(selection: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per label field: its metric, each candidate's validation score and the winner."""
    rows = []
    for key, f in selection["fields"].items():
        rows.append({"field": key, "task": f["task"], "metric": f["metric"],
                     "n_validation": f["n_validation"], "scores": f.get("validation", {}),
                     "winner": f["winner"], "fallback": f.get("fallback")})
    return rows


def format_validation_table(selection: dict[str, Any]) -> str:
    rows = validation_table(selection)
    names = list(dict.fromkeys(n for r in rows for n in r["scores"]))
    head = ["field", "metric", "n val", *names, "winner"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        cells = [r["field"], r["metric"], str(r["n_validation"])]
        cells += [f"{r['scores'][n]:.3f}" if n in r["scores"] else "-" for n in names]
        cells.append(r["winner"] + (" (default)" if r["fallback"] else ""))
        lines.append(" | ".join(cells))
    return "\n".join(lines)
