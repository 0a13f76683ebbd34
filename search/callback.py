"""A Tune callback on the driver that mirrors every trial into MLflow as a child of the search run.

Logging from the driver means worker nodes never need to reach the tracking server,
and a resumed search finds its runs again by tag instead of logging them twice.
A tracking failure mid-search is a warning, never the end of the search.

With ``search.log_in_background`` (the default) the writes leave Tune's event loop: they go,
in order, to a writer thread (``search.writer``) that logs each trial's pending epochs in one batch, so a
slow tracking store delays MLflow, not the trials waiting for the driver to take their results.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from pathlib import Path

import pandas as pd
import yaml
from ray import tune

from maskclf import config as config_mod
from maskclf.config import Config
from search.experiment import trial_config
from search.progress import error_line, outcome
from search.tracking import KEY_TAG, Tracker, run_name, trial_params
from search.writer import Writer

SHOWN = ("val_f1", "val_loss", "train_loss", "val_acc", "mask_acc", "gender_acc", "age_acc", "f1_lt30", "f1_30_59",
         "f1_ge60", "lr", "epoch_time", "images_per_s", "loader_wait")


def _fold(trial) -> str:
    return str(trial.config["folds.fold"])


class MlflowTrials(tune.Callback):
    """Each trial of a Tune experiment as a child run: of the search run it creates (a study), or of
    ``parent`` (a finalize run, whose trials are folds: ``folds=True`` names and keys them by fold)."""

    def __init__(self, uri: str, cfg: Config, dataset_summary: dict | None = None, *, parent: str | None = None,
                 folds: bool = False, warm_start: list[dict] | None = None):
        self.uri, self.cfg, self.summary = uri, cfg, dataset_summary or {}
        self.warm_start = list(warm_start or [])  # trials of earlier studies the study started from
        self._tracker: Tracker | None = None
        self.parent: str | None = parent
        self.kind = "fold" if folds else "trial"
        self.folds = folds
        self.runs: dict[str, str] = {}
        self.logged: dict[str, set[int]] = {}  # epochs already in each trial run: a resume never logs one twice
        self._down = False  # after a failure MLflow is left alone until the end: no stalls per epoch
        self.background = cfg.search.log_in_background
        self._index: dict[str, str] | None = None  # trial id -> run of this search's trial runs, read once
        self._writer: Writer | None = None

    def __getstate__(self):  # Tune pickles callbacks with the experiment; a client or a thread does not travel
        state = dict(self.__dict__)
        state["_tracker"] = state["_writer"] = None
        return state

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.uri, self.cfg.run.study)
        return self._tracker

    def _safe(self, what: str, fn, *args, retry: bool = False, **kwargs):
        if self._down and not retry:
            return None
        try:
            result = fn(*args, **kwargs)
            self._down = False
            return result
        except Exception as e:  # the search must outlive a tracking outage
            if not self._down:
                reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                warnings.warn(f"MLflow at {self.uri} failed ({what}: {reason}); the search goes on without it. "
                              f"Run the same command again afterwards to fill in MLflow from Tune's results.")
            self._down = True
            return None

    def _parent(self) -> str:
        if self.parent is None:
            s = self.cfg.search
            params = {"num_samples": s.num_samples, "max_concurrent": s.max_concurrent, "max_epochs": self.cfg.train.epochs,
                      "grace_period": s.grace_period, "reduction_factor": s.reduction_factor, "seed": s.seed,
                      "searcher": f"optuna-{s.sampler}", "scheduler": s.scheduler, "budget_epochs": s.budget_epochs,
                      "cpus_per_trial": s.cpus_per_trial,
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

    def setup(self, **info) -> None:
        self._safe("search run", self._parent)

    def _key(self, trial) -> str:
        return _fold(trial) if self.folds else trial.trial_id

    def _known(self) -> dict[str, str]:
        """Key -> run of the trial runs already under the parent run (one query, then kept up to date)."""
        if self._index is None:
            self._index = {r.data.tags.get(KEY_TAG): r.info.run_id
                           for r in self.tracker.find(self.kind, parent=self._parent())}
        return self._index

    def _trial_run(self, trial) -> str:
        if trial.trial_id not in self.runs:
            key = self._key(trial)
            if self.background:
                run = self._known().get(key)
            else:  # a query per trial, and one more for its number: both grow with the study
                found = self.tracker.find(self.kind, key=key, parent=self._parent())
                run = found[0].info.run_id if found else None
            if run:  # a resumed search or finalize continues the trial's run
                self.runs[trial.trial_id] = run
                if not self.tracker.client.get_run(run).data.params:  # made just before an outage took the rest
                    self.tracker.log_params(run, {**trial_params(trial_config(self.cfg, trial.config)),
                                                  "trial_id": trial.trial_id})
                self.logged[run] = {m.step for m in self.tracker.client.get_metric_history(run, "val_f1")}
                return run
            cfg = trial_config(self.cfg, trial.config)
            if self.folds:
                name = run_name(cfg, f"fold {key} ·")
            else:
                number = (len(self._known()) if self.background
                          else len(self.tracker.find(self.kind, parent=self._parent()))) + 1
                name = run_name(cfg, f"#{number}")
            params = {**trial_params(cfg), "trial_id": trial.trial_id}
            self.runs[trial.trial_id] = self.tracker.start(self.kind, name, key=key, parent=self._parent(),
                                                           params=params, reuse=False)
            if self._index is not None:
                self._index[key] = self.runs[trial.trial_id]
        return self.runs[trial.trial_id]

    def _submit(self, what: str, trial, job) -> None:
        """Do ``job`` now, or queue it for the writer thread when logging in the background.

        ``job`` is a function, or a trial's result (a dict), which the writer batches with the
        trial's other pending results."""
        if not self.background:
            if callable(job):
                self._safe(what, job)
            else:
                self._safe(what, lambda: self._log_epoch(self._trial_run(trial), job))
            return
        if self._writer is None:
            self._writer = Writer(self._log_epochs, self._safe)
        self._writer.put(what, trial, job)

    def flush(self) -> None:
        """Wait until every queued write is done (Tune calls this at the end of a search)."""
        if self._writer is not None:
            self._writer.flush()
            self._writer = None

    def on_experiment_end(self, trials, **info) -> None:
        self.flush()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._submit("trial start", trial, lambda: self._trial_run(trial))

    def _log_epoch(self, run: str, result: dict) -> None:
        epoch = int(result.get("epoch", 0))
        done = self.logged.setdefault(run, set())
        if epoch not in done:
            self.tracker.log_metrics(run, {k: result[k] for k in SHOWN if k in result}, step=epoch)
            done.add(epoch)

    def _log_epochs(self, trial, results: list[dict]) -> None:
        """Epochs of one trial not yet in its run, in one request."""
        from mlflow.entities import Metric

        run = self._trial_run(trial)
        done, now = self.logged.setdefault(run, set()), int(time.time() * 1000)
        new = {int(r.get("epoch", 0)): r for r in results if int(r.get("epoch", 0)) not in done}
        items = [Metric(k, float(r[k]), now, epoch) for epoch, r in new.items() for k in SHOWN
                 if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) and math.isfinite(r[k])]
        for i in range(0, len(items), 1000):  # MLflow takes at most 1000 metrics per batch
            self.tracker.client.log_batch(run, metrics=items[i:i + 1000])
        done.update(new)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._submit("trial result", trial, {k: result[k] for k in ("epoch", *SHOWN) if k in result})

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        def done():
            run = self._trial_run(trial)
            if self.tracker.status(run) == "FINISHED":
                return  # finished before a kill; Tune's older snapshot only saw it running
            epochs = (trial.last_result or {}).get("epoch", 0)
            self.tracker.set_tags(run, {"epochs": epochs, "node": (trial.last_result or {}).get("node", "-"),
                                        "outcome": outcome(self.cfg, epochs)})
            self.tracker.finish(run, "FINISHED")
        self._submit("trial end", trial, done)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._submit("trial retry", trial, lambda: self.tracker.set_tags(self._trial_run(trial), {"retried": "yes"}))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        def failed():
            run = self._trial_run(trial)
            self.tracker.set_tags(run, {"error": error_line(trial)})
            self.tracker.finish(run, "FAILED")
        self._submit("trial error", trial, failed)

    def sync(self, results) -> None:
        """Fill in from Tune's own records whatever MLflow missed (a tracking outage, a killed driver):
        a run for every trial, every epoch's metrics, and how each trial ended."""
        class _Trial:  # the parts of a Tune trial that _trial_run reads
            def __init__(self, trial_id: str, config: dict):
                self.trial_id, self.config = trial_id, config

        def fill():
            # a trial the study's epoch budget stopped before its first epoch has no config in Tune's result
            started = [r for r in results if (r.metrics or {}).get("trial_id")]
            known = {self._key(_Trial(r.metrics["trial_id"], r.config)) for r in started if r.config is not None}
            if not self.folds:
                known |= {r.metrics["trial_id"] for r in started}
            for run in self.tracker.find(self.kind, parent=self._parent()):
                if run.info.status == "RUNNING" and run.data.tags.get(KEY_TAG) not in known:
                    # started after the driver's last snapshot before a kill: Tune ran it again as a new trial
                    self.tracker.set_tags(run.info.run_id, {"outcome": "lost with the killed driver; rerun as a new trial"})
                    self.tracker.finish(run.info.run_id, "KILLED")
            for r in started:
                trial_id = r.metrics["trial_id"]
                if r.config is None:
                    self._end_unreported(trial_id)
                    continue
                run = self._trial_run(_Trial(trial_id, r.config))
                hist = r.metrics_dataframe
                for row in ([] if hist is None else hist.to_dict("records")):
                    self._log_epoch(run, row)
                status = "FAILED" if r.error else "FINISHED"
                if self.tracker.status(run) != status:
                    if r.error:
                        self.tracker.set_tags(run, {"error": str(r.error).strip().splitlines()[-1][:500]})
                    else:  # ended unseen: killed driver, or stopped with the others by the study's epoch budget
                        epochs = int(r.metrics.get("epoch") or 0)
                        self.tracker.set_tags(run, {"epochs": epochs, "outcome": outcome(self.cfg, epochs)})
                    self.tracker.finish(run, status)
        self.flush()
        self._safe("filling in trial runs", fill, retry=True)

    def _end_unreported(self, trial_id: str) -> None:
        """Finish the run of a trial that Tune stopped before its first epoch (the study's epoch budget
        ended while it started), without telling the callbacks."""
        if self.folds:
            return
        for run in self.tracker.find(self.kind, key=trial_id, parent=self._parent()):
            if run.info.status == "RUNNING":
                self.tracker.set_tags(run.info.run_id, {"epochs": 0, "outcome": "stopped by the study's epoch "
                                                        "budget before its first epoch"})
                self.tracker.finish(run.info.run_id, "FINISHED")

    def fail_search(self, reason: str) -> None:
        """End the search run as FAILED with ``reason`` (no trial reported a result)."""
        self.flush()

        def fail():
            parent = self._parent()
            self.tracker.set_tags(parent, {"error": reason[:500]})
            self.tracker.finish(parent, "FAILED")
        self._safe("search end", fail, retry=True)

    def close_search(self, table: pd.DataFrame, best_config: Path, plots: list[Path] = ()) -> None:
        """Log the trials table, the best config, the plots and the best score on the search run, and finish it."""
        self.flush()

        def close():
            parent = self._parent()
            buf = io.StringIO()
            table.to_csv(buf, index=False)
            self.tracker.log_text(parent, buf.getvalue(), "trials.csv")
            self.tracker.log_artifact(parent, best_config)
            for path in plots:
                self.tracker.log_artifact(parent, path, "plots")
            best = table.dropna(subset=["best_val_f1"]).iloc[0]
            self.tracker.log_metrics(parent, {"best_val_f1": best["best_val_f1"], "trials": len(table),
                                              "trials_planned": self.cfg.search.num_samples,
                                              "trials_full_budget": int((table["status"] == "done").sum()),
                                              "trials_failed": int((table["status"] == "error").sum())})
            self.tracker.set_tags(parent, {f"best.{k}": best[k] for k in self.cfg.search.space if k in best})
            self.tracker.finish(parent, "FINISHED")
        self._safe("search end", close, retry=True)
