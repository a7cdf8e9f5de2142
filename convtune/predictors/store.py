"""A run's recorded predictors: ``RUN_DIR/predictors/`` on disk and in memory.

::

    predictors/
      selection.json       per label field: candidates' validation scores, the winner, why
      heads.safetensors    per field: head weight/bias, k-NN bank vectors and their label ids
      encoder/             the contrastively tuned sentence encoder (sentence-transformers, safetensors)

``selection.json`` is written last (after a temporary folder is renamed into
place): a run has predictors exactly when it exists.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convtune.errors import ConfigError
from convtune.predictors.heads import KNN, LinearHead, combine
from tasks.base import label_fields_of

PREDICTORS_DIR = "predictors"
SELECTION = "selection.json"
HEADS = "heads.safetensors"
ENCODER = "encoder"
LM_PREDICTORS = ("lm", "lm_retrieval")
#: Predictors that answer from the encoder alone (the LM is not asked for their fields).
ENCODER_ONLY = ("head", "knn", "head_knn")
#: Probability the LM's answer gets when all it gives is one answer (a structured label's part).
LM_ONE_HOT = 0.9


def lm_distribution(labels: Sequence[str], value: str | None, scores: dict[str, float] | None) -> np.ndarray:
    """The LM's distribution over ``labels``: softmax of constrained label scores when given,
    else ``LM_ONE_HOT`` on its answer (uniform when it gave none)."""
    n = len(labels)
    if scores:
        z = np.array([scores.get(lab, -1e9) for lab in labels], dtype=np.float64)
        z = np.exp(z - z.max())
        return z / z.sum()
    if value in labels:
        p = np.full(n, (1 - LM_ONE_HOT) / max(1, n - 1))
        p[list(labels).index(value)] = LM_ONE_HOT
        return p
    return np.full(n, 1.0 / n)


class RunPredictors:
    """The predictors a run recorded, ready to answer (encoder loaded on first use)."""

    def __init__(self, folder: Path, selection: dict[str, Any], tensors: dict[str, np.ndarray]):
        self.folder = folder
        self.selection = selection
        self.fields: dict[str, dict[str, Any]] = selection["fields"]
        self._tensors = tensors
        self._encoder: Any = None

    # ---- what answers what ------------------------------------------------------------

    def winner(self, key: str) -> str:
        return self.fields[key]["winner"]

    def task_fields(self, task: Any) -> list[Any]:
        """The task's label fields this run recorded a predictor for (all or none)."""
        fields = label_fields_of(task)
        if fields and all(f.key in self.fields for f in fields):
            return fields
        return []

    def needs_lm(self, task: Any) -> bool:
        """Whether answering ``task`` needs the language model's answer."""
        fields = self.task_fields(task)
        return not fields or any(self.winner(f.key) not in ENCODER_ONLY for f in fields)

    def task_predictor(self, task: Any) -> str:
        """One name for what answers ``task``: the winner, or ``a+b`` when its fields differ."""
        fields = self.task_fields(task)
        if not fields:
            return "lm"
        return "+".join(dict.fromkeys(self.winner(f.key) for f in fields))

    def describe(self) -> dict[str, str]:
        return {key: f["winner"] for key, f in self.fields.items()}

    # ---- answering ---------------------------------------------------------------------

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from embeddings.encoder import Encoder

            enc = self.selection["encoder"]
            path = self.folder / ENCODER if enc.get("tuned") else enc.get("base")
            self._encoder = Encoder(path)
        return self._encoder

    def _head(self, key: str) -> LinearHead:
        return LinearHead(self._tensors[f"{key}.weight"], self._tensors[f"{key}.bias"])

    def _knn(self, key: str) -> KNN:
        f = self.fields[key]
        return KNN(self._tensors[f"{key}.bank"], self._tensors[f"{key}.bank_labels"].astype(np.int64),
                   len(f["labels"]), int(f["knn"]["k"]))

    def field_proba(self, key: str, vectors: np.ndarray,
                    lm: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Probabilities over the field's labels from its winning predictor (``lm``: the LM's
        distribution per row, needed for ``lm`` and ``ensemble``)."""
        win = self.winner(key)
        if win == "head":
            return self._head(key).proba(vectors)
        if win == "knn":
            return self._knn(key).proba(vectors)
        if win == "head_knn":
            weight = float(self.fields[key]["head_knn"]["weight"])
            return combine(self._head(key).proba(vectors), self._knn(key).proba(vectors), weight)
        if lm is None:
            raise ValueError(f"predictor {win!r} of {key!r} needs the language model's answers")
        p_lm = np.stack(list(lm))
        if win == "ensemble":
            weight = float(self.fields[key]["ensemble"]["weight"])
            return combine(self._head(key).proba(vectors), p_lm, weight)
        return p_lm

    def predict(self, task: Any, conversations: Sequence[Any], lm_answers: Sequence[Any | None]
                ) -> list[tuple[Any, float, dict[str, float]]]:
        """``task``'s label for each conversation: (label, confidence, confidence per field).

        ``lm_answers[i]`` is the LM's :class:`~convtune.evaluation.generate.Answer` for
        conversation ``i`` (None where the LM was not asked). Confidence is the chosen
        label's probability; a task with several fields reports the lowest.
        """
        from tasks.views import view_text

        fields = self.task_fields(task)
        per_field: dict[str, list[str]] = {}
        conf: dict[str, list[float]] = {}
        for f in fields:
            labels = list(self.fields[f.key]["labels"])
            vectors = self.encoder.encode([view_text(f.view, c) for c in conversations]).vectors
            lm = None
            if self.winner(f.key) not in ENCODER_ONLY:
                lm = [lm_field_distribution(task, f.key, labels, a) for a in lm_answers]
            p = self.field_proba(f.key, vectors, lm)
            best = p.argmax(axis=1)
            per_field[f.key] = [labels[i] for i in best]
            conf[f.key] = [float(p[r, i]) for r, i in enumerate(best)]
        out = []
        for i in range(len(conversations)):
            values = {k: v[i] for k, v in per_field.items()}
            confs = {k: round(v[i], 4) for k, v in conf.items()}
            out.append((task.from_fields(values), min(confs.values()), confs))
        return out


def lm_field_distribution(task: Any, key: str, labels: list[str], answer: Any) -> np.ndarray:
    """The LM's distribution over one label field from its answer to ``task`` (None: not asked,
    uniform): the constrained label scores of a classification task, else its parsed answer."""
    if answer is None:
        return np.full(len(labels), 1.0 / len(labels))
    if answer.label_scores and len(label_fields_of(task)) == 1:
        return lm_distribution(labels, None, answer.label_scores)
    parsed = task.parse(answer.text)
    value = task.field_values(parsed.value).get(key) if parsed.ok else None
    return lm_distribution(labels, value, None)


def load_predictors(run_dir: str | Path | None) -> RunPredictors | None:
    """The run's predictors, or None when it recorded none (a run from before they existed,
    or one trained with ``predictors.enabled: false``)."""
    if run_dir is None:
        return None
    folder = Path(run_dir) / PREDICTORS_DIR
    if not (folder / SELECTION).is_file():
        return None
    try:
        selection = json.loads((folder / SELECTION).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{folder / SELECTION} is unreadable ({exc}); retrain the run") from None
    tensors: dict[str, np.ndarray] = {}
    if (folder / HEADS).is_file():
        from safetensors.numpy import load_file

        tensors = load_file(str(folder / HEADS))
    return RunPredictors(folder, selection, tensors)
