"""GLUE metrics, as GLUE defines them, in plain numpy.

  CoLA          Matthews correlation ("mcc")
  MRPC, QQP     F1 of the positive class ("f1") and accuracy
  STS-B         Pearson and Spearman correlation
  the rest      accuracy
Every metric here is "higher is better".  ``compute_metrics(names, predictions, labels)``
returns a dict with the requested names; values are plain Python floats.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np


def accuracy(preds, labels) -> float:
    preds, labels = np.asarray(preds), np.asarray(labels)
    return float((preds == labels).mean()) if labels.size else float("nan")


def f1_binary(preds, labels, positive: int = 1) -> float:
    """F1 of the positive class (GLUE's F1 for MRPC and QQP); 0 when nothing is predicted."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    tp = float(np.sum((preds == positive) & (labels == positive)))
    fp = float(np.sum((preds == positive) & (labels != positive)))
    fn = float(np.sum((preds != positive) & (labels == positive)))
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def matthews_corrcoef(preds, labels) -> float:
    """Multi-class MCC (Gorodkin's R_K; the binary phi coefficient for two classes).

    0 when either side is constant (as scikit-learn does), never NaN.
    """
    preds, labels = np.asarray(preds), np.asarray(labels)
    classes = np.union1d(preds, labels)
    idx = {c: i for i, c in enumerate(classes.tolist())}
    k = len(classes)
    cm = np.zeros((k, k), dtype=np.float64)
    for t, p in zip(labels.tolist(), preds.tolist()):
        cm[idx[t], idx[p]] += 1
    t_sum, p_sum = cm.sum(axis=1), cm.sum(axis=0)
    n, correct = cm.sum(), np.trace(cm)
    cov_ytyp = correct * n - np.dot(t_sum, p_sum)
    cov_ypyp = n * n - np.dot(p_sum, p_sum)
    cov_ytyt = n * n - np.dot(t_sum, t_sum)
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return float(cov_ytyp / math.sqrt(cov_ytyt * cov_ypyp))


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    xm, ym = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(np.dot(xm, xm)) * float(np.dot(ym, ym)))
    return float(np.dot(xm, ym) / denom) if denom > 0 else 0.0


def _rank(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    ranks = np.empty(len(a), dtype=np.float64)
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and sorted_a[j + 1] == sorted_a[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return pearson(_rank(x), _rank(y))


METRIC_FUNCS = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "mcc": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}


def compute_metrics(names: Iterable[str], predictions, labels) -> dict[str, float]:
    """``predictions``: class ids (classification) or floats (regression)."""
    out = {}
    for name in names:
        try:
            fn = METRIC_FUNCS[name]
        except KeyError:
            raise ValueError(f"unknown metric {name!r}; known: {sorted(METRIC_FUNCS)}") from None
        out[name] = float(fn(predictions, labels))
    return out
