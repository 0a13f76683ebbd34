"""A Tune callback on the driver that mirrors every trial into MLflow as a child of the search run
(:mod:`search.tracking.trial_runs`), and fills in what MLflow missed from Tune's records at the end
(:mod:`search.tracking.reconcile`).

Logging from the driver means worker nodes never need to reach the tracking server,
and a resumed search finds its runs again by tag instead of logging them twice.
A tracking failure mid-search is a warning, never the end of the search.

With ``search.log_in_background`` (the default) the writes leave Tune's event loop: they go,
in order, to a writer thread (``search.tracking.writer``) that logs each trial's pending epochs in one batch, so a
slow tracking store delays MLflow, not the trials waiting for the driver to take their results.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pandas as pd
from ray import tune

from maskclf.config import Config
from search.tracking import reconcile
from search.cluster.progress import error_line, outcome
from search.tracking import Tracker
from search.tracking.trial_runs import SHOWN, TrialRuns
from search.tracking.writer import Writer


class MlflowTrials(tune.Callback):
    """Each trial of a Tune experiment as a child run: of the search run it creates (a study), or of
    ``parent`` (a finalize run, whose trials are folds: ``folds=True`` names and keys them by fold)."""

    def __init__(self, uri: str, cfg: Config, dataset_summary: dict | None = None, *, parent: str | None = None,
                 folds: bool = False, warm_start: list[dict] | None = None):
        self.uri, self.cfg = uri, cfg
        self.background = cfg.search.log_in_background
        self.trials = TrialRuns(uri, cfg, dataset_summary, parent=parent, folds=folds, warm_start=warm_start,
                                indexed=self.background)
        self._down = False  # after a failure MLflow is left alone until the end: no stalls per epoch
        self._writer: Writer | None = None

    def __getstate__(self):  # Tune pickles callbacks with the experiment; a thread does not travel
        return {**self.__dict__, "_writer": None}

    @property
    def tracker(self) -> Tracker:
        return self.trials.tracker

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

    def setup(self, **info) -> None:
        self._safe("search run", self.trials.search_run)

    def _run(self, trial) -> str:
        return self.trials.run_of(trial.trial_id, trial.config)

    def _submit(self, what: str, trial, job) -> None:
        """Do ``job`` now, or queue it for the writer thread when logging in the background.

        ``job`` is a function, or a trial's result (a dict), which the writer batches with the
        trial's other pending results."""
        if not self.background:
            if callable(job):
                self._safe(what, job)
            else:
                self._safe(what, lambda: self.trials.log_epoch(self._run(trial), job))
            return
        if self._writer is None:
            self._writer = Writer(lambda trial, results: self.trials.log_epochs(self._run(trial), results),
                                  self._safe)
        self._writer.put(what, trial, job)

    def flush(self) -> None:
        """Wait until every queued write is done (Tune calls this at the end of a search)."""
        if self._writer is not None:
            self._writer.flush()
            self._writer = None

    def on_experiment_end(self, trials, **info) -> None:
        self.flush()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._submit("trial start", trial, lambda: self._run(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._submit("trial result", trial, {k: result[k] for k in ("epoch", *SHOWN) if k in result})

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        def done():
            run = self._run(trial)
            if self.tracker.status(run) == "FINISHED":
                return  # finished before a kill; Tune's older snapshot only saw it running
            epochs = (trial.last_result or {}).get("epoch", 0)
            self.tracker.set_tags(run, {"epochs": epochs, "node": (trial.last_result or {}).get("node", "-"),
                                        "outcome": outcome(self.cfg, epochs)})
            self.tracker.finish(run, "FINISHED")
        self._submit("trial end", trial, done)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._submit("trial retry", trial, lambda: self.tracker.set_tags(self._run(trial), {"retried": "yes"}))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        def failed():
            run = self._run(trial)
            self.tracker.set_tags(run, {"error": error_line(trial)})
            self.tracker.finish(run, "FAILED")
        self._submit("trial error", trial, failed)

    def sync(self, results) -> None:
        """Fill in from Tune's own records whatever MLflow missed (a tracking outage, a killed driver):
        a run for every trial, every epoch's metrics, and how each trial ended."""
        self.flush()
        self._safe("filling in trial runs", reconcile.fill_in, self.trials, results, self.cfg, retry=True)

    def fail_search(self, reason: str) -> None:
        """End the search run as FAILED with ``reason`` (no trial reported a result)."""
        self.flush()

        def fail():
            parent = self.trials.search_run()
            self.tracker.set_tags(parent, {"error": reason[:500]})
            self.tracker.finish(parent, "FAILED")
        self._safe("search end", fail, retry=True)

    def close_search(self, table: pd.DataFrame, best_config: Path, plots: list[Path] = ()) -> None:
        """Log the trials table, the best config, the plots and the best score on the search run, and finish it."""
        self.flush()

        def close():
            parent = self.trials.search_run()
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
