"""Two searches started side by side on one machine, each with no Ray address given: each runs on a private
Ray of its own, so the first to finish takes nothing of the other's with it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from maskclf import config
from tests.faults import ROOT, SMOKE, _args


pytestmark = pytest.mark.integration


def _search(cfg, study: str, epochs: int) -> subprocess.Popen:
    args = _args(cfg, study, "search.num_samples=1", f"train.epochs={epochs}", f"search.grace_period={epochs}")
    # no address: what a user's two terminals have
    return subprocess.Popen([sys.executable, "-m", "search.tune", "--config", str(SMOKE), *args], cwd=ROOT,
                            env={**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_two_searches_side_by_side_each_start_their_own_ray_and_both_finish(smoke_cfg):
    first = _search(smoke_cfg, "first", 1)
    seen = []
    deadline = time.time() + 180
    while not any("started a local Ray" in line for line in seen):  # the first one's Ray is up
        line = first.stdout.readline()
        assert line or first.poll() is None, "".join(seen)[-3000:]
        seen.append(line)
        assert time.time() < deadline, "".join(seen)[-3000:]
    second = _search(smoke_cfg, "second", 6)  # outlives the first
    out1 = "".join(seen) + first.communicate(timeout=600)[0]
    assert first.returncode == 0, out1[-3000:]
    assert second.poll() is None, "the second search ended with the first"
    out2 = second.communicate(timeout=600)[0]
    assert second.returncode == 0, out2[-3000:]
    assert "started a local Ray" in out2 and "connecting to" not in out2
    for study, epochs in (("first", 1), ("second", 6)):
        cfg = config.load(SMOKE, _args(smoke_cfg, study))
        table = pd.read_csv(Path(cfg.run.dir) / study / "trials.csv")
        assert len(table) == 1 and table["best_val_f1"].between(0, 1).all(), table
        assert table["epochs"].tolist() == [epochs] and table["status"].tolist() == ["done"], table
