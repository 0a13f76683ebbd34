"""Plots of a finished study, as PNG files: what a person looks at first in MLflow.

Every function takes plain data (the trials table of ``search.tracking.report.trials_table``, the
``search.space`` dict, per-trial epoch tables) and an output folder, and returns the path it
wrote. Figures are drawn with ``Figure`` + ``FigureCanvasAgg`` rather than pyplot, so no global
figure state leaks between calls and no display is ever needed.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import matplotlib as mpl
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SCORE = "best_val_f1"
# Fewer scored trials than this say nothing about importance (Optuna just splits it evenly).
MIN_TRIALS = 3
TOP = 5


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _scored(table: pd.DataFrame, order: list[str] | None = None) -> pd.DataFrame:
    """Trials with a score, in ``order`` (trial keys in start order) where given, else by trial key."""
    t = table.dropna(subset=[SCORE]) if SCORE in table else table.iloc[0:0]
    if order is None:
        return t.sort_values("trial", kind="stable").reset_index(drop=True)
    rank = {k: i for i, k in enumerate(order)}
    return t.iloc[sorted(range(len(t)), key=lambda i: rank.get(t["trial"].iloc[i], len(rank)))].reset_index(drop=True)


def _kind(spec: dict) -> str:
    return next(k for k in spec if k != "when")


def history(table: pd.DataFrame, out: Path, order: list[str] | None = None) -> Path:
    """Best val F1 of each trial in start order (``order``: trial keys), with the best so far."""
    t = _scored(table, order)
    if t.empty:
        raise ValueError("no trial has a score")
    x = np.arange(1, len(t) + 1)
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.scatter(x, t[SCORE], s=22, label="trial", zorder=3)
    ax.step(x, t[SCORE].cummax(), where="post", color="tab:red", label="best so far")
    ax.set(xlabel="trial (in start order)", ylabel="best val macro F1", title="optimisation history")
    ax.set_xticks(x if len(x) <= 20 else np.linspace(1, len(x), 10, dtype=int))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, out / "history.png")


def _axis(values: pd.Series, spec: dict) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """One parameter on [0, 1]: positions of its values and the tick labels of the axis.

    Choices sit at evenly spaced positions; log-scale ranges (lr) are placed by their log,
    so 1e-4 .. 1e-2 spreads evenly instead of crowding at the bottom.
    """
    kind, args = _kind(spec), spec[_kind(spec)]
    if kind == "choice":
        labels = [str(a) for a in args]
        pos = {lab: i / max(len(labels) - 1, 1) for i, lab in enumerate(labels)}
        y = np.array([pos.get(str(v), np.nan) if not _missing(v) else np.nan for v in values], dtype=float)
        return y, [(p, lab) for lab, p in pos.items()]
    lo, hi = float(args[0]), float(args[1])
    f = np.log10 if kind in ("loguniform", "logint") else (lambda v: v)
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    y = (f(v) - f(lo)) / (f(hi) - f(lo))
    return y, [(0.0, f"{lo:.3g}"), (1.0, f"{hi:.3g}")]


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def parallel_coordinates(table: pd.DataFrame, space: dict[str, dict], out: Path) -> Path:
    """One line per trial across the search-space parameters and its best val F1, coloured by it.

    A conditional parameter a trial did not have leaves a gap in its line.
    """
    t = _scored(table)
    keys = [k for k in space if k in t]
    if t.empty or not keys:
        raise ValueError("no scored trial with search-space parameters")
    cols, ticks = [], []
    for k in keys:
        y, tk = _axis(t[k], space[k])
        cols.append(y)
        ticks.append(tk)
    s = t[SCORE].to_numpy(dtype=float)
    lo, hi = float(s.min()), float(s.max())
    cols.append((s - lo) / (hi - lo) if hi > lo else np.full_like(s, 0.5))
    ticks.append([(0.0, f"{lo:.3f}"), (1.0, f"{hi:.3f}")])
    data = np.column_stack(cols)
    x = np.arange(len(cols))
    fig = Figure(figsize=(max(6, 1.8 * len(cols)), 4.5))
    ax = fig.add_subplot()
    cmap = mpl.colormaps["viridis"]
    for row, score in sorted(zip(data, cols[-1]), key=lambda p: p[1]):  # best drawn last, on top
        ax.plot(x, row, color=cmap(score), alpha=0.8, lw=1.5)
    for i, tk in enumerate(ticks):
        ax.axvline(i, color="0.6", lw=0.8)
        for pos, lab in tk:
            ax.text(i + 0.03, pos, lab, fontsize=8, va="center", ha="left",
                    bbox={"facecolor": "white", "alpha": 0.7, "lw": 0, "pad": 1})
    ax.set_xticks(x, [k.split(".")[-1] for k in keys] + ["best val F1"])
    ax.set_yticks([])
    ax.set_ylim(-0.08, 1.08)
    ax.set_xlim(-0.2, len(cols) - 0.5)
    ax.set_title("parameters of each trial (colour: best val F1)")
    return _save(fig, out / "parallel_coordinates.png")


def _distribution(spec: dict):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    kind, args = _kind(spec), spec[_kind(spec)]
    if kind == "choice":
        return CategoricalDistribution(args)
    if kind in ("uniform", "loguniform"):
        return FloatDistribution(float(args[0]), float(args[1]), log=kind == "loguniform")
    return IntDistribution(int(args[0]), int(args[1]), log=kind == "logint")


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def importances(table: pd.DataFrame, space: dict[str, dict]) -> dict[str, float]:
    """How much each search-space parameter mattered to best val F1 (Optuna's default evaluator).

    The trials table becomes an in-memory Optuna study, so this works the same for a resumed
    study and needs no Optuna storage; a conditional parameter counts over the trials that
    have it. Raises ``ValueError`` below ``MIN_TRIALS`` scored trials.
    """
    import optuna
    from optuna.distributions import IntDistribution

    t = _scored(table)
    keys = [k for k in space if k in t]
    if len(t) < MIN_TRIALS or not keys:
        raise ValueError(f"{len(t)} scored trial(s); parameter importances need at least {MIN_TRIALS}")
    dists = {k: _distribution(space[k]) for k in keys}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its "new study created" line means nothing here
    try:
        study = optuna.create_study(direction="maximize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    for _, row in t.iterrows():
        params = {k: _plain(row[k]) for k in keys if not _missing(_plain(row[k]))}
        # a column with gaps (a conditional int) comes back from pandas as float
        params = {k: int(v) if isinstance(dists[k], IntDistribution) else v for k, v in params.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params},
                                                  value=float(row[SCORE])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental / small-sample notes are not the user's concern
        imp = optuna.importance.get_param_importances(study)
    return {k: float(v) for k, v in imp.items()}


def importance_plot(imp: dict[str, float], out: Path) -> Path:
    """A horizontal bar per parameter, most important on top."""
    if not imp:
        raise ValueError("no parameter importances")
    items = sorted(imp.items(), key=lambda kv: kv[1])
    fig = Figure(figsize=(6, 0.45 * len(items) + 1.2))
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set(xlabel="importance for best val F1", title="parameter importances")
    ax.set_xlim(0, max(v for _, v in items) * 1.15 or 1)
    return _save(fig, out / "importances.png")


def learning_curves(table: pd.DataFrame, curves: dict[str, pd.DataFrame], out: Path, top: int = TOP) -> Path:
    """Val F1 per epoch of the best ``top`` trials (ASHA's early stops show as short lines)."""
    best = [r for _, r in table.dropna(subset=[SCORE]).iterrows()
            if r["trial"] in curves and curves[r["trial"]] is not None and "val_f1" in curves[r["trial"]]][:top]
    if not best:
        raise ValueError("no trial has a val_f1 curve")
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for r in best:
        c = curves[r["trial"]].dropna(subset=["val_f1"]).sort_values("epoch")
        ax.plot(c["epoch"], c["val_f1"], marker="o", ms=3, label=f"{r['trial']} ({r[SCORE]:.3f})")
    ax.set(xlabel="epoch", ylabel="val macro F1", title=f"learning curves of the top {len(best)} trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, out / "learning_curves.png")


def write_all(table: pd.DataFrame, space: dict[str, dict], curves: dict[str, pd.DataFrame], out: Path,
              log: Callable[[str], None] = print, order: list[str] | None = None) -> list[Path]:
    """Every plot (and importances.json) that the data allows; a plot that fails is skipped with a line.

    Plots are a view of results that already exist, so no failure here may end a search.
    """
    out = Path(out)
    written: list[Path] = []

    def attempt(what: str, fn: Callable[[], Path | None]) -> None:
        try:
            path = fn()
            if path is not None:
                written.append(path)
        except Exception as e:
            log(f"plot '{what}' skipped: {e}")

    def imp() -> Path:
        values = importances(table, space)
        path = out / "importances.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=2) + "\n")
        written.append(path)
        return importance_plot(values, out)

    attempt("optimisation history", lambda: history(table, out, order))
    attempt("parallel coordinates", lambda: parallel_coordinates(table, space, out))
    attempt("parameter importances", imp)
    attempt("learning curves", lambda: learning_curves(table, curves, out))
    return written
