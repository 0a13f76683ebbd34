"""The MLflow UI of a finished smoke search and finalize, and optuna-dashboard on its Optuna study, checked in
a real headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from search.study import settings
from search.tracking import Tracker, tracking_uri
from tests.conftest import SMOKE, copy_run_dir, free_port, start_mlflow_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("no chromium here (.ci/run installs it)", allow_module_level=True)


@pytest.fixture
def finished(smoke_final, tmp_path):
    """A copy of the run's shared smoke study: a search of 2 trials and a five-fold finalize of its best."""
    run_dir = copy_run_dir(smoke_final.run_dir, tmp_path / "runs")
    return settings.load(SMOKE, [*smoke_final.overrides, f"run.dir={run_dir}"])


@pytest.fixture
def ui(finished):
    """``mlflow server`` on loopback over the run dir's store; its whole process group is stopped after."""
    port = free_port()
    proc = start_mlflow_server(tracking_uri(finished), port)
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


def _optuna_dashboard(cfg, tmp_path: Path) -> None:
    """optuna-dashboard, as ``search.tune`` prints it, on the finished study: its trials, values and curves."""
    import optuna

    from search.study.optuna_study import dashboard_command, storage_url

    port = free_port()
    command = dashboard_command(cfg).split("  then ")[0].split()
    assert command[0] == "optuna-dashboard"
    proc = subprocess.Popen([str(Path(sys.executable).with_name(command[0])), *command[1:], "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/studies", timeout=2).close()
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "optuna-dashboard did not start"
                time.sleep(0.5)
        study = optuna.load_study(study_name=cfg.run.study, storage=storage_url(cfg))
        page = _text(_chromium(f"{base}/dashboard/studies/{study._study_id}", tmp_path / "p4", "--dump-dom"))
        assert f"{cfg.run.study} (id={study._study_id})" in page
        assert f"Best Trial (number={study.best_trial.number}) {study.best_value}" in page
        assert all(f"trial #{t.number}" in page for t in study.trials)  # the intermediate-value curves
    finally:
        os.killpg(proc.pid, signal.SIGKILL)


def test_mlflow_ui_lists_search_trials_and_finalize(finished, ui, tmp_path):
    assert CHROMIUM, "chromium is not installed: .ci/run installs Debian's package"
    cfg = finished
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
    _optuna_dashboard(cfg, tmp_path)
