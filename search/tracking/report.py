"""Tables of a study's trials: for the terminal, trials.csv, MLflow and best_config.yaml."""

from __future__ import annotations

import math
import re

import pandas as pd

from maskclf import config as config_mod
from maskclf.config import Config


def trial_key(result) -> str:
    """The name of a Tune result's trial in the tables: its trial id, else its folder's name."""
    return (result.metrics or {}).get("trial_id") or (result.path or "").rsplit("/", 1)[-1]


def curves(results) -> dict[str, pd.DataFrame]:
    """Each trial's per-epoch metrics (``epoch``, ``val_f1``, ...), keyed like ``trials_table``."""
    return {trial_key(r): r.metrics_dataframe for r in results if r.metrics_dataframe is not None}


def start_order(results) -> list[str]:
    """Trial keys in the order Tune created the trials, part after part of an extended study.

    Tune's trial ids are random; the running number sits after the id in the trial's folder name
    (``train_trial_<id>_<n>_...``). A trial without one goes last in its part.
    """
    parts: dict[str, int] = {}  # experiment folder -> its rank: the parts come in order
    for r in results:
        parts.setdefault((r.path or "").rsplit("/", 1)[0], len(parts))

    def order(r) -> tuple[int, float]:
        key = trial_key(r)
        m = re.search(rf"{re.escape(key)}_(\d+)", (r.path or "").rsplit("/", 1)[-1])
        return parts[(r.path or "").rsplit("/", 1)[0]], int(m.group(1)) if m else math.inf

    return [trial_key(r) for r in sorted(results, key=order)]


def trials_table(results, cfg: Config) -> pd.DataFrame:
    """One row per trial: its parameters, last and best val_f1, epochs trained, status; best first."""
    keys = list(cfg.search.space)
    rows = []
    for r in results:
        if r.config is None and not r.error:  # never trained: the study's epoch budget ended first
            continue
        m = r.metrics or {}
        hist = r.metrics_dataframe
        best = float(hist["val_f1"].max()) if hist is not None and "val_f1" in hist else math.nan
        status = "error" if r.error else ("done" if m.get("epoch") == cfg.train.epochs else "stopped")
        row = {"trial": trial_key(r), "status": status,
               "epochs": m.get("epoch", 0), "val_f1": m.get("val_f1", math.nan), "best_val_f1": best,
               "f1_ge60": m.get("f1_ge60", math.nan), "node": m.get("node")}
        row.update({k: (r.config or {}).get(k) for k in keys})
        if r.error:
            row["error"] = str(r.error).strip().splitlines()[-1][:200]
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values("best_val_f1", ascending=False, na_position="last").reset_index(drop=True)


def best_config(table: pd.DataFrame, results, cfg: Config) -> Config:
    """The complete config of the best trial of ``table`` (what ``maskclf.train`` and finalize accept), built
    from Tune's record of that trial's parameters, as the trial itself was; without the run-time device."""
    from search.cluster.experiment import trial_config

    best = table.dropna(subset=["best_val_f1"]).iloc[0]["trial"]
    params = next(r.config for r in results if trial_key(r) == best)
    return config_mod.apply(trial_config(cfg, params), {"train.device": cfg.train.device,
                                                        "faces.device": cfg.faces.device})


def _fmt(v) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return "-" if v is None else str(v)


def top_table(table: pd.DataFrame, n: int = 5) -> str:
    """The best ``n`` trials as fixed-width text."""
    first = ["trial", "best_val_f1", "val_f1", "f1_ge60", "epochs", "status"]
    cols = first + [c for c in table.columns if c not in (*first, "error", "node")]
    head = table.head(n)
    cells = [[c.split(".")[-1] for c in cols]] + [[_fmt(r[c]) for c in cols] for _, r in head.iterrows()]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    title = f"top {len(head)} of {len(table)} trials (by best val macro F1):"
    failed = [f"trial {r['trial']} failed: {r['error']}" for _, r in table.iterrows()
              if r["status"] == "error" and isinstance(r.get("error"), str)]
    return "\n".join([title, *lines, *failed])
