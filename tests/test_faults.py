"""Faults: a killed driver, a killed trial worker, trials that cannot work, a refused study name.

Real processes and real signals, a real local Ray and a real SQLite MLflow store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from maskclf import config
from search import cluster, experiment
from search import tune as tune_mod
from search.tracking import Tracker, tracking_uri
from tests.conftest import free_port, start_mlflow_server

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "conf" / "smoke.yaml"


def _tracker(cfg) -> Tracker:
    return Tracker(tracking_uri(cfg), cfg.run.study)


def _steps(tracker: Tracker, run_id: str) -> list[int]:
    return [m.step for m in tracker.client.get_metric_history(run_id, "val_f1")]


def _args(cfg, study: str, *extra: str) -> list[str]:
    return [f"data.root={cfg.data.root}", f"run.dir={cfg.run.dir}", f"faces.cache_dir={cfg.faces.cache_dir}",
            f"run.study={study}", *extra]


def _start(module: str, args: list[str]) -> subprocess.Popen:
    # a session of its own, so the kill takes the driver's local Ray with it
    return subprocess.Popen([sys.executable, "-m", module, "--config", str(SMOKE), *args], cwd=ROOT,
                            env={**os.environ, "RAY_ADDRESS": "local", "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail("the command ended before it could be killed:\n" + proc.stdout.read()[-3000:])
            try:
                if ready():
                    break
            except Exception:  # the store may be mid-write; look again
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the moment to kill never came")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_driver_killed_mid_search_resumes_without_losing_or_repeating_work(smoke_cfg):
    args = _args(smoke_cfg, "killed", "search.num_samples=3", "search.max_concurrent=1", "train.epochs=6",
                 "search.grace_period=6")
    cfg = config.load(SMOKE, args)

    def one_done_and_next_started():
        runs = _tracker(cfg).find("trial")
        return any(r.info.status == "FINISHED" for r in runs) and any(r.info.status == "RUNNING" for r in runs)

    _kill_when(_start("search.tune", args), one_done_and_next_started)
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


def _hang_after_epoch_2(pid_file: Path):
    """The product's trainable, except that its first attempt stops after epoch 2 and waits to be killed."""
    def trainable(params, **kw):
        def hook(metrics):
            if metrics["epoch"] == 2 and not pid_file.exists():
                pid_file.write_text(str(os.getpid()))
                time.sleep(120)
        return experiment.train_trial(params, after_report=hook, **kw)
    return trainable


def _kill_hung_worker(pid_file: Path, before=None) -> threading.Thread:
    """SIGKILL the trial worker once it is waiting (after ``before()``), from a thread of this test."""
    def kill():
        deadline = time.time() + 300
        while not pid_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        if before is not None:
            before()
        os.kill(int(pid_file.read_text()), signal.SIGKILL)

    t = threading.Thread(target=kill, daemon=True)
    t.start()
    return t


def test_killed_trial_worker_is_retried_from_its_checkpoint(ray_local, smoke_cfg, tmp_path):
    cfg = config.apply(smoke_cfg, {"search.num_samples": 1, "run.study": "worker-killed", "train.epochs": 4,
                                   "search.grace_period": 4, "search.max_failures": 2})
    pid_file = tmp_path / "worker.pid"
    t = _kill_hung_worker(pid_file)
    table = tune_mod.run(cfg, trainable=_hang_after_epoch_2(pid_file))
    t.join(timeout=5)
    assert table.loc[0, "status"] == "done" and table.loc[0, "epochs"] == 4
    tracker = _tracker(cfg)
    (run,) = tracker.find("trial")
    assert run.data.tags.get("retried") == "yes"
    assert _steps(tracker, run.info.run_id) == [1, 2, 3, 4]


def test_corrupt_checkpoint_on_retry_starts_the_trial_over(ray_local, smoke_cfg, tmp_path):
    import json

    cfg = config.apply(smoke_cfg, {"search.num_samples": 1, "run.study": "corrupt", "train.epochs": 3,
                                   "search.grace_period": 3, "search.max_failures": 1})
    pid_file = tmp_path / "worker.pid"
    trial_root = Path(cluster.storage_path(cfg)) / "corrupt"

    def corrupt():
        for state in trial_root.glob("*/checkpoint_*/state.pt"):
            state.write_bytes(b"not a checkpoint")

    t = _kill_hung_worker(pid_file, before=corrupt)
    table = tune_mod.run(cfg, trainable=_hang_after_epoch_2(pid_file))
    t.join(timeout=5)
    assert table.loc[0, "status"] == "done" and table.loc[0, "epochs"] == 3
    (results,) = list(trial_root.glob("*/result.json"))
    epochs = [json.loads(line)["epoch"] for line in results.read_text().splitlines() if line.strip()]
    assert epochs == [1, 2, 1, 2, 3]  # the unreadable checkpoint was dropped and training started over


