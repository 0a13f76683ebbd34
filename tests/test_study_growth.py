"""A finished smoke study extended from 2 to 4 trials, then a new study warm-started from it: a real local
Ray, real SQLite MLflow and Optuna databases."""

from __future__ import annotations

from pathlib import Path


from maskclf import config
from search.study import optuna_study
from search import tune as tune_mod
from search.tracking import Tracker, tracking_uri
from tests.faults import _check_optuna_matches, _optuna_trials, _steps


def test_extend_a_finished_study_then_warm_start_a_new_one_from_it(ray_local, smoke_cfg, capsys):
    cfg = config.apply(smoke_cfg, {"train.epochs": 2, "search.grace_period": 1})
    tune_mod.run(cfg)
    more = config.apply(cfg, {"search.num_samples": 4})
    table = tune_mod.run(more)
    out = capsys.readouterr().out
    assert "extending study 'smoke': 2 trials so far, 2 more" in out and "[4/4 done] trial" in out
    assert len(table) == 4 and len(Path(cfg.run.dir, "smoke", "trials.csv").read_text().splitlines()) == 5

    tracker = Tracker(tracking_uri(cfg), "smoke")
    searches = tracker.find("search")
    assert len(searches) == 1 and searches[0].info.status == "FINISHED"
    trials = tracker.find("trial", parent=searches[0].info.run_id)
    assert len(trials) == 4 and all(t.info.status == "FINISHED" for t in trials)
    assert sorted(t.info.run_name.split(" ")[0] for t in trials) == ["#1", "#2", "#3", "#4"]
    assert all(_steps(tracker, t.info.run_id)[0] == 1 for t in trials)
    _check_optuna_matches(more, planned=4)
    # TPE's second part saw the first: its trials come from the same Optuna study, numbered on
    assert [t.user_attrs["maskclf.part"] for t in _optuna_trials(more)] == ["smoke"] * 2 + ["smoke-part2"] * 2

    tune_mod.run(more)  # the same command again: nothing to add, nothing trained
    assert "extending" not in capsys.readouterr().out and len(_optuna_trials(more)) == 4

    warm = config.apply(cfg, {"run.study": "warm", "search.warm_start": "smoke", "search.num_samples": 2})
    tune_mod.run(warm)
    assert "warm start: 4 trial(s) of study 'smoke' taken over" in capsys.readouterr().out
    got = _optuna_trials(warm)
    assert [t.user_attrs.get(optuna_study.FROM_ATTR, "").split("#")[0] for t in got] == ["smoke"] * 4 + [""] * 2
    assert all(t.state.name == "COMPLETE" for t in got)
    search = Tracker(tracking_uri(warm), "warm").find("search")[0]
    assert search.data.params["warm_start"] == "smoke" and search.data.params["warm_start_trials"] == "4"
    assert len(search.data.params) > 4
    artifacts = {a.path for a in Tracker(tracking_uri(warm), "warm").client.list_artifacts(search.info.run_id)}
    assert "warm_start.csv" in artifacts
