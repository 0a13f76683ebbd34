"""``python -m search.tune``: Ray Tune + OptunaSearch (TPE) + ASHA over a declared space, every trial in MLflow.

The data is validated and face-cropped once, on the driver, before any trial starts; the
crops reach every trial through Ray's object store, so no trial decodes a JPEG or runs
face detection, and a trial on another node needs no shared filesystem.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Callable

from maskclf import config as config_mod
from maskclf.config import Config
from maskclf.errors import InputError, RunFailed, cli
from search import cluster
from search.cluster import crops, experiment
from search.study import optuna_study
from search.study import space as space_mod
from search import study as study_mod
from search.cluster.experiment import METRIC, MODE, epoch_budget, study_dir
from search.study import settings
from search.tracking import Tracker, tracking_uri

def _search_args(cfg: Config, part: str, record: dict | None = None) -> dict:
    """The search's side of one part's experiment: Optuna's TPE (or random) sampler over the space, on the
    study's Optuna database, ASHA, the budget."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from search.study.optuna_search import searcher as study_searcher

    s = cfg.search
    # a warm-started study's taken-over trials stand in for the random start-up: TPE models them at once
    startup = 0 if (record if record is not None else study_mod.read(cfg)).get("warm_start") else s.n_startup_trials
    sampler = optuna.samplers.TPESampler(seed=s.seed, multivariate=True, constant_liar=True,
                                         n_startup_trials=startup)
    if s.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=s.seed)
    searcher = study_searcher(cfg, part, sampler, space_mod.DefineByRun(s.space), METRIC, MODE)
    scheduler = ASHAScheduler(time_attr="epoch", metric=METRIC, mode=MODE, max_t=cfg.train.epochs,
                              grace_period=s.grace_period, reduction_factor=s.reduction_factor, brackets=s.brackets)
    if s.scheduler == "fifo":  # no early stopping: every trial trains train.epochs
        scheduler = FIFOScheduler()
    return {"tune_config": tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=s.num_samples,
                                           max_concurrent_trials=s.max_concurrent, reuse_actors=s.reuse_actors),
            # the pickled stopper of a restored study has forgotten the epochs trained so far
            "stop": (lambda trained: epoch_budget(s.budget_epochs, trained)) if s.budget_epochs else None,
            "stopped": lambda: optuna_study.end_stopped(cfg, part)}


def run(cfg: Config, *, trainable: Callable | None = None, log: Callable[[str], None] = print):
    """Run (resume, or extend) the study of ``cfg``; returns the summary table of its trials (a DataFrame)."""
    cfg = space_mod.for_task(cfg, log)
    space_mod.validate(cfg)
    study_mod.check_same_study(cfg, log)
    with study_mod.driver_lock(cfg, "python -m search.tune", log):  # one driver per study
        tracker = Tracker(tracking_uri(cfg), cfg.run.study)  # a bad store fails here, before any data or Ray work
        return _run(cfg, trainable, tracker, log)


def _run(cfg: Config, trainable: Callable | None, tracker: Tracker, log: Callable[[str], None]):
    from maskclf import dataset

    study, url = study_dir(cfg), optuna_study.storage_url(cfg)
    new = not (study / "study.yaml").is_file()
    record = study_mod.read(cfg)
    if not new and record["optuna"] and record["optuna"] != url and not optuna_study.has_study(url, cfg.run.study):
        raise InputError(f"study '{cfg.run.study}' keeps its Optuna trials in {record['optuna']}, and {url} has "
                         f"no such study; set tracking.optuna_storage={record['optuna']}")
    optuna_study.open_study(url, cfg.run.study)  # a bad Optuna storage fails here too
    warm = optuna_study.warm_trials(cfg, log) if new and cfg.search.warm_start else []
    joined = cluster.connect(cfg, log)
    cluster.check_resources(cfg, wait_s=600 if joined else 0, log=log)
    cluster.check_storage(cfg)  # a cluster that cannot run the study is refused before any data work
    prep = experiment.object_store_ready(dataset.prepare(cfg, log=log, run_shards=crops.runner(cfg, log)))
    if new:
        study.mkdir(parents=True, exist_ok=True)
        if warm:
            optuna_study.add_warm_trials(cfg, warm)
        record.update(optuna=url, warm_start=[{k: t[k] for k in ("study", "trial", "value", "params")} for t in warm])
        study_mod.write(cfg, record)
        config_mod.save(cfg, study / "study.yaml")  # last: its presence marks a started study
    return search(cfg, prep, trainable=trainable, summary=_summary(prep), log=log, tracker=tracker, record=record)


def _ran(results: list) -> list:
    return [r for r in results if r.config is not None or r.metrics]  # not: never started (an epoch budget)


def _fit_part(cfg: Config, part: dict, prep, trainable: Callable | None, callbacks: list, before: int,
              record: dict, log: Callable[[str], None]) -> list:
    """One part's Tune experiment to its end (created, or restored where it stopped); its trials' results.
    ``before``: the trials of the parts before it."""
    from search.cluster.progress import LiveTable

    part_cfg = study_mod.part_config(cfg, part)
    return list(experiment.fit(part_cfg, part["name"], experiment.trainable(cfg, prep, trainable),
                               callbacks=[*callbacks, LiveTable(part_cfg, before=before)], log=log,
                               **_search_args(part_cfg, part["name"], record)))


