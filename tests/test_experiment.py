"""The one Tune experiment runner: a new experiment, then its restore with this run's callbacks and
stopper, and from a checkpoint Tune deleted, on a real local Ray with trainables that need no data."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.cluster import experiment
from search.study import settings
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

    cfg = settings.load(SMOKE, {"run.dir": str(tmp_path / "runs"), "search.max_failures": 0})
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


def _checkpointed(params: dict, *, marker: str) -> None:
    """Three steps, each reported with a checkpoint holding its number, resumed from the checkpoint Tune gives;
    trials with x > 1 fail at their second step while ``<marker><x>`` exists."""
    import tempfile

    from ray import tune

    start, checkpoint = 1, tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start = int((Path(d) / "step").read_text()) + 1
    for step in range(start, 4):
        planned = Path(f"{marker}{params['x']}")
        if step == 2 and planned.exists():
            planned.unlink()
            raise RuntimeError("planned failure")
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "step").write_text(str(step))
            tune.report({"epoch": step, "val_f1": step / 10}, checkpoint=tune.Checkpoint.from_directory(d))


def test_a_trial_whose_snapshot_names_a_deleted_checkpoint_resumes_from_the_one_kept(ray_local, tmp_path):
    from ray import tune

    cfg = settings.load(SMOKE, {"run.dir": str(tmp_path / "runs"), "search.max_failures": 0})
    marker = str(tmp_path / "fail-")
    for x in (2, 3):
        Path(f"{marker}{x}").write_text("")
    fn = tune.with_parameters(_checkpointed, marker=marker)
    kw = {"param_space": {"x": tune.grid_search([1, 2, 3])}, "tune_config": tune.TuneConfig(num_samples=1)}
    first = experiment.fit(cfg, "exp", fn, callbacks=[_recorder()], log=lambda s: None, **kw)
    trial_dirs = {r.config["x"]: Path(r.path) for r in first}
    assert sorted((r.config["x"], r.error is not None) for r in first) == [(1, False), (2, True), (3, True)]
    for x in (2, 3):  # each failed trial's snapshot names its one checkpoint, of step 1
        assert sorted(p.name for p in trial_dirs[x].glob("checkpoint_*")) == ["checkpoint_000000"]
    # what a driver killed between Tune's deleting an old checkpoint and its next snapshot leaves: x=2 has only
    # a newer checkpoint (step 2), x=3 none at all
    kept = trial_dirs[2] / "checkpoint_000001"
    (trial_dirs[2] / "checkpoint_000000").rename(kept)
    (kept / "step").write_text("2")
    for f in (trial_dirs[3] / "checkpoint_000000").iterdir():
        f.unlink()
    (trial_dirs[3] / "checkpoint_000000").rmdir()

    second = _recorder()
    again = experiment.fit(cfg, "exp", fn, callbacks=[second], log=lambda s: None, **kw)
    assert all(r.error is None for r in again) and len(again) == 3
    # x=2 went on from step 2's checkpoint, x=3 started over; Tune's iteration count follows the checkpoint used
    assert sorted(second.results) == [(2, 3), (3, 1), (3, 2), (3, 3)]
    iterations = {r.config["x"]: r.metrics["training_iteration"] for r in again}
    assert iterations[2] == 3


@pytest.mark.unit
def test_checkpoint_numbers_and_the_newest_kept_folder(tmp_path):
    from pyarrow.fs import LocalFileSystem

    assert experiment.checkpoint_index("/a/trial_1/checkpoint_000012") == 12
    assert experiment.checkpoint_index("/a/trial_1/checkpoint_000012/") == 12
    assert experiment.checkpoint_index("/a/trial_1/checkpoint_tmp") == -1
    assert experiment.checkpoint_index("/a/trial_1/params.json") == -1
    trial = tmp_path / "trial"
    for name in ("checkpoint_000002", "checkpoint_000010", "checkpoint_tmp12"):
        (trial / name).mkdir(parents=True)
    (trial / "checkpoint_000099").write_text("a file, not a checkpoint folder")
    fs = LocalFileSystem()
    assert experiment.newest_kept(fs, str(trial / "checkpoint_000001")) == str(trial / "checkpoint_000010")
    assert experiment.newest_kept(fs, str(tmp_path / "nowhere" / "checkpoint_000001")) is None
    (trial / "checkpoint_000002").rmdir()
    (trial / "checkpoint_000010").rmdir()
    assert experiment.newest_kept(fs, str(trial / "checkpoint_000001")) is None

