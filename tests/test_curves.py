"""bench/curves.py: the learning-curve table's points, and its quick mode recording and resuming for real."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import curves  # noqa: E402

SPACE = {
    "train.lr": {"loguniform": [1.0e-4, 1.0e-2]},
    "train.scheduler": {"choice": ["cosine", "step", "plateau"]},
    "train.decay_epochs": {"int": [1, 3], "when": {"train.scheduler": ["step", "plateau"]}},
    "train.weight_decay": {"uniform": [0.0, 0.1]},
}


def test_the_space_is_made_discrete_on_grids():
    assert curves.grid(SPACE["train.lr"], 3) == [1e-4, 1e-3, 1e-2]
    assert curves.grid(SPACE["train.weight_decay"], 3) == [0.0, 0.05, 0.1]
    assert curves.grid({"int": [1, 9]}, 3) == [1, 5, 9] and curves.grid({"int": [1, 3]}, 4) == [1, 2, 3]
    assert curves.grid(SPACE["train.scheduler"], 2) == ["cosine", "step", "plateau"]


def test_points_are_distinct_follow_conditions_and_keep_their_order_when_more_are_asked():
    small = curves.points(SPACE, 5, 3)
    every = curves.points(SPACE, 1000, 3)
    assert every[:5] == small
    # cosine: 3 lr x 3 wd; step and plateau: 3 lr x 3 decay x 3 wd each
    assert len(every) == 9 + 2 * 27 and len({curves.point_id(p) for p in every}) == len(every)
    assert all(("train.decay_epochs" in p) == (p["train.scheduler"] != "cosine") for p in every)


@pytest.mark.integration
def test_quick_recording_writes_a_line_per_run_and_resumes(smoke_cfg, tmp_path):
    out = tmp_path / "curves.jsonl"
    cmd = [sys.executable, "bench/curves.py", "--quick", "--out", str(out), f"data.root={smoke_cfg.data.root}",
           f"run.dir={smoke_cfg.run.dir}", f"faces.cache_dir={smoke_cfg.faces.cache_dir}"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and sorted(r["seed"] for r in rows) == [0, 0, 0, 0, 1]  # 4 points, the first twice
    for row in rows:
        assert len(row["val_f1"]) == len(row["epoch_time"]) == 2 and all(0 <= v <= 1 for v in row["val_f1"])
        assert row["id"] == curves.point_id(row["params"]) and set(row["params"]) == set(smoke_cfg.search.space)
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "5 recorded" in again.stdout and "0 to train" in again.stdout
    assert len(out.read_text().splitlines()) == 5
