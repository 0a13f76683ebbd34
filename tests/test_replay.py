"""bench/replay.py: the learning-curve table, the nearest recorded point, and the replay trainable driving the
product's search on a real local Ray, with stopped trials told to Optuna as pruned or complete."""

from __future__ import annotations

import json
import sys
from collections import Counter

import pytest

from maskclf import config
from search.study import optuna_study
from search.study import settings
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import replay  # noqa: E402

SPACE = {
    "opt": {"choice": ["x", "y"]},
    "lr": {"loguniform": [1.0e-4, 1.0e-2]},
    "steps": {"int": [1, 3], "when": {"opt": ["y"]}},
}


def _row(pid: str, params: dict, seed: int = 0, f1=(0.1, 0.2, 0.3)) -> dict:
    return {"id": pid, "params": params, "seed": seed, "val_f1": list(f1), "val_loss": [1.0] * len(f1),
            "epoch_time": [2.0] * len(f1)}


def _table() -> replay.Table:
    rows = [_row("a", {"opt": "x", "lr": 1e-4}), _row("b", {"opt": "x", "lr": 1e-2}),
            _row("c", {"opt": "y", "lr": 1e-3, "steps": 1}), _row("c", {"opt": "y", "lr": 1e-3, "steps": 1}, seed=1,
                                                                  f1=(0.2, 0.3, 0.4)),
            _row("short", {"opt": "y", "lr": 1e-2, "steps": 3}, f1=(0.9,))]
    return replay.Table(rows, SPACE, epochs=3)


def test_nearest_point_matches_choices_first_then_the_log_scaled_distance_and_ties_go_to_the_first():
    t = _table()
    assert t.ids == ["a", "b", "c"]  # a run shorter than the epochs is not a point
    assert t.nearest({"opt": "x", "lr": 1e-4}) == 0 and t.nearest({"opt": "x", "lr": 3e-3}) == 1
    assert t.nearest({"opt": "x", "lr": 1e-3}) == 0  # halfway (log scale) between a and b: the first
    # one choice and a present-versus-absent condition outweigh the whole lr range
    assert t.nearest({"opt": "y", "lr": 1e-2, "steps": 3}) == 2
    assert t.nearest({"opt": "x", "lr": 1e-3 * 1.01}) == 1


def test_a_point_with_two_seeds_replays_one_picked_by_the_study_seed_and_the_params():
    t = _table()
    p = {"opt": "y", "lr": 1e-3, "steps": 1}
    picks = [t.run_for(p, salt)["seed"] for salt in range(20)]
    assert set(picks) == {0, 1}
    assert picks == [t.run_for(p, salt)["seed"] for salt in range(20)]
    assert t.run_for({"opt": "x", "lr": 1e-4}, 5)["id"] == "a"
    assert list(t.final()) == pytest.approx([0.3, 0.3, 0.35])
    with pytest.raises(ValueError):
        replay.Table([_row("a", {"opt": "x", "lr": 1e-4})], SPACE, epochs=4)


def test_the_committed_table_covers_the_demo_space_with_full_curves_and_second_seeds():
    cfg = settings.load(config.DEFAULT_CONFIG)
    rows = [json.loads(line) for line in replay.TABLE.read_text().splitlines() if line.strip()]
    t = replay.Table.load(cfg)
    assert len(t.ids) >= 150 and sum(len(r) > 1 for r in t.runs.values()) >= 40
    for r in rows:
        assert set(r["params"]) <= set(cfg.search.space) and {"model.head", "train.lr"} <= set(r["params"])
        assert len(r["val_f1"]) == len(r["epoch_time"]) == cfg.train.epochs
        assert all(0 <= v <= 1 for v in r["val_f1"]) and all(s > 0 for s in r["epoch_time"])
    for i, p in enumerate(t.params):  # every recorded point is its own nearest
        assert t.nearest(p) == i


def _study(stopped: str, run_dir):
    cfg = config.apply(settings.load(config.DEFAULT_CONFIG), {
        "run.dir": str(run_dir), "run.study": f"replay-{stopped}", "search.stopped_trials": stopped,
        "search.seed": 0, "search.num_samples": 40, "search.budget_epochs": 20, "search.reuse_actors": True})
    rows = replay.run_study(cfg, replay.Table.load(cfg), keep=run_dir)
    trials = optuna_study.open_study(optuna_study.storage_url(cfg), cfg.run.study, create=False).trials
    return cfg, rows, trials


@pytest.mark.integration
def test_stopped_trials_reach_optuna_as_pruned_with_their_epochs_or_as_complete(ray_local, tmp_path):
    import optuna

    cfg, rows, trials = _study("pruned", tmp_path / "pruned")
    assert len(rows) == 20  # the epoch budget, replayed through the real Tuner
    curves: dict[str, list[float]] = {}
    for trial, epoch, f1, _, _ in rows:
        curves.setdefault(trial, []).append(f1)
        assert epoch == len(curves[trial])
    # nothing is left running, the trials still training when the budget ended the study included
    assert all(t.state.is_finished() for t in trials)
    told = [t for t in trials if t.intermediate_values]
    assert Counter(tuple(round(v, 5) for v in t.intermediate_values.values()) for t in told) == \
        Counter(tuple(round(v, 5) for v in c) for c in curves.values())
    pruned = [t for t in told if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in told if t.state == optuna.trial.TrialState.COMPLETE]
    assert pruned and all(len(t.intermediate_values) < cfg.train.epochs for t in pruned)
    assert all(len(t.intermediate_values) == cfg.train.epochs and t.value == t.intermediate_values[cfg.train.epochs]
               for t in complete)

    _, rows_c, trials_c = _study("complete", tmp_path / "complete")
    assert all(t.state.is_finished() for t in trials_c)
    told_c = [t for t in trials_c if t.intermediate_values]
    assert told_c and all(t.state == optuna.trial.TrialState.COMPLETE for t in told_c)
    short = [t for t in told_c if len(t.intermediate_values) < cfg.train.epochs]
    assert short and all(t.value == list(t.intermediate_values.values())[-1] for t in short)
    # the same seed draws the same random start-up trials either way
    assert [t.params for t in trials_c[:4]] == [t.params for t in trials[:4]]
