"""The one Tune experiment runner: a new experiment, then its restore with this run's callbacks and
stopper (the one use of Ray's private API), on a real local Ray with a trainable that needs no data."""

from __future__ import annotations

from pathlib import Path

import pytest

from maskclf import config
from search import experiment
from tests.conftest import SMOKE


def _steps(params: dict, *, marker: str) -> None:
    """Three reported steps; the trial with x=2 fails at its second step while ``marker`` exists."""
    from ray import tune

    for step in range(1, 4):
        if params["x"] == 2 and step == 2 and Path(marker).exists():
            Path(marker).unlink()
            raise RuntimeError("planned failure")
        tune.report({"epoch": step, "val_f1": params["x"] / 10 + step / 100})


def _recorder():
    from ray import tune

    class Recorder(tune.Callback):
        def __init__(self):
            self.results: list[tuple[int, int]] = []

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            self.results.append((trial.config["x"], result["epoch"]))

    return Recorder()


def test_restore_runs_the_errored_trial_with_this_runs_callbacks_and_stopper(ray_local, tmp_path):
    from ray import tune

    cfg = config.load(SMOKE, {"run.dir": str(tmp_path / "runs"), "search.max_failures": 0})
    marker = tmp_path / "fail-once"
    marker.write_text("")
    fn = tune.with_parameters(_steps, marker=str(marker))
    first, lines = _recorder(), []
    kw = {"param_space": {"x": tune.grid_search([1, 2])}, "tune_config": tune.TuneConfig(num_samples=1)}
    results = experiment.fit(cfg, "exp", fn, callbacks=[first], log=lines.append, **kw)
    assert sorted((r.config["x"], r.error is not None) for r in results) == [(1, False), (2, True)]
    assert sorted(first.results) == [(1, 1), (1, 2), (1, 3), (2, 1)] and not lines

    second, seen = _recorder(), []

    def stop(trained: dict[str, int]):
        seen.append(dict(trained))  # what the restored experiment had trained, for a budget to count on
        return None

    again = experiment.fit(cfg, "exp", fn, callbacks=[second], log=lines.append, stop=stop, **kw)
    assert lines and lines[0].startswith("resuming study 'exp'")
    assert all(r.error is None for r in again) and len(again) == 2
    # the errored trial ran again, reported to this run's callback, not to the one pickled with the experiment
    assert [x for x, _ in second.results] == [2, 2, 2] and len(first.results) == 4
    assert sorted(seen[0].values()) == [1, 3]


def test_use_run_config_names_the_ray_change_it_depends_on():
    class NotATuner:
        pass

    with pytest.raises(RuntimeError, match="_local_tuner"):
        experiment.use_run_config(NotATuner(), [])
