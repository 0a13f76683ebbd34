"""Studies that last, without Ray: extending a study's plan, choosing warm-start trials from a real Optuna
database, and the one-driver lock between real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from maskclf import config
from maskclf.errors import InputError
from search.study import optuna_study, space
from search import study as study_mod
from search.cluster.experiment import study_dir
from search.study import settings
from tests.conftest import ROOT, SMOKE


def _cfg(tmp_path: Path, **values) -> config.Config:
    return settings.load(SMOKE, {"run.dir": str(tmp_path / "runs"), **values})


def test_extension_plans_the_trials_and_epochs_asked_for_and_nothing_more(tmp_path):
    cfg = _cfg(tmp_path, **{"search.num_samples": 2})
    parts = study_mod.read(cfg)["parts"]
    assert parts == [{"name": "smoke", "samples": 2, "budget": 0, "seed": 0, "num_samples": 2, "budget_epochs": 0}]
    assert study_mod.extension(cfg, parts, started=2, spent=12, log=print) is None
    more = study_mod.extension(config.apply(cfg, {"search.num_samples": 5}), parts, started=2, spent=12, log=print)
    assert more == {"name": "smoke-part2", "samples": 5, "budget": 0, "seed": 1, "num_samples": 3, "budget_epochs": 0}
    # a study stopped by its epoch budget: a larger budget runs the trials it did not start
    budgeted = [dict(parts[0], samples=6, budget=10, num_samples=6, budget_epochs=10)]
    more = study_mod.extension(config.apply(cfg, {"search.num_samples": 6, "search.budget_epochs": 16}), budgeted,
                               started=3, spent=10, log=print)
    assert (more["num_samples"], more["budget_epochs"], more["budget"]) == (3, 6, 16)
    said = []
    assert study_mod.extension(config.apply(cfg, {"search.num_samples": 1}), parts, 2, 12, said.append) is None
    assert "removes none" in said[0]


def test_a_study_may_grow_but_not_change(tmp_path):
    cfg = _cfg(tmp_path)
    study_dir(cfg).mkdir(parents=True)
    config.save(cfg, study_dir(cfg) / "study.yaml")
    study_mod.check_same_study(config.apply(cfg, {"search.num_samples": 9, "search.budget_epochs": 40}))
    with pytest.raises(InputError, match=r"changed: train\.epochs"):
        study_mod.check_same_study(config.apply(cfg, {"train.epochs": 9}))


def _source_study(cfg: config.Config, name: str, trials: list[tuple[dict, float]]) -> None:
    """A finished study in ``cfg``'s run dir: its study.yaml and its Optuna trials."""
    src = config.apply(cfg, {"run.study": name})
    study_dir(src).mkdir(parents=True)
    config.save(src, study_dir(src) / "study.yaml")
    study = optuna_study.open_study(optuna_study.storage_url(src), name)
    dists = {k: space.distribution(v) for k, v in src.search.space.items()}
    for params, value in trials:
        study.add_trial(optuna.trial.create_trial(params=params, value=value, intermediate_values={1: value / 2},
                                                  distributions={k: dists[k] for k in params}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params=trials[0][0],
                                              distributions={k: dists[k] for k in trials[0][0]}))


def test_warm_start_takes_over_the_finished_trials_that_are_points_of_the_new_study(tmp_path):
    cfg = _cfg(tmp_path)
    inside = {"model.backbone": "test_resnet", "train.optimizer": "sgd", "train.lr": 0.01, "train.scheduler": "step"}
    _source_study(cfg, "old", [(inside, 0.3), ({**inside, "train.lr": 0.02}, 0.4)])
    # the new study searches a narrower lr range: the second trial is outside it
    new = config.apply(cfg, {"run.study": "new", "search.warm_start": "old",
                             "search.space": {**cfg.search.space, "train.lr": {"loguniform": [3e-3, 1.5e-2]}}})
    said = []
    warm = optuna_study.warm_trials(new, said.append)
    assert [(t["study"], t["trial"], t["value"]) for t in warm] == [("old", 0, 0.3)]
    assert warm[0]["params"] == inside and warm[0]["intermediate"] == {1: 0.15}
    assert "1 trial(s) of study 'old' taken over, 1 left out" in said[0] and "train.lr=0.02" in said[0]
    # what the new study fixes must match too: trials of 6 epochs are not points of an 8-epoch study
    assert optuna_study.warm_trials(config.apply(new, {"train.epochs": 8}), print) == []
    # a path works as well as a name, and the trials go into the new study as finished ones
    by_path = config.apply(new, {"search.warm_start": str(study_dir(config.apply(cfg, {"run.study": "old"})))})
    assert [t["trial"] for t in optuna_study.warm_trials(by_path, print)] == [0]
    optuna_study.add_warm_trials(new, warm)
    optuna_study.add_warm_trials(new, warm)  # a rerun after a kill adds nothing twice
    got = optuna_study.open_study(optuna_study.storage_url(new), "new").trials
    assert [(t.state.name, t.value, t.user_attrs[optuna_study.FROM_ATTR]) for t in got] == [("COMPLETE", 0.3, "old#0")]


