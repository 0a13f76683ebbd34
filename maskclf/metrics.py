"""Macro F1 over the whole validation set at once (never a mean of per-batch scores)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score

from maskclf.labels import NUM_CLASSES, decode


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The competition metric: sklearn's macro F1 over the classes present in either array."""
    return float(f1_score(y_true, y_pred, average="macro"))


def per_class_f1(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """F1 of each of the 18 classes (0 where a class never occurs in either array)."""
    return f1_score(y_true, y_pred, labels=list(range(NUM_CLASSES)), average=None, zero_division=0)


def scores(probs: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
    """val_f1, val_acc, val_loss and per-task accuracies from 18-class probabilities."""
    y_pred = probs.argmax(1)
    pm, pg, pa = decode(y_pred)
    tm, tg, ta = decode(y_true)
    eps = 1e-7
    nll = -np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0)).mean()
    band_f1 = _band_f1(y_true, y_pred)
    return {
        "val_f1": macro_f1(y_true, y_pred),
        "val_acc": float((y_pred == y_true).mean()),
        "val_loss": float(nll),
        "mask_acc": float((pm == tm).mean()),
        "gender_acc": float((pg == tg).mean()),
        "age_acc": float((pa == ta).mean()),
        "f1_lt30": band_f1[0],
        "f1_30_59": band_f1[1],
        "f1_ge60": band_f1[2],
    }


def _band_f1(y_true: np.ndarray, y_pred: np.ndarray) -> list[float]:
    """Mean F1 of the classes of each age band that occur in ``y_true`` (>=60 is the hard one)."""
    f1 = per_class_f1(y_true, y_pred)
    present = np.bincount(y_true, minlength=NUM_CLASSES) > 0
    out = []
    for band in range(3):
        sel = present & (np.arange(NUM_CLASSES) % 3 == band)
        out.append(float(f1[sel].mean()) if sel.any() else float("nan"))
    return out


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """18x18 confusion counts, rows = true class."""
    return confusion_matrix(y_true, y_pred, labels=list(range(NUM_CLASSES)))
