"""bench/scale.py --quick: a real simulated multi-node Ray cluster and the search driver (figures not asserted)."""

import subprocess
import sys


from tests.conftest import ROOT


def test_scale_quick_mode_runs_and_records(smoke_cfg, tmp_path):
    results, plot = tmp_path / "RESULTS.md", tmp_path / "scale.png"
    r = subprocess.run([sys.executable, "bench/scale.py", "--quick", "--results", str(results), "--plot", str(plot),
                        "--dir", str(tmp_path / "bench"), f"data.root={smoke_cfg.data.root}",
                        f"faces.cache_dir={smoke_cfg.faces.cache_dir}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "g16-n32-after:" in r.stdout, r.stdout[-3000:]
    assert "GPUs with 1-minute epochs" in r.stdout
    table = results.read_text()
    assert "## Scale: one search driver against a simulated GPU cluster" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "--quick" in line]
    assert len(rows) == 1 and "| 16 (2) | 32 |" in rows[0]
    assert plot.stat().st_size > 0
