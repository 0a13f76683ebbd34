"""Faults inside a search: a killed trial worker, a corrupt checkpoint, trials that cannot work, a refused study name.

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

import pytest

from maskclf import config
from search import cluster
from search.cluster import experiment
from search import tune as tune_mod
from search.study import settings
from search.tracking import Tracker
from tests.faults import ROOT, SMOKE, _args, _steps, _tracker


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
    from search.tracking.report import top_table

    assert top_table(table).count("failed: ") == len(errors)
    tracker = _tracker(cfg)
    failed = [r for r in tracker.find("trial") if r.info.status == "FAILED"]
    assert len(failed) == len(errors) and all("loss is nan" in r.data.tags["error"] for r in failed)
    assert settings.load(Path(cfg.run.dir) / "doomed" / "best_config.yaml").train.lr == 1e-2


@pytest.mark.integration
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


_OPEN_STORE = """
import sys, time
from search.tracking import Tracker
while time.time() < float(sys.argv[2]):
    time.sleep(0.01)
Tracker(sys.argv[1], "racing")
print("opened")
"""


@pytest.mark.integration
def test_processes_that_open_a_new_sqlite_store_at_once_all_get_it(tmp_path):
    """A search, its poller and a second command opening a store that does not exist yet: each would create
    its tables and all but one would fail ("table ... already exists") if they did not take turns."""
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    start = str(time.time() + 15)  # every process has imported MLflow by then, so they open the store together
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_STORE, uri, start], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outs]
    assert all(out.strip() == "opened" for out, _ in outs)
    assert len(Tracker(uri, "racing").client.search_experiments(filter_string="name = 'racing'")) == 1
