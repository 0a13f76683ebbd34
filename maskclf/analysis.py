"""Out-of-fold result sheets people can read: per-class F1 bars and a gallery of mistakes.

Plain arrays in, a file out, so finalize, a notebook or a test can call them alike. Figures are
drawn on a ``Figure`` with the Agg canvas, never through pyplot: no global backend to set and
nothing left open in a long-running driver.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from maskclf import tasks
from maskclf.labels import AGE_NAMES
from maskclf.metrics import macro_f1, per_class_f1

AGE_COLORS = ("#4c72b0", "#55a868", "#c44e52")  # <30, 30-59, >=60
ERROR_COLUMNS = ["path", "person", "true", "pred", "prob", "p_true", "true_id", "pred_id", "pair_count"]


def _figure(width: float, height: float, layout: str | None = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_per_class_f1(y_true: np.ndarray, y_pred: np.ndarray, path: str | Path, title: str = "",
                      task: str = "all") -> Path:
    """Horizontal bars of each class's F1 (of ``task``'s classes), coloured by age band where a class has one,
    with the macro F1 as a vertical line.

    Classes absent from both arrays show an empty bar (F1 0) and "(n=0)", so a missing class is
    visible rather than silently dropped. Returns ``path``.
    """
    from matplotlib.patches import Patch

    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    names = tasks.class_names(task)
    n = len(names)
    f1 = per_class_f1(y_true, y_pred, n)
    support = np.bincount(y_true, minlength=n)
    macro = macro_f1(y_true, y_pred) if len(y_true) else 0.0
    classes = np.arange(n)
    bands = [tasks.age_band_of(task, c) for c in classes]
    fig = _figure(8, 2 + 5 * n / 18)
    ax = fig.subplots()
    ax.barh(classes, f1, color=["#8c8c8c" if b is None else AGE_COLORS[b] for b in bands])
    ax.set_yticks(classes, [f"{names[c]} (n={support[c]})" for c in classes], fontsize=8)
    ax.invert_yaxis()  # class 0 on top, as in the confusion matrix
    for c in classes:
        ax.text(f1[c] + 0.01, c, f"{f1[c]:.2f}", va="center", fontsize=7)
    handles = [Patch(color=col, label=f"age {name}") for col, name in zip(AGE_COLORS, AGE_NAMES)
               if any(b is not None for b in bands)]
    handles.append(ax.axvline(macro, color="black", linestyle="--", linewidth=1, label=f"macro F1 {macro:.3f}"))
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("F1")
    ax.set_title(title or f"per-class F1 ({len(y_true)} images)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def error_table(y_true: np.ndarray, probs: np.ndarray, paths: Sequence[str] | None = None,
                persons: Sequence[str] | None = None, task: str = "all") -> pd.DataFrame:
    """The misclassified samples, most frequent (true, pred) confusion first, most confident mistake first.

    Columns: path, person, true, pred (class names), prob (of the predicted class), p_true (of the
    true class: near 0 on a confident mistake, a hint of a wrong label), true_id, pred_id,
    pair_count (size of the confusion); the index is the sample's position in the inputs.
    """
    y_true, probs = np.asarray(y_true, np.int64), np.asarray(probs)
    n = len(y_true)
    pred = probs.argmax(1) if n else np.zeros(0, np.int64)
    table = pd.DataFrame({
        "path": list(paths) if paths is not None else [""] * n,
        "person": list(persons) if persons is not None else [""] * n,
        "true_id": y_true, "pred_id": pred,
        "prob": probs.max(1).round(5) if n else np.zeros(0),
        "p_true": probs[np.arange(n), y_true].round(5) if n else np.zeros(0),
    })
    table = table[table["true_id"] != table["pred_id"]]
    table["pair_count"] = table.groupby(["true_id", "pred_id"])["prob"].transform("size").astype(np.int64)
    names = tasks.class_names(task)
    table["true"] = [names[c] for c in table["true_id"]]
    table["pred"] = [names[c] for c in table["pred_id"]]
    # Ties in count break on the class ids so the order does not depend on the input order.
    table = table.sort_values(["pair_count", "true_id", "pred_id", "prob"], ascending=[False, True, True, False],
                              kind="stable")
    return table[ERROR_COLUMNS]


def save_error_table(y_true: np.ndarray, probs: np.ndarray, path: str | Path, paths: Sequence[str] | None = None,
                     persons: Sequence[str] | None = None, task: str = "all") -> Path:
    """:func:`error_table` as a CSV (only the header when nothing is misclassified). Returns ``path``."""
    error_table(y_true, probs, paths, persons, task).to_csv(path, index=False)
    return Path(path)


def save_error_sheet(y_true: np.ndarray, probs: np.ndarray, crops, path: str | Path, *,
                     crop_rows: np.ndarray | None = None, captions: Sequence[str] | None = None,
                     groups: int = 6, per_group: int = 8, title: str = "", task: str = "all") -> Path:
    """A grid of misclassified face crops: one row per frequent confusion, its most confident mistakes first.

    ``crops[crop_rows[i]]`` (``crops[i]`` by default) is sample i's S x S x 3 uint8 crop, so a
    caller can pass its whole crop store and only the crops shown are read. Each row is titled
    "true → pred (count)", each crop captioned with its labels, the predicted probability and
    ``captions[i]`` when given. With no mistakes the sheet says so. Returns ``path``.
    """
    table = error_table(y_true, probs, task=task)
    pairs = table.drop_duplicates(["true_id", "pred_id"]).head(groups)
    if pairs.empty:
        fig = _figure(6, 1.5)
        fig.text(0.5, 0.5, f"{title}\nno misclassified images".strip(), ha="center", va="center")
        fig.savefig(path, dpi=110)
        return Path(path)
    fig = _figure(1.7 * per_group, 2.3 * len(pairs) + 0.4, layout="constrained")
    if title:
        fig.suptitle(title)
    rows = fig.subfigures(len(pairs), 1, squeeze=False)[:, 0]
    for sub, (_, pair) in zip(rows, pairs.iterrows()):
        sub.suptitle(f"{pair['true']} → {pair['pred']} ({pair['pair_count']})", fontsize=10, fontweight="bold")
        shown = table[(table["true_id"] == pair["true_id"]) & (table["pred_id"] == pair["pred_id"])].head(per_group)
        axes = sub.subplots(1, per_group, squeeze=False)[0]
        for ax in axes:  # a short row keeps its empty cells, so crops line up across rows
            ax.axis("off")
        for ax, (i, err) in zip(axes, shown.iterrows()):
            ax.imshow(np.asarray(crops[int(crop_rows[i]) if crop_rows is not None else i]))
            extra = f"{captions[i]}\n" if captions is not None else ""
            ax.set_title(f"{extra}true {err['true']}\npred {err['pred']} ({err['prob']:.2f})", fontsize=6)
    fig.savefig(path, dpi=110)
    return Path(path)