def search(cfg: Config, prep, *, trainable: Callable | None = None, summary: dict | None = None,
           callbacks: list = (), log: Callable[[str], None] = print, tracker: Tracker | None = None,
           record: dict | None = None):
    """The study's Tune experiments on a connected Ray, from its prepared data to the best config, the
    trials table, the plots and the closed MLflow search run (``callbacks`` are added to the study's own).

    Each recorded part runs (or resumes) in turn; when ``cfg`` asks for more trials or epochs than they
    planned, a part is added for the rest. ``tracker`` and ``record`` (the study's record): as the command
    opened and read them, else opened and read here."""
    from search.tracking import report as report_mod
    from search.tracking.callback import MlflowTrials

    # MLflow's HTTP client retries a lost server for minutes per call; a search should not stall on it
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    tracker = tracker or Tracker(tracking_uri(cfg), cfg.run.study)
    record = record if record is not None else study_mod.read(cfg)
    callback = MlflowTrials(tracker.uri, cfg, dataset_summary=summary, warm_start=record.get("warm_start"))
    results: list = []
    for part in record["parts"]:
        results += _fit_part(cfg, part, prep, trainable, [callback, *callbacks], len(_ran(results)), record, log)
    ran = _ran(results)
    more = study_mod.extension(cfg, record["parts"], len(ran), sum(int((r.metrics or {}).get("epoch") or 0) for r in ran),
                               log)
    if more is not None:
        record["parts"].append(more)
        study_mod.write(cfg, record)  # before it runs: a killed extension resumes as this part
        results += _fit_part(cfg, more, prep, trainable, [callback, *callbacks], len(ran), record, log)
    table = report_mod.trials_table(results, cfg)
    if table.empty or table["best_val_f1"].isna().all():
        error = no_result(results, cfg)
        callback.sync(results)  # every trial run ends FAILED with its error, and so does the search run
        callback.fail_search(str(error))
        raise error
    study = study_dir(cfg)
    study.mkdir(parents=True, exist_ok=True)
    best_path = config_mod.save(report_mod.best_config(table, results, cfg), study / "best_config.yaml")
    table.to_csv(study / "trials.csv", index=False)
    callback.sync(results)
    callback.close_search(table, best_path, plots=_plots(table, results, cfg, study, log))
    log(report_mod.top_table(table))
    log(f"best config: {best_path}")
    log(f"browse the results: {tracker.ui_command()}")
    log(f"browse the Optuna study: {optuna_study.dashboard_command(cfg)}")
    return table


# Trial errors that come from what the user asked for (a missing file, a value a backbone refuses, a
# learning rate that diverges), not from the machine or the code: every trial failing so is exit code 2.
_INPUT_ERRORS = (InputError, OSError, ValueError, FloatingPointError)


def no_result(results, cfg: Config) -> Exception:
    """The error to end a study with when no trial reported a result: the first trial's error in one
    line, with the file that holds its whole traceback."""
    failed = [r for r in results if r.error is not None]
    if not failed:
        return RunFailed(f"no trial of study '{cfg.run.study}' reported a result")
    first = failed[0]
    text = str(first.error).strip().splitlines()
    reason = (text[-1] if text else type(first.error).__name__)[:300]
    where = Path(first.path or "", "error.txt") if first.path else None
    msg = (f"all {len(failed)} trial(s) of study '{cfg.run.study}' failed; the first: {reason}"
           + (f" (full error: {where})" if where is not None and where.is_file() else ""))
    return InputError(msg) if isinstance(first.error, _INPUT_ERRORS) else RunFailed(msg)


def _plots(table, results, cfg: Config, study: Path, log: Callable[[str], None]) -> list[Path]:
    """The study's plots under ``<study>/plots``; they only show results, so any failure is a warning."""
    from search.tracking import plots
    from search.tracking import report as report_mod

    try:
        return plots.write_all(table, cfg.search.space, report_mod.curves(results), study / "plots", log=log,
                               order=report_mod.start_order(results))
    except Exception as e:
        warnings.warn(f"the study's plots were not drawn: {e}")
        return []


def _summary(prep) -> dict:
    from maskclf import data

    s = data.summary(prep.train)
    s["faces_found"] = int(prep.train_crops.found.sum())
    s["faces_fallback"] = int((~prep.train_crops.found).sum())
    s.update({f"faces_{name}": n for name, n in prep.train_crops.counts().items()})  # what cut each crop
    return s


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m search.tune",
        description="Search hyperparameters with Ray Tune + Optuna (TPE) + ASHA; every trial logged to MLflow. "
                    "Run the same command again to resume the study.",
    )
    p.add_argument("--config", default=str(config_mod.DEFAULT_CONFIG), help="YAML config (default: %(default)s)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. run.study=s2")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = settings.load(args.config, args.overrides)
    run(cfg, log=lambda s: print(s, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
