"""Classification metrics without sklearn: Mann-Whitney AUC with ties, accuracy, mean and spread.

AUC = P(score of a random positive > score of a random negative) + 0.5 P(tie), computed from
mid-ranks (tied scores share the mean of their ranks): AUC = (R_pos - n_pos (n_pos + 1) / 2) /
(n_pos n_neg), R_pos the sum of the positives' ranks. Undefined (NaN) when a class is absent.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, ties given the mean of the ranks they span."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    # Boundaries of runs of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + 1 + end) / 2.0  # mean of ranks start+1 .. end
    return ranks


def auc(scores: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray) -> float:
    """ROC AUC of `scores` for binary `labels` (1 positive, 0 negative; NaN entries ignored)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"auc: scores {scores.shape} and labels {labels.shape} must be equal 1-D shapes")
    keep = ~np.isnan(labels)
    scores, labels = scores[keep], labels[keep]
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError("auc: labels must be 0, 1 or NaN")
    if np.isnan(scores).any():
        raise ValueError("auc: NaN scores")
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = midranks(scores)
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_per_label(scores: np.ndarray, labels: np.ndarray) -> list[float]:
    """(n, L) scores and labels (NaN = ignore) -> L AUCs (NaN where a label lacks a class)."""
    return [auc(scores[:, j], labels[:, j]) for j in range(labels.shape[1])]


def accuracy(predicted: np.ndarray, target: np.ndarray) -> float:
    predicted, target = np.asarray(predicted), np.asarray(target)
    if len(target) == 0:
        return math.nan
    return float((predicted == target).mean())


def nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one run) over runs, NaN runs skipped."""
    finite = [float(v) for v in values if not math.isnan(v)]
    if not finite:
        return {"mean": math.nan, "std": math.nan, "runs": len(values)}
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return {"mean": float(np.mean(finite)), "std": std, "runs": len(finite)}


def classification_metrics(kind: str, scores: np.ndarray, y: np.ndarray, labels: Sequence[str]) -> dict:
    """The task's headline metric and per-label AUCs.

    multi-label: value = mean AUC over labels that have both classes in `y` (NaN entries of `y`
    ignored); multi-class: value = accuracy of argmax(scores) against argmax(y), per-label AUCs
    one-vs-rest."""
    per_label = dict(zip(labels, auc_per_label(scores, y)))
    if kind == "multi-class":
        return {"metric": "accuracy", "value": accuracy(scores.argmax(1), y.argmax(1)), "per_label": per_label}
    if kind != "multi-label":
        raise ValueError(f"task kind must be multi-label or multi-class, got {kind!r}")
    return {"metric": "mean_auc", "value": nanmean(list(per_label.values())), "per_label": per_label}
