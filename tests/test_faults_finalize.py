"""A finalize whose driver is killed keeps its finished folds and resumes the others.

Real processes and real signals, a real local Ray and a real SQLite MLflow store.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from maskclf import config
from tests.faults import ROOT, SMOKE, _args, _kill_when, _start


pytestmark = pytest.mark.integration


def test_driver_killed_during_finalize_keeps_finished_folds(smoke_cfg):
    best = Path(smoke_cfg.run.dir) / "smoke" / "best_config.yaml"
    config.save(config.apply(smoke_cfg, {"train.epochs": 3, "search.cpus_per_trial": 1}), best)
    args = _args(smoke_cfg, "smoke", "finalize.folds=0,1,2")  # two train at once, the third waits
    final = Path(smoke_cfg.run.dir) / "smoke" / "final"

    def fold_done():
        from maskclf import engine

        for ck in final.glob("folds/fold*/checkpoint"):
            try:
                if engine.load_state(ck)["epoch"] + 1 == 3:
                    return True
            except Exception:
                pass
        return False

    _kill_when(_start("search.finalize", args), fold_done)
    assert not (final / "metrics.json").exists()
    from maskclf import engine

    done = {ck.parent.name for ck in final.glob("folds/fold*/checkpoint") if engine.load_state(ck)["epoch"] + 1 == 3}
    stamps = {name: (final / "folds" / name / "checkpoint" / "state.pt").stat().st_mtime_ns for name in done}
    r = subprocess.run([sys.executable, "-m", "search.finalize", "--config", str(SMOKE), *args], cwd=ROOT,
                       env={**os.environ, "RAY_ADDRESS": "local"}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "continuing the interrupted finalize" in r.stdout and "taking over the lock of study 'smoke'" in r.stdout
    for name in done:
        assert f"{name.replace('fold', 'fold ')}: checkpoint complete, not retrained" in r.stdout
        assert (final / "folds" / name / "checkpoint" / "state.pt").stat().st_mtime_ns == stamps[name]
    assert (final / "metrics.json").is_file() and (final / "submission.csv").is_file()
