"""search.tracking.plots on a hand-made trials table: every plot is a readable PNG, and too little data is handled."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from search.tracking import plots

SPACE = {
    "model.backbone": {"choice": ["test_resnet", "test_efficientnet"]},
    "train.lr": {"loguniform": [1.0e-4, 1.0e-2]},
    "train.warmup_epochs": {"int": [0, 3]},
    "train.decay_epochs": {"int": [1, 3], "when": {"model.backbone": "test_resnet"}},
}


def _table(n: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        backbone = SPACE["model.backbone"]["choice"][i % 2]
        rows.append({"trial": f"abc_{i:05d}", "status": "done" if i % 3 else "stopped", "epochs": 6 if i % 3 else 2,
                     "val_f1": 0.1 + 0.05 * i, "best_val_f1": 0.12 + 0.05 * i + 0.01 * rng.random(), "f1_ge60": 0.0,
                     "model.backbone": backbone, "train.lr": float(10 ** rng.uniform(-4, -2)),
                     "train.warmup_epochs": int(rng.integers(0, 4)),
                     "train.decay_epochs": int(rng.integers(1, 4)) if backbone == "test_resnet" else math.nan})
    rows.append({"trial": f"abc_{n:05d}", "status": "error", "epochs": 0, "val_f1": math.nan, "best_val_f1": math.nan,
                 "f1_ge60": math.nan, "model.backbone": "test_resnet", "train.lr": 1e-3, "train.warmup_epochs": 1,
                 "train.decay_epochs": 2, "error": "RuntimeError: boom"})
    return pd.DataFrame(rows).sort_values("best_val_f1", ascending=False, na_position="last").reset_index(drop=True)


def _curves(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {r["trial"]: pd.DataFrame({"epoch": range(1, int(r["epochs"]) + 1),
                                      "val_f1": np.linspace(0.05, r["best_val_f1"], int(r["epochs"]))})
            for _, r in table.iterrows() if r["epochs"]}


def _png(path) -> None:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        im.verify()
        assert im.format == "PNG"


def test_each_plot_writes_a_png(tmp_path):
    table = _table()
    _png(plots.history(table, tmp_path))
    _png(plots.parallel_coordinates(table, SPACE, tmp_path))
    _png(plots.importance_plot(plots.importances(table, SPACE), tmp_path))
    _png(plots.learning_curves(table, _curves(table), tmp_path))


def test_importances_cover_the_space():
    imp = plots.importances(_table(), SPACE)
    # the conditional parameter is absent from some trials and still assessed
    assert set(imp) == set(SPACE)
    assert all(v >= 0 for v in imp.values()) and sum(imp.values()) == pytest.approx(1.0)


def test_write_all_writes_every_plot_and_the_importances(tmp_path):
    table = _table()
    paths = plots.write_all(table, SPACE, _curves(table), tmp_path / "plots", log=lambda s: None)
    names = {p.name for p in paths}
    assert names == {"history.png", "parallel_coordinates.png", "importances.png", "importances.json",
                     "learning_curves.png"}
    for p in paths:
        if p.suffix == ".png":
            _png(p)
    assert set(json.loads((tmp_path / "plots" / "importances.json").read_text())) <= set(SPACE)


def test_too_few_trials_skip_importances_only(tmp_path):
    table = _table(2)
    with pytest.raises(ValueError, match="at least"):
        plots.importances(table, SPACE)
    lines = []
    paths = plots.write_all(table, SPACE, _curves(table), tmp_path, log=lines.append)
    assert {p.name for p in paths} == {"history.png", "parallel_coordinates.png", "learning_curves.png"}
    assert len(lines) == 1 and "importances" in lines[0]


def test_no_scored_trial_writes_nothing_and_does_not_raise(tmp_path):
    table = _table(0)
    lines = []
    assert plots.write_all(table, SPACE, {}, tmp_path, log=lines.append) == []
    assert len(lines) == 4


def test_history_follows_the_start_order(tmp_path):
    table = _table(4)
    order = list(reversed(sorted(table["trial"])))
    assert list(plots._scored(table, order)["trial"]) == [t for t in order if t in set(table["trial"][:4])]
    _png(plots.history(table, tmp_path, order=order))


def test_start_order_reads_tune_trial_numbers():
    from types import SimpleNamespace

    from search.tracking import report

    def result(trial_id, folder):
        return SimpleNamespace(metrics={"trial_id": trial_id}, path=f"/runs/tune/s/{folder}")

    results = [result("c7fc8492", "train_trial_c7fc8492_10_lr=0.01"), result("94455fda", "train_trial_94455fda_9_lr=0.02"),
               result("", "odd")]
    assert report.start_order(results) == ["94455fda", "c7fc8492", "odd"]
