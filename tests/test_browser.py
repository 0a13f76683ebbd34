"""The MLflow UI of a finished smoke search and finalize, checked in a real headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from maskclf import config
from search import finalize, tune
from search.tracking import Tracker, tracking_uri
from tests.conftest import free_port, start_mlflow_server

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("no chromium here (.ci/run installs it)", allow_module_level=True)


@pytest.fixture
def ui(smoke_cfg):
    """``mlflow server`` on loopback over the run dir's store; its whole process group is stopped after."""
    port = free_port()
    proc = start_mlflow_server(tracking_uri(smoke_cfg), port)
    yield f"http://127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGKILL)


def _chromium(url: str, profile: Path, *extra: str) -> str:
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--window-size=1500,1000",
                        *extra, url], capture_output=True, text=True, timeout=120)
    return r.stdout


def _text(dom: str) -> str:
    dom = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def test_mlflow_ui_lists_search_trials_and_finalize(ray_local, smoke_cfg, ui, tmp_path):
    assert CHROMIUM, "chromium is not installed: .ci/run installs Debian's package"
    cfg = config.apply(smoke_cfg, {"train.epochs": 2, "search.grace_period": 2})
    tune.run(cfg)
    finalize.run(finalize.load_best(None, Path(cfg.run.dir) / "smoke" / "best_config.yaml",
                                    [f"run.dir={cfg.run.dir}", f"data.root={cfg.data.root}",
                                     f"faces.cache_dir={cfg.faces.cache_dir}"]))
    tracker = Tracker(tracking_uri(cfg), "smoke")
    trial = tracker.find("trial")[0]
    expected_runs = 1 + 2 + 1 + 5  # search, its trials, finalize, its folds

    page = _text(_chromium(tracker.ui_url(ui), tmp_path / "p1", "--dump-dom"))
    assert "search · smoke" in page and "finalize · smoke" in page
    assert f"{expected_runs} matching runs" in page
    run_url = f"{ui}/#/experiments/{tracker.experiment_id}/runs/{trial.info.run_id}?workflowType=machine_learning"
    run_page = _text(_chromium(run_url, tmp_path / "p2", "--dump-dom"))
    assert trial.info.run_name in run_page and "val_f1" in run_page
    shot = Path(cfg.run.dir) / "mlflow_ui.png"
    _chromium(tracker.ui_url(ui), tmp_path / "p3", f"--screenshot={shot}")
    with Image.open(shot) as im:
        low, high = im.convert("L").getextrema()
        assert im.size == (1500, 1000) and high - low > 100  # a rendered page, not a blank one
