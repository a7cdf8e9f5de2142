"""Discriminative predictors over encoder vectors: a logistic-regression head and k-NN.

Both take L2-normalised vectors (the encoder's output) and return a probability
per label. The head is fitted with scikit-learn's ``LogisticRegression`` and
stored as plain arrays (weights, bias), so serving needs only numpy and the
saved file is safetensors, never a pickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Inverse regularisation strengths tried on validation (one when validation is too small).
C_GRID = (1.0, 10.0, 100.0)
DEFAULT_C = 10.0
#: Neighbour counts tried on validation, and the softmax temperature over cosine similarities.
K_GRID = (1, 3, 5, 10)
DEFAULT_K = 5
KNN_TEMPERATURE = 0.05


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class LinearHead:
    """Multinomial logistic regression: ``p = softmax(x @ W.T + b)`` over ``n_labels``."""

    weight: np.ndarray  # (n_labels, dim) float32
    bias: np.ndarray  # (n_labels,) float32

    def proba(self, x: np.ndarray) -> np.ndarray:
        return softmax(x @ self.weight.T + self.bias)


def fit_head(x: np.ndarray, y: Sequence[int], n_labels: int, *, c: float = DEFAULT_C,
             balanced: bool = False, seed: int = 0) -> LinearHead:
    """Fit a head on vectors ``x`` with label ids ``y`` (labels absent from ``y`` get -inf bias:
    the head never predicts a label it has not seen)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y)
    seen = np.unique(y)
    weight = np.zeros((n_labels, x.shape[1]), dtype=np.float32)
    bias = np.full(n_labels, -1e4, dtype=np.float32)
    if len(seen) == 1:  # one label: always that one
        bias[seen[0]] = 0.0
        return LinearHead(weight, bias)
    lr = LogisticRegression(C=c, max_iter=3000, class_weight="balanced" if balanced else None,
                            random_state=seed)
    lr.fit(x, y)
    if len(seen) == 2:  # sklearn's binary form: one row for class seen[1]
        weight[seen[1]] = lr.coef_[0] / 2
        weight[seen[0]] = -lr.coef_[0] / 2
        bias[seen[1]] = lr.intercept_[0] / 2
        bias[seen[0]] = -lr.intercept_[0] / 2
    else:
        weight[seen] = lr.coef_
        bias[seen] = lr.intercept_
    return LinearHead(weight, bias)


@dataclass
class KNN:
    """Similarity-weighted vote of the ``k`` nearest labelled vectors."""

    bank: np.ndarray  # (n, dim) float32, normalised
    labels: np.ndarray  # (n,) int
    n_labels: int
    k: int = DEFAULT_K

    def proba(self, x: np.ndarray) -> np.ndarray:
        sims = x @ self.bank.T
        k = min(self.k, sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out = np.full((x.shape[0], self.n_labels), 1e-6, dtype=np.float64)
        for i in range(x.shape[0]):
            s = sims[i, top[i]]
            w = np.exp((s - s.max()) / KNN_TEMPERATURE)
            np.add.at(out[i], self.labels[top[i]], w)
        return out / out.sum(axis=1, keepdims=True)


def combine(p_head: np.ndarray, p_lm: np.ndarray, weight: float) -> np.ndarray:
    """Log-linear ensemble: ``softmax(w log p_head + (1 - w) log p_lm)``."""
    eps = 1e-6
    return softmax(weight * np.log(p_head + eps) + (1 - weight) * np.log(p_lm + eps))
