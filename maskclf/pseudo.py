"""Confident pseudo-labels: the eval images an ensemble is sure of, with its labels, as extra training data.

The threshold is chosen where the true labels are known: on the ensemble's out-of-fold predictions, the
lowest confidence whose predictions at or above it reach the precision asked for. Nothing here reads an
eval answer; the eval images only ever join training sets (``dataset.Prepared.extra``), never a
validation fold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# candidate thresholds, lowest first: a threshold below 1/classes would take every image
GRID = np.round(np.concatenate([np.arange(0.30, 0.99, 0.01), [0.99, 0.995, 0.999]]), 3)


def precision_curve(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray = GRID) -> pd.DataFrame:
    """For each threshold: the fraction of images whose top probability reaches it (``coverage``) and the
    precision of their predicted labels (NaN where none does)."""
    conf, pred = np.asarray(probs).max(1), np.asarray(probs).argmax(1)
    rows = []
    for t in thresholds:
        take = conf >= t
        rows.append({"threshold": float(t), "coverage": float(take.mean()) if len(take) else 0.0,
                     "precision": float((pred[take] == labels[take]).mean()) if take.any() else float("nan")})
    return pd.DataFrame(rows)


@dataclass
class Choice:
    """The chosen threshold (None: no threshold is precise enough) and its out-of-fold precision and coverage."""

    threshold: float | None
    precision: float
    coverage: float


def choose_threshold(probs: np.ndarray, labels: np.ndarray, min_precision: float,
                     thresholds: np.ndarray = GRID) -> Choice:
    """The lowest threshold whose out-of-fold predictions at or above it are at least ``min_precision`` precise."""
    curve = precision_curve(probs, labels, thresholds)
    ok = curve[curve["precision"] >= min_precision]
    if ok.empty:
        return Choice(None, float("nan"), 0.0)
    row = ok.iloc[0]
    return Choice(float(row["threshold"]), float(row["precision"]), float(row["coverage"]))


def select(probs: np.ndarray, threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``probs`` whose top probability reaches ``threshold``, and their predicted labels."""
    probs = np.asarray(probs)
    if threshold is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = np.flatnonzero(probs.max(1) >= threshold)
    return rows, probs[rows].argmax(1)
