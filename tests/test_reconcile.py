"""The trials' MLflow runs on their own (search.tracking.trial_runs) and their filling-in from Tune's records after an
outage or a killed driver (search.tracking.reconcile), in a real MLflow SQLite store. Tune's results are stood in for by
plain records holding what a ResultGrid's results hold: metrics, config, error and the per-epoch history."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from maskclf import config
from search.study import settings
from search.tracking import reconcile
from search.tracking import KEY_TAG
from search.tracking.trial_runs import TrialRuns
from tests.conftest import SMOKE

POINT = {"train.lr": 0.01, "train.optimizer": "sgd"}


@pytest.fixture
def cfg(tmp_path):
    return settings.load(SMOKE, {"run.dir": str(tmp_path / "runs"), "train.epochs": 3, "search.grace_period": 3})


def _runs(cfg, tmp_path, **kw) -> TrialRuns:
    return TrialRuns(f"sqlite:///{tmp_path / 'mlflow.db'}", cfg, **kw)


def _result(trial_id, epochs, *, config=POINT, error=None):
    history = pd.DataFrame([{"epoch": e, "val_f1": e / 10, "train_loss": 1 / e} for e in range(1, epochs + 1)])
    return SimpleNamespace(metrics={"trial_id": trial_id, "epoch": epochs}, config=config, error=error,
                           metrics_dataframe=history if epochs else None)


def _steps(runs: TrialRuns, run: str) -> list[int]:
    return sorted(m.step for m in runs.tracker.client.get_metric_history(run, "val_f1"))


def test_a_trial_keeps_its_run_and_an_epoch_is_logged_once(cfg, tmp_path):
    runs = _runs(cfg, tmp_path)
    run = runs.run_of("t1", POINT)
    assert runs.run_of("t1", POINT) == run
    runs.log_epochs(run, [{"epoch": 1, "val_f1": 0.1}, {"epoch": 2, "val_f1": 0.2, "flag": True}])
    runs.log_epoch(run, {"epoch": 2, "val_f1": 0.9})  # already there: not logged again
    runs.log_epochs(run, [{"epoch": 2, "val_f1": 0.9}, {"epoch": 3, "val_f1": float("nan")}])
    assert _steps(runs, run) == [1, 2]  # a NaN is left out, not logged as a number
    history = {m.step: m.value for m in runs.tracker.client.get_metric_history(run, "val_f1")}
    assert history == {1: 0.1, 2: 0.2}

    # a resumed search (a new driver) finds the run by its key and knows the epochs it holds
    again = _runs(cfg, tmp_path, parent=runs.search_run())
    assert again.run_of("t1", POINT) == run and again.logged[run] == {1, 2}
    params = runs.tracker.client.get_run(run).data.params
    assert params["trial_id"] == "t1" and params["lr"] == "0.01"
    second = again.run_of("t2", POINT)
    assert second != run and runs.tracker.client.get_run(second).info.run_name.startswith("#2")


def test_fold_runs_are_named_and_found_by_fold(cfg, tmp_path):
    parent = _runs(cfg, tmp_path).tracker.start("finalize", "finalize · smoke", key="final")
    folds = _runs(cfg, tmp_path, parent=parent, folds=True)
    run = folds.run_of("a", {"folds.fold": 2})
    assert folds.tracker.client.get_run(run).data.tags[KEY_TAG] == "2"
    assert "fold 2" in folds.tracker.client.get_run(run).info.run_name
    # after a restart Tune gives the fold a new trial id: the same run
    assert _runs(cfg, tmp_path, parent=parent, folds=True).run_of("b", {"folds.fold": 2}) == run


def test_filling_in_gives_every_trial_its_run_epochs_and_end(cfg, tmp_path):
    runs = _runs(cfg, tmp_path)
    tracker = runs.tracker
    # what a tracking outage or a killed driver left: a run made just before the outage took its params, a run
    # with one of its epochs, a run Tune never saw (started after its last snapshot), a trial the budget stopped
    # before its first epoch, and a trial that failed
    bare = tracker.start("trial", "#1", key="done", parent=runs.search_run(), params={}, reuse=False)
    partial = runs.run_of("partial", POINT)
    runs.log_epoch(partial, {"epoch": 1, "val_f1": 0.1})
    lost = tracker.start("trial", "#3", key="lost", parent=runs.search_run(), params={}, reuse=False)
    unreported = tracker.start("trial", "#4", key="budget", parent=runs.search_run(), params={}, reuse=False)
    failed = runs.run_of("failed", POINT)
    results = [_result("done", 3), _result("partial", 3), _result("budget", 0, config=None),
               _result("failed", 1, error=RuntimeError("Traceback ...\nValueError: loss is NaN"))]

    reconcile.fill_in(_runs(cfg, tmp_path, parent=runs.search_run()), results, cfg)

    def run(r):
        return tracker.client.get_run(r)

    for r in (bare, partial):
        assert run(r).info.status == "FINISHED" and _steps(runs, r) == [1, 2, 3]
        assert run(r).data.tags["epochs"] == "3" and run(r).data.params["lr"] == "0.01"
    assert len(tracker.client.get_metric_history(partial, "val_f1")) == 3  # epoch 1 was not logged twice
    assert run(lost).info.status == "KILLED" and "rerun as a new trial" in run(lost).data.tags["outcome"]
    assert run(unreported).info.status == "FINISHED" and run(unreported).data.tags["epochs"] == "0"
    assert run(failed).info.status == "FAILED" and run(failed).data.tags["error"] == "ValueError: loss is NaN"
    assert len(tracker.find("trial", parent=runs.search_run())) == 5  # nothing made twice

    # a second filling-in (another rerun) changes nothing
    ended = {r: (run(r).info.status, run(r).info.end_time) for r in (bare, partial, lost, unreported, failed)}
    reconcile.fill_in(_runs(cfg, tmp_path, parent=runs.search_run()), results, cfg)
    assert {r: (run(r).info.status, run(r).info.end_time) for r in ended} == ended
    assert len(tracker.client.get_metric_history(bare, "val_f1")) == 3
