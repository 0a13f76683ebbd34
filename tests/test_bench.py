"""The benchmark scripts' quick modes, so they do not rot (their figures are not asserted)."""

import subprocess
import sys

from tests.conftest import ROOT, SMOKE


def test_loader_quick_mode_runs_and_records(smoke_cfg, tmp_path):
    results = tmp_path / "RESULTS.md"
    r = subprocess.run([sys.executable, "bench/loader.py", "--quick", "--results", str(results), "--config",
                        str(SMOKE), f"data.root={smoke_cfg.data.root}", f"run.dir={smoke_cfg.run.dir}",
                        f"faces.cache_dir={smoke_cfg.faces.cache_dir}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ours (crop cache + albumentations)" in r.stdout and "ratio:" in r.stdout
    table = results.read_text()
    assert "## Loader" in table and table.count("| 200 × 1 |") == 1
