"""A killed search driver and a tracking server lost mid-search: each rerun completes the study exactly.

Real processes and real signals, a real local Ray, real SQLite MLflow stores and a real MLflow server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from search.study import settings
from tests.conftest import free_port, start_mlflow_server
from tests.faults import ROOT, SMOKE, _args, _check_optuna_matches, _kill_when, _start, _steps, _tracker


pytestmark = pytest.mark.integration


def test_driver_killed_mid_search_resumes_without_losing_or_repeating_work(smoke_cfg):
    # a process per trial (the default, not the smoke config's reuse): trials that start in milliseconds could all
    # finish while the second driver is still starting, and it would find no lock to be refused by
    args = _args(smoke_cfg, "killed", "search.num_samples=3", "search.max_concurrent=1", "train.epochs=6",
                 "search.grace_period=6", "search.reuse_actors=false")
    cfg = settings.load(SMOKE, args)

    def one_done_and_next_started():
        runs = _tracker(cfg).find("trial")
        return any(r.info.status == "FINISHED" for r in runs) and any(r.info.status == "RUNNING" for r in runs)

    first = _start("search.tune", args)

    def second_driver_is_refused():
        t0 = time.time()
        r = subprocess.run([sys.executable, "-m", "search.tune", "--config", str(SMOKE), *args], cwd=ROOT,
                           env={**os.environ, "RAY_ADDRESS": "local"}, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and time.time() - t0 < 60, r.stderr[-3000:]
        assert f"study 'killed' is being run by pid {first.pid} on " in r.stderr and "Traceback" not in r.stderr
        assert first.poll() is None  # the first driver is unharmed

    _kill_when(first, one_done_and_next_started, before_kill=second_driver_is_refused)
    tracker = _tracker(cfg)
    before = {r.data.tags["maskclf.key"]: (r.info.status, _steps(tracker, r.info.run_id), r.info.end_time)
              for r in tracker.find("trial")}
    finished_before = {k for k, (status, _, _) in before.items() if status == "FINISHED"}
    assert finished_before and any(status == "RUNNING" for status, _, _ in before.values())

    r = subprocess.run([sys.executable, "-m", "search.tune", "--config", str(SMOKE), *args], cwd=ROOT,
                       env={**os.environ, "RAY_ADDRESS": "local"}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    planned = set(pd.read_csv(Path(cfg.run.dir) / "killed" / "trials.csv", dtype=str)["trial"])
    assert len(planned) == 3
    runs = tracker.find("trial")
    trials = [t for t in runs if t.info.status == "FINISHED"]
    assert {t.data.tags["maskclf.key"] for t in trials} == planned and len(trials) == 3
    # a trial started after Tune's last snapshot is rerun as a new trial; its old run is closed, not left running
    assert all(t.info.status == "KILLED" for t in runs if t not in trials)
    for t in trials:
        assert _steps(tracker, t.info.run_id) == [1, 2, 3, 4, 5, 6]
    for t in trials:  # a trial finished before the kill was not touched again: not retrained, not reopened
        key = t.data.tags["maskclf.key"]
        if key in finished_before:
            assert _steps(tracker, t.info.run_id) == before[key][1]
            assert t.info.end_time == before[key][2]
    assert [p.info.status for p in tracker.find("search")] == ["FINISHED"]
    assert "top 3 of 3 trials" in r.stdout
    assert f"taking over the lock of study 'killed' left by pid {first.pid}" in r.stdout
    _check_optuna_matches(cfg, planned=3)


def test_tracking_outage_mid_search_then_filled_in_on_rerun(smoke_cfg, tmp_path):
    store, port = tmp_path / "server", free_port()
    store.mkdir()
    uri = f"http://127.0.0.1:{port}"
    args = _args(smoke_cfg, "outage", f"tracking.uri={uri}", "search.num_samples=2", "search.max_concurrent=1",
                 "train.epochs=3", "search.grace_period=3")
    cfg = settings.load(SMOKE, args)
    server = start_mlflow_server(f"sqlite:///{store / 'mlflow.db'}", port, store / "artifacts")
    search = _start("search.tune", args)
    try:
        def first_trial_done():
            return any(r.info.status == "FINISHED" for r in _tracker(cfg).find("trial"))

        deadline = time.time() + 300
        while not first_trial_done():
            assert time.time() < deadline and search.poll() is None, "no trial finished while MLflow was up"
            time.sleep(0.5)
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # the tracking server goes away mid-search
    out, _ = search.communicate(timeout=600)
    assert search.returncode == 0, out[-3000:]
    assert "the search goes on without it" in out and "top 2 of 2 trials" in out
    assert (Path(cfg.run.dir) / "outage" / "best_config.yaml").is_file()

    server = start_mlflow_server(f"sqlite:///{store / 'mlflow.db'}", port, store / "artifacts")
    try:
        r = subprocess.run([sys.executable, "-m", "search.tune", "--config", str(SMOKE), *args], cwd=ROOT,
                           env={**os.environ, "RAY_ADDRESS": "local"}, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        tracker = _tracker(cfg)
        trials = [t for t in tracker.find("trial") if t.info.status == "FINISHED"]
        assert len(trials) == 2
        for t in trials:
            assert _steps(tracker, t.info.run_id) == [1, 2, 3]
            assert "backbone" in t.data.params
        assert [p.info.status for p in tracker.find("search")] == ["FINISHED"]
    finally:
        os.killpg(server.pid, signal.SIGKILL)
