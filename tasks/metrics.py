"""Metrics shared by the tasks: accuracy, macro-F1, fuzzy list matching, ROUGE.

Conventions (the same in every task):

* ``n`` is the number of examples and ``parse_failure_rate`` the share whose
  generation did not parse. A failed parse is a wrong answer: for
  classification it matches no label; for list tasks it is an empty
  prediction in the pooled counts and scores 0 in ``example_f1``.
* List F1 is micro-averaged: true positives, predicted and gold items are
  pooled over the whole set. With nothing predicted and nothing in gold the
  score is perfect (1.0); with one side empty it is 0.
* Fuzzy text matching uses :func:`token_set_similarity` (Dice coefficient of
  content-word sets, i.e. the F1 of token overlap) and a greedy one-to-one
  matching that takes the most similar pairs first.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from tasks.base import Parsed

STOPWORDS = frozenset(
    "a an the and or of to for in on at by with from as is are was were be been will would shall "
    "should can could do does did that this these those it its their his her our your my".split()
)
_WORD = re.compile(r"[^\W_]+")


def stem_plural(word: str) -> str:
    """Harman's S-stemmer: plural endings only (charges -> charge, policies -> policy)."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


@lru_cache(maxsize=4096)
def content_tokens(text: str) -> frozenset[str]:
    """Lower-cased, plural-stemmed word set without stopwords (all words if only stopwords)."""
    words = _WORD.findall(unicodedata.normalize("NFKC", text).lower())
    content = frozenset(stem_plural(w) for w in words if w not in STOPWORDS)
    return content or frozenset(stem_plural(w) for w in words)


def token_set_similarity(a: str, b: str) -> float:
    """Dice coefficient ``2|A&B| / (|A|+|B|)`` of the content-word sets of two strings."""
    ta, tb = content_tokens(a), content_tokens(b)
    if not ta and not tb:
        return 1.0 if a.strip().lower() == b.strip().lower() else 0.0
    return 2 * len(ta & tb) / (len(ta) + len(tb))


def normalize_label(text: str) -> str:
    """Case-, space-, hyphen- and underscore-insensitive form: "Billing Dispute" -> "billing_dispute"."""
    return re.sub(r"[\s_-]+", "_", text.strip().lower())


def match_items(
    golds: Sequence[Any],
    preds: Sequence[Any],
    similarity: Callable[[Any, Any], float],
    threshold: float,
) -> list[tuple[int, int]]:
    """One-to-one ``(gold index, prediction index)`` pairs with similarity >= threshold.

    Greedy: pairs are taken in order of decreasing similarity (ties by index).
    """
    candidates = []
    for i, g in enumerate(golds):
        for j, p in enumerate(preds):
            s = similarity(g, p)
            if s >= threshold:
                candidates.append((-s, i, j))
    candidates.sort()
    used_g: set[int] = set()
    used_p: set[int] = set()
    pairs = []
    for _, i, j in candidates:
        if i not in used_g and j not in used_p:
            used_g.add(i)
            used_p.add(j)
            pairs.append((i, j))
    return sorted(pairs)


def prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    """Precision, recall, F1; both sides empty is perfect, one side empty scores 0."""
    if n_pred == 0 and n_gold == 0:
        return 1.0, 1.0, 1.0
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def failure_rate(predictions: Sequence[Parsed]) -> float:
    return sum(not p.ok for p in predictions) / len(predictions) if predictions else 0.0


def accuracy(golds: Sequence[Any], preds: Sequence[Any]) -> float:
    """Share of equal pairs (a failed prediction, ``None``, is never equal)."""
    return sum(p is not None and p == g for g, p in zip(golds, preds)) / len(golds) if golds else 0.0


def macro_f1(golds: Sequence[str], preds: Sequence[str | None], labels: Sequence[str] | None = None) -> float:
    """Mean per-class F1 over the classes present in gold or predictions.

    ``labels`` restricts the classes averaged over (labels of the set that
    occur in neither gold nor predictions are left out, as scikit-learn does).
    A ``None`` prediction (failed parse) is a miss for its gold class and a
    false positive for no class.
    """
    classes = {g for g in golds} | {p for p in preds if p is not None}
    if labels is not None:
        classes &= set(labels)
    if not classes:
        return 0.0
    f1s = []
    for c in sorted(classes):
        tp = sum(g == c and p == c for g, p in zip(golds, preds))
        n_pred = sum(p == c for p in preds)
        n_gold = sum(g == c for g in golds)
        f1s.append(prf(tp, n_pred, n_gold)[2])
    return sum(f1s) / len(f1s)


def score_lists(
    predictions: Sequence[Parsed],
    golds: Sequence[Sequence[Any]],
    *,
    similarity: Callable[[Any, Any], float],
    threshold: float,
    attributes: dict[str, Callable[[Any, Any], bool]] | None = None,
) -> dict[str, float]:
    """Micro P/R/F1, mean per-example F1, and per-attribute accuracy on matched pairs.

    ``attributes`` maps a name to ``same(gold_item, pred_item)``; the result has
    ``<name>_accuracy`` = correct / matched pairs (1.0 when nothing was to be
    matched on either side, 0.0 when items existed but none matched).
    """
    attributes = attributes or {}
    tp = n_pred = n_gold = 0
    per_example = []
    correct = dict.fromkeys(attributes, 0)
    for parsed, gold in zip(predictions, golds):
        pred = list(parsed.value) if parsed.ok else []
        pairs = match_items(gold, pred, similarity, threshold)
        tp += len(pairs)
        n_pred += len(pred)
        n_gold += len(gold)
        per_example.append(prf(len(pairs), len(pred), len(gold))[2] if parsed.ok else 0.0)
        for name, same in attributes.items():
            correct[name] += sum(same(gold[i], pred[j]) for i, j in pairs)
    n = len(golds)
    p, r, f = prf(tp, n_pred, n_gold) if n else (0.0, 0.0, 0.0)
    out = {
        "n": float(n),
        "parse_failure_rate": failure_rate(predictions),
        "precision": p,
        "recall": r,
        "f1": f,
        "example_f1": sum(per_example) / n if n else 0.0,
    }
    vacuous = float(n > 0 and n_pred == 0 and n_gold == 0)
    for name in attributes:
        out[f"{name}_accuracy"] = correct[name] / tp if tp else vacuous
    return out


def rouge(predictions: Sequence[str | None], golds: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure (rouge-score, Porter stemming); ``None`` scores 0."""
    from rouge_score import rouge_scorer  # imported on use: it loads nltk

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, gold in zip(predictions, golds):
        if pred is None:
            continue
        for key, s in scorer.score(gold, pred).items():
            sums[key] += s.fmeasure
    n = len(golds)
    return {k: v / n if n else 0.0 for k, v in sums.items()}
