"""Each trial of a Tune experiment as an MLflow child run, found again after a restart and never logged twice.

A study's trials are children of its search run (started here, with the search's settings as params); a
finalize's trials are its folds, children of the finalize run, named and keyed by fold. A run is found again by
its key tag, so a resumed search continues its trials' runs, and an epoch already in a run is not logged again.
:mod:`search.tracking.callback` writes through this as Tune reports; :mod:`search.tracking.reconcile` fills in
from Tune's records what MLflow missed.
"""

from __future__ import annotations

import math
import time

import pandas as pd
import yaml

from maskclf import config as config_mod
from maskclf.config import Config
from search.cluster.experiment import trial_config
from search.tracking import KEY_TAG, Tracker, run_name, trial_params

SHOWN = ("val_f1", "val_loss", "train_loss", "val_acc", "mask_acc", "gender_acc", "age_acc", "f1_lt30", "f1_30_59",
         "f1_ge60", "lr", "epoch_time", "images_per_s", "loader_wait")


class TrialRuns:
    """The MLflow runs of one experiment's trials: under the search run it starts (a study), or under ``parent``
    (a finalize run, whose trials are folds: ``folds=True`` names and keys them by fold).

    ``indexed``: the runs under the parent are read in one query and the index kept up to date (what the writer
    thread uses); otherwise each new trial asks MLflow for its run."""

    def __init__(self, uri: str, cfg: Config, dataset_summary: dict | None = None, *, parent: str | None = None,
                 folds: bool = False, warm_start: list[dict] | None = None, indexed: bool = True):
        self.uri, self.cfg, self.summary = uri, cfg, dataset_summary or {}
        self.warm_start = list(warm_start or [])  # trials of earlier studies the study started from
        self.parent: str | None = parent
        self.kind = "fold" if folds else "trial"
        self.folds, self.indexed = folds, indexed
        self.runs: dict[str, str] = {}  # Tune trial id -> run
        self.logged: dict[str, set[int]] = {}  # epochs already in each run: a resume never logs one twice
        self._index: dict[str, str] | None = None  # key -> run of the runs under the parent, read once
        self._tracker: Tracker | None = None

    def __getstate__(self):  # Tune pickles its callbacks with the experiment; an MLflow client does not travel
        return {**self.__dict__, "_tracker": None}

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.uri, self.cfg.run.study)
        return self._tracker

    def search_run(self) -> str:
        """The parent run: ``parent``, or the search run, started (with the study's settings) on first use."""
        if self.parent is None:
            s = self.cfg.search
            params = {"num_samples": s.num_samples, "max_concurrent": s.max_concurrent,
                      "max_epochs": self.cfg.train.epochs, "grace_period": s.grace_period,
                      "reduction_factor": s.reduction_factor, "seed": s.seed, "searcher": f"optuna-{s.sampler}",
                      "scheduler": s.scheduler, "budget_epochs": s.budget_epochs, "cpus_per_trial": s.cpus_per_trial,
                      "gpus_per_trial": s.gpus_per_trial, **{f"data.{k}": v for k, v in self.summary.items()},
                      **{f"space.{k}": yaml.safe_dump(v, default_flow_style=True).strip() for k, v in s.space.items()}}
            if self.warm_start:
                params.update(warm_start=s.warm_start, warm_start_trials=len(self.warm_start))
            self.parent = self.tracker.start("search", f"search · {self.cfg.run.study}", params=params)
            self.tracker.log_text(self.parent, yaml.safe_dump(config_mod.to_dict(self.cfg), sort_keys=False),
                                  "study_config.yaml")
            if self.warm_start:  # which trials of which studies TPE started from
                rows = [{"study": t["study"], "trial": t["trial"], "value": t["value"], **t["params"]}
                        for t in self.warm_start]
                self.tracker.log_text(self.parent, pd.DataFrame(rows).to_csv(index=False), "warm_start.csv")
        return self.parent

    def key(self, trial_id: str, config: dict) -> str:
        """What finds a trial's run again: its fold (a finalize) or its Tune trial id (a study)."""
        return str(config["folds.fold"]) if self.folds else trial_id

    def known(self) -> dict[str, str]:
        """Key -> run of the runs already under the parent run (one query, then kept up to date)."""
        if self._index is None:
            self._index = {r.data.tags.get(KEY_TAG): r.info.run_id
                           for r in self.tracker.find(self.kind, parent=self.search_run())}
        return self._index

    def run_of(self, trial_id: str, config: dict) -> str:
        """The trial's run: the one a resumed search or finalize finds by its key, else a new one."""
        if trial_id in self.runs:
            return self.runs[trial_id]
        key = self.key(trial_id, config)
        if self.indexed:
            run = self.known().get(key)
        else:  # a query per trial, and one more for its number: both grow with the study
            found = self.tracker.find(self.kind, key=key, parent=self.search_run())
            run = found[0].info.run_id if found else None
        if run:
            self.runs[trial_id] = run
            if not self.tracker.client.get_run(run).data.params:  # made just before an outage took the rest
                self.tracker.log_params(run, {**trial_params(trial_config(self.cfg, config)), "trial_id": trial_id})
            self.logged[run] = {m.step for m in self.tracker.client.get_metric_history(run, "val_f1")}
            return run
        cfg = trial_config(self.cfg, config)
        if self.folds:
            name = run_name(cfg, f"fold {key} ·")
        else:
            number = (len(self.known()) if self.indexed
                      else len(self.tracker.find(self.kind, parent=self.search_run()))) + 1
            name = run_name(cfg, f"#{number}")
        run = self.tracker.start(self.kind, name, key=key, parent=self.search_run(),
                                 params={**trial_params(cfg), "trial_id": trial_id}, reuse=False)
        self.runs[trial_id] = run
        if self._index is not None:
            self._index[key] = run
        return run

    def log_epoch(self, run: str, result: dict) -> None:
        """One epoch's metrics, unless the run has that epoch already."""
        epoch = int(result.get("epoch", 0))
        done = self.logged.setdefault(run, set())
        if epoch not in done:
            self.tracker.log_metrics(run, {k: result[k] for k in SHOWN if k in result}, step=epoch)
            done.add(epoch)

    def log_epochs(self, run: str, results: list[dict]) -> None:
        """The epochs of ``results`` that the run does not have yet, in one request."""
        from mlflow.entities import Metric

        done, now = self.logged.setdefault(run, set()), int(time.time() * 1000)
        new = {int(r.get("epoch", 0)): r for r in results if int(r.get("epoch", 0)) not in done}
        items = [Metric(k, float(r[k]), now, epoch) for epoch, r in new.items() for k in SHOWN
                 if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) and math.isfinite(r[k])]
        for i in range(0, len(items), 1000):  # MLflow takes at most 1000 metrics per batch
            self.tracker.client.log_batch(run, metrics=items[i:i + 1000])
        done.update(new)