def test_warm_start_from_studies_that_are_not_there_names_each(tmp_path):
    cfg = _cfg(tmp_path, **{"search.warm_start": "nope, /no/such/study"})
    with pytest.raises(InputError) as e:
        optuna_study.warm_trials(cfg, print)
    assert len(e.value.problems) == 2 and "'nope'" in e.value.problems[0] and "/no/such/study" in e.value.problems[1]


_HOLD = """
import sys, time
from search.study import settings
from search import study
cfg = settings.load(sys.argv[1], {"run.dir": sys.argv[2]})
with study.driver_lock(cfg, "python -m search.tune"):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.mark.integration
def test_one_driver_per_study_and_a_killed_drivers_lock_is_taken_over(tmp_path):
    cfg = _cfg(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(SMOKE), cfg.run.dir], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError) as e:
            with study_mod.driver_lock(cfg, "python -m search.finalize"):
                pass
        msg = e.value.message()
        assert f"pid {holder.pid} on " in msg and "since " in msg and "python -m search.tune" in msg
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    said = []
    t0 = time.time()
    with study_mod.driver_lock(cfg, "python -m search.tune", said.append):
        assert f"left by pid {holder.pid}" in said[0] and "no longer running" in said[0]
    assert time.time() - t0 < 5
    with study_mod.driver_lock(cfg, "python -m search.tune", said.append):  # a clean end leaves nothing to take over
        assert len(said) == 1


def test_a_warm_started_study_has_tpe_model_the_trials_it_took_over_instead_of_a_random_start_up(tmp_path):
    from search import tune as tune_mod

    cfg = _cfg(tmp_path, **{"search.n_startup_trials": 64, "run.study": "cold"})
    warm = config.apply(cfg, {"run.study": "warm"})
    study_mod.write(warm, {**study_mod.read(warm), "warm_start": [{"study": "cold", "trial": 0, "value": 0.5,
                                                                   "params": {}}]})
    startup = {name: tune_mod._search_args(c, name)["tune_config"].search_alg._sampler._n_startup_trials
               for name, c in (("cold", cfg), ("warm", warm))}
    assert startup == {"cold": 64, "warm": 0}


def test_trials_a_budget_stopped_mid_epoch_end_as_the_searcher_ends_stopped_trials(tmp_path):
    from optuna.trial import TrialState

    def running(cfg) -> optuna.Study:
        study = optuna_study.open_study(optuna_study.storage_url(cfg), cfg.run.study)
        for part, values in [("p1", [0.2, 0.3]), ("p1", [0.1, 0.2, 0.25, 0.3]), ("p1", []), ("p2", [0.4])]:
            t = study.ask()
            t.set_user_attr(optuna_study.PART_ATTR, part)
            for step, v in enumerate(values, 1):
                t.report(v, step)
        done = study.ask()
        done.set_user_attr(optuna_study.PART_ATTR, "p1")
        study.tell(done, 0.5)
        return study

    for stopped in ("pruned", "complete"):
        cfg = _cfg(tmp_path, **{"run.study": stopped, "search.stopped_trials": stopped, "train.epochs": 4})
        study = running(cfg)
        assert optuna_study.end_stopped(cfg, "p1") == [0, 1, 2]
        got = [(t.state, t.value) for t in study.trials]
        # Optuna keeps a pruned trial's last intermediate value as its value
        first = (TrialState.PRUNED if stopped == "pruned" else TrialState.COMPLETE, 0.3)
        # a trial that trained every epoch completes either way; one that reported nothing is pruned
        assert got == [first, (TrialState.COMPLETE, 0.3), (TrialState.PRUNED, None), (TrialState.RUNNING, None),
                       (TrialState.COMPLETE, 0.5)]
        assert optuna_study.end_stopped(cfg, "p1") == []  # nothing twice


def test_the_private_fields_of_optunasearch_that_the_study_searcher_relies_on_are_there():
    """search/study/optuna_search.py reads and rebuilds these when it pickles and restores a searcher: a Ray release
    that renames one would break every resumed study."""
    from ray.tune.search.optuna import OptunaSearch

    s = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0, 1)}, metric="m", mode="max",
                     storage=optuna.storages.InMemoryStorage(), study_name="fields")
    assert isinstance(s._ot_study, optuna.Study) and s._study_name == "fields"
    assert isinstance(s._ot_trials, dict) and isinstance(s._completed_trials, set)
    assert isinstance(s._storage, optuna.storages.BaseStorage)
