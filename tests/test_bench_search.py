"""bench/search_efficiency.py's quick mode, so it does not rot (its figures are not asserted)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_search_bench_quick_mode_runs_and_records(smoke_cfg, tmp_path):
    results, png = tmp_path / "RESULTS.md", tmp_path / "curve.png"
    r = subprocess.run([sys.executable, "bench/search_efficiency.py", "--quick", "--results", str(results), "--plot", str(png),
                        f"data.root={smoke_cfg.data.root}", f"run.dir={smoke_cfg.run.dir}",
                        f"faces.cache_dir={smoke_cfg.faces.cache_dir}"],
                       cwd=ROOT, env={**os.environ, "RAY_ADDRESS": ""}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "epochs to random final" in r.stdout and "Goal: ours (TPE + ASHA)" in r.stdout
    table = results.read_text()
    assert "## Search: best val F1 against epochs spent" in table
    g, rf = smoke_cfg.search.grace_period, smoke_cfg.search.reduction_factor
    for label in (f"ours: TPE + ASHA (grace {g}, rf {rf})", "random search, full epochs", "TPE, full epochs"):
        assert table.count(f"| {label} | 12 | 1 |") == 1, table
    assert "**met**" in table or "**not met**" in table
    assert png.is_file() and png.stat().st_size > 0
    studies = {p.name for p in (Path(smoke_cfg.run.dir) / "bench-search" / "tune").iterdir() if p.is_dir()}
    assert studies == {f"ours-g{g}r{rf}-b12-s0", "random-b12-s0", "tpe-full-b12-s0"}
