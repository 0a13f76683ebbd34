"""The benchmark scripts' quick modes, so they do not rot (their figures are not asserted)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


def _quick(script: str, smoke_cfg, results, timeout: int = 300) -> subprocess.CompletedProcess:
    """``bench/<script> --quick`` on the smoke config, pointed at the test's data, run dir and results."""
    return subprocess.run([sys.executable, f"bench/{script}", "--quick", "--results", str(results), "--config",
                           str(SMOKE), f"data.root={smoke_cfg.data.root}", f"run.dir={smoke_cfg.run.dir}",
                           f"faces.cache_dir={smoke_cfg.faces.cache_dir}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_faces_quick_mode_runs_and_records(smoke_cfg, tmp_path):
    results = tmp_path / "RESULTS.md"
    r = _quick("faces.py", smoke_cfg, results)
    assert r.returncode == 0, r.stderr[-2000:]
    for line in ("32 train images, method mtcnn", "batched (32 per MTCNN call):", "one image at a time:", "ratio:",
                 "crop cache, first call (miss):", "crop cache, same call again (hit):",
                 "crop cache hit, all 420 train images:"):
        assert line in r.stdout, r.stdout
    table = results.read_text()
    assert "## Faces" in table and table.count("| 32 | mtcnn / cpu / 1 |") == 1


def test_crops_quick_mode_runs_and_records(smoke_cfg, tmp_path):
    results = tmp_path / "RESULTS.md"
    r = _quick("crops.py", smoke_cfg, results)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    [row] = [line for line in r.stdout.splitlines() if line.startswith("32 | 8 | ")]
    assert "| yes |" in row, r.stdout  # the Ray tasks gave the crops one process gives
    table = results.read_text()
    assert "## Face crops: one process against shards on Ray" in table and table.count("| 32 | 8 |") == 1


def test_inference_quick_mode_runs_and_records(smoke_cfg, tmp_path):
    results = tmp_path / "RESULTS.md"
    r = _quick("inference.py", smoke_cfg, results)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "64 eval images, test_resnet at 32px, flip TTA on" in r.stdout, r.stdout
    assert "JPEG+crop b1" in r.stdout and "crops b64" in r.stdout
    rows = [line for line in r.stdout.splitlines() if line.strip().startswith(("ensemble of 5", "single model"))]
    assert len(rows) == 2 and all(len(line.split()) in (6, 7) for line in rows), r.stdout
    table = results.read_text()
    assert "## Inference" in table
    assert table.count("| ensemble of 5 | 64 |") == 1 and table.count("| single model | 64 |") == 1


def test_overhead_quick_mode_runs_and_records(smoke_cfg, tmp_path):
    results = tmp_path / "RESULTS.md"
    r = _quick("overhead.py", smoke_cfg, results, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "test_resnet at 32px, 2 epochs" in r.stdout, r.stdout
    for line in ("per trial:", "epochs alone:", "whole command:"):
        assert sum(line in out for out in r.stdout.splitlines()) == 1, r.stdout
    table = results.read_text()
    assert "## Overhead" in table and table.count("| test_resnet 32px 2 ep |") == 1
    assert not (Path(smoke_cfg.run.dir) / "overhead").exists()  # outputs went to a temporary run dir


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_gpu_check_without_gpu_exits_2_with_one_line(tmp_path):
    results = tmp_path / "RESULTS.md"
    r = subprocess.run(["bash", "bench/gpu_check.sh", "--results", str(results)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "no NVIDIA GPU on this machine" in r.stderr
    assert not results.exists()
