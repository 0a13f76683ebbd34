"""Macro F1 over the whole validation set at once (never a mean of per-batch scores)."""

from __future__ import annotations

import numpy as np

from maskclf.labels import NUM_CLASSES, decode


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    """n x n confusion counts, rows = true class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)


def per_class_f1(y_true: np.ndarray, y_pred: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    """F1 of each of the ``n`` classes (0 where a class never occurs in either array)."""
    cm = confusion(y_true, y_pred, n)
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1)  # 2 TP + FP + FN
    return np.divide(2 * tp, denom, out=np.zeros(n), where=denom > 0)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The competition metric: the mean F1 over the classes present in either array (as scikit-learn's
    ``f1_score(average="macro")``)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if not len(y_true):
        return 0.0
    n = int(max(y_true.max(), y_pred.max())) + 1
    present = (np.bincount(y_true, minlength=n) + np.bincount(y_pred, minlength=n)) > 0
    return float(per_class_f1(y_true, y_pred, n)[present].mean())


BANDS = ("f1_lt30", "f1_30_59", "f1_ge60")  # the per-age-band F1 keys of :func:`scores`


def scores(probs: np.ndarray, y_true: np.ndarray, task: str = "all") -> dict[str, float]:
    """val_f1 (the task's macro F1), val_acc, val_loss, and the accuracy of each task the probabilities
    cover; the per-age-band F1s where they cover age. ``probs`` are of ``task``'s classes (N x 18 for all)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = probs.argmax(1)
    eps = 1e-7
    nll = -np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0)).mean()
    out = {"val_f1": macro_f1(y_true, y_pred), "val_acc": float((y_pred == y_true).mean()), "val_loss": float(nll)}
    if task == "all":
        for name, p, t in zip(("mask", "gender", "age"), decode(y_pred), decode(y_true)):
            out[f"{name}_acc"] = float((p == t).mean())
    else:
        out[f"{task}_acc"] = out["val_acc"]
    if task in ("all", "age"):
        out.update(zip(BANDS, band_f1(y_true, y_pred, task)))
    return out


def band_f1(y_true: np.ndarray, y_pred: np.ndarray, task: str = "all") -> list[float]:
    """Mean F1 of the classes of each age band that occur in ``y_true`` (>=60 is the hard one); for an age
    model, the F1 of each band's class."""
    n = NUM_CLASSES if task == "all" else 3
    f1 = per_class_f1(y_true, y_pred, n)
    present = np.bincount(y_true, minlength=n) > 0
    band = np.arange(n) % 3  # 18 classes: label % 3 is the age band; the age task's classes are the bands
    out = []
    for b in range(3):
        sel = present & (band == b)
        out.append(float(f1[sel].mean()) if sel.any() else float("nan"))
    return out