def test_trials_that_cannot_work_end_as_errors_and_the_search_goes_on(ray_local, smoke_cfg):
    # lr 1e9 makes the loss NaN on the first epoch: a configuration that cannot work
    cfg = config.apply(smoke_cfg, {"run.study": "doomed", "search.num_samples": 4, "search.max_failures": 0,
                                   "search.space": {"train.lr": {"choice": [1.0e-2, 1.0e+9]},
                                                    "train.optimizer": {"choice": ["sgd"]}}})
    table = tune_mod.run(cfg)
    errors = table[table["status"] == "error"]
    assert len(table) == 4 and 0 < len(errors) < 4
    assert errors["error"].str.contains("loss is nan").all()
    assert (table[table["status"] != "error"]["train.lr"] == 1e-2).all()
    from search.report import top_table

    assert top_table(table).count("failed: ") == len(errors)
    tracker = _tracker(cfg)
    failed = [r for r in tracker.find("trial") if r.info.status == "FAILED"]
    assert len(failed) == len(errors) and all("loss is nan" in r.data.tags["error"] for r in failed)
    assert config.load(Path(cfg.run.dir) / "doomed" / "best_config.yaml").train.lr == 1e-2


def test_driver_killed_during_finalize_keeps_finished_folds(smoke_cfg):
    best = Path(smoke_cfg.run.dir) / "smoke" / "best_config.yaml"
    config.save(config.apply(smoke_cfg, {"train.epochs": 3, "search.cpus_per_trial": 1}), best)
    args = _args(smoke_cfg, "smoke")
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
    assert "continuing the interrupted finalize" in r.stdout
    for name in done:
        assert f"{name.replace('fold', 'fold ')}: checkpoint complete, not retrained" in r.stdout
        assert (final / "folds" / name / "checkpoint" / "state.pt").stat().st_mtime_ns == stamps[name]
    assert (final / "metrics.json").is_file() and (final / "submission.csv").is_file()


def test_a_finished_study_is_never_reused_with_another_config(smoke_cfg, tmp_path):
    study = Path(smoke_cfg.run.dir) / "taken"
    study.mkdir(parents=True)
    config.save(config.apply(smoke_cfg, {"run.study": "taken"}), study / "study.yaml")
    (study / "best_config.yaml").write_text("kept")
    r = subprocess.run([sys.executable, "-m", "search.tune", "--config", str(SMOKE),
                        *_args(smoke_cfg, "taken", "train.lr=0.005")], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert "run.study=NAME" in r.stderr and "train.lr" in r.stderr and "Traceback" not in r.stderr
    assert (study / "best_config.yaml").read_text() == "kept"


def test_tracking_outage_mid_search_then_filled_in_on_rerun(smoke_cfg, tmp_path):
    store, port = tmp_path / "server", free_port()
    store.mkdir()
    uri = f"http://127.0.0.1:{port}"
    args = _args(smoke_cfg, "outage", f"tracking.uri={uri}", "search.num_samples=3", "search.max_concurrent=1",
                 "train.epochs=4", "search.grace_period=4")
    cfg = config.load(SMOKE, args)
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
    assert "the search goes on without it" in out and "top 3 of 3 trials" in out
    assert (Path(cfg.run.dir) / "outage" / "best_config.yaml").is_file()

    server = start_mlflow_server(f"sqlite:///{store / 'mlflow.db'}", port, store / "artifacts")
    try:
        r = subprocess.run([sys.executable, "-m", "search.tune", "--config", str(SMOKE), *args], cwd=ROOT,
                           env={**os.environ, "RAY_ADDRESS": "local"}, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        tracker = _tracker(cfg)
        trials = [t for t in tracker.find("trial") if t.info.status == "FINISHED"]
        assert len(trials) == 3
        for t in trials:
            assert _steps(tracker, t.info.run_id) == [1, 2, 3, 4]
            assert "backbone" in t.data.params
        assert [p.info.status for p in tracker.find("search")] == ["FINISHED"]
    finally:
        os.killpg(server.pid, signal.SIGKILL)
