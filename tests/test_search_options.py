"""search.sampler, search.scheduler and search.budget_epochs: validation, and real smoke studies on a local Ray."""

from __future__ import annotations

import subprocess
import sys

import pytest

from maskclf import config
from maskclf.errors import InputError
from search.cluster import experiment
from search import study as study_mod
from search import tune as tune_mod
from search.study import settings
from tests.conftest import ROOT, SMOKE


@pytest.mark.parametrize("key, value, expected", [
    ("search.sampler", "grid", "search.sampler: unknown 'grid'"),
    ("search.scheduler", "hyperband", "search.scheduler: unknown 'hyperband'"),
    ("search.budget_epochs", -1, "search.budget_epochs must be >= 0"),
])
def test_bad_search_option_is_an_input_error_naming_the_key(key, value, expected):
    with pytest.raises(InputError) as e:
        settings.load(SMOKE, {key: value})
    assert expected in e.value.message()


def test_unknown_sampler_and_scheduler_list_the_valid_names():
    with pytest.raises(InputError) as e:
        settings.load(SMOKE, {"search.sampler": "tpee", "search.scheduler": "fif"})
    msg = e.value.message()
    assert "(closest: tpe); choose from [random, tpe]" in msg
    assert "(closest: fifo); choose from [asha, fifo]" in msg


@pytest.mark.integration
def test_bad_search_option_on_the_command_line_exits_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "search.tune", "--config", str(SMOKE), f"run.dir={tmp_path}",
                        "search.scheduler=median"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "search.scheduler: unknown 'median'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "tune").exists()


def test_epoch_budget_counts_each_trials_highest_epoch():
    stop = experiment.epoch_budget(6, {"a": 2})
    assert not stop("b", {"epoch": 1}) and not stop("b", {"epoch": 3})  # 2 + 3
    assert not stop("b", {"epoch": 3})  # a repeated result (a retried trial) is not counted twice
    assert not stop.stop_all()
    assert stop("c", {"epoch": 1}) and stop.stop_all()


def _total_epochs(table) -> int:
    return int(table["epochs"].fillna(0).sum())


@pytest.mark.integration
def test_fifo_with_random_sampler_trains_every_trial_to_the_end(ray_local, smoke_cfg):
    cfg = config.apply(smoke_cfg, {"run.study": "fifo", "search.scheduler": "fifo", "search.sampler": "random",
                                   "search.num_samples": 3, "train.epochs": 3, "search.grace_period": 1})
    table = tune_mod.run(cfg)
    assert len(table) == 3
    assert list(table["epochs"]) == [3, 3, 3] and set(table["status"]) == {"done"}


@pytest.mark.integration
def test_budget_stops_the_study_and_a_rerun_trains_no_more(ray_local, smoke_cfg, recwarn):
    from search.study.optuna_study import open_study, storage_url
    from search.tracking import Tracker, tracking_uri

    budget, concurrent = 7, smoke_cfg.search.max_concurrent
    cfg = config.apply(smoke_cfg, {"run.study": "budget", "search.num_samples": 20, "train.epochs": 3,
                                   "search.grace_period": 1, "search.budget_epochs": budget})
    table = tune_mod.run(cfg)
    spent = _total_epochs(table)
    # the trials still running when the budget is reached may each add the epoch they were training
    assert budget <= spent <= budget + concurrent - 1
    assert (table["epochs"] > 0).sum() < 20 and table["train.lr"].notna().all()
    # the trials the budget stopped mid-epoch end in Optuna and MLflow too: nothing is left running
    states = [t.state.name for t in open_study(storage_url(cfg), cfg.run.study, create=False).trials]
    assert states and "RUNNING" not in states
    tracker = Tracker(tracking_uri(cfg), cfg.run.study)
    assert {r.info.status for r in tracker.client.search_runs([tracker.experiment_id])} == {"FINISHED"}
    assert not [w for w in recwarn if "MLflow at" in str(w.message)]
    again = tune_mod.run(cfg)  # the study is restored with the epochs it already trained
    assert _total_epochs(again) == spent


def test_trials_table_leaves_out_trials_a_budget_stopped_before_they_started():
    import pandas as pd
    from types import SimpleNamespace

    from search.tracking import report

    cfg = settings.load(SMOKE)
    ran = SimpleNamespace(config={"train.lr": 0.01}, metrics={"trial_id": "a1", "epoch": 2, "val_f1": 0.3},
                          metrics_dataframe=pd.DataFrame({"epoch": [1, 2], "val_f1": [0.2, 0.3]}), error=None,
                          path="/x/train_trial_a1_00000")
    never = SimpleNamespace(config=None, metrics={}, metrics_dataframe=None, error=None, path="/x/train_trial_b2_00001")
    table = report.trials_table([ran, never], cfg)
    assert table["trial"].tolist() == ["a1"] and table.loc[0, "best_val_f1"] == 0.3


def test_a_study_ignores_settings_its_sampler_and_scheduler_never_read(smoke_cfg):
    base = config.apply(smoke_cfg, {"run.study": "fifo-random", "search.sampler": "random",
                                    "search.scheduler": "fifo"})
    experiment.study_dir(base).mkdir(parents=True)
    config.save(base, experiment.study_dir(base) / "study.yaml")
    # ASHA's rungs and TPE's startup count do not change a fifo study with the random sampler
    study_mod.check_same_study(config.apply(base, {"search.grace_period": 3, "search.reduction_factor": 4,
                                                   "search.brackets": 2, "search.n_startup_trials": 7}))
    for key, value in [("search.scheduler", "asha"), ("search.sampler", "tpe"), ("train.lr", 0.05)]:
        with pytest.raises(InputError, match=key.replace(".", r"\.")):
            study_mod.check_same_study(config.apply(base, {key: value}))


def test_asha_grace_period_beyond_the_epochs_is_refused_before_the_search():
    from search.study import space

    cfg = settings.load(SMOKE, {"train.epochs": 2, "search.grace_period": 3})  # one training does not care
    with pytest.raises(InputError, match="search.grace_period=3 is more than train.epochs=2"):
        space.validate(cfg)
    space.validate(config.apply(cfg, {"search.scheduler": "fifo"}))
