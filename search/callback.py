"""A Tune callback on the driver that mirrors every trial into MLflow as a child of the search run.

Logging from the driver means worker nodes never need to reach the tracking server,
and a resumed search finds its runs again by tag instead of logging them twice.
A tracking failure mid-search is a warning, never the end of the search.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import pandas as pd
import yaml
from ray import tune

from maskclf import config as config_mod
from maskclf.config import Config
from search.tracking import KEY_TAG, Tracker, run_name, trial_params

SHOWN = ("val_f1", "val_loss", "train_loss", "val_acc", "mask_acc", "gender_acc", "age_acc", "f1_lt30", "f1_30_59",
         "f1_ge60", "lr", "epoch_time", "images_per_s")


def error_line(trial) -> str:
    """The last line of a failed Tune trial's traceback (the exception and its message)."""
    reason = getattr(trial, "error_file", None)
    try:
        text = Path(reason).read_text()[-4000:] if reason and Path(reason).is_file() else "see the Tune logs"
    except OSError:
        text = "see the Tune logs"
    return text.strip().splitlines()[-1] if text.strip() else "unknown"


class MlflowTrials(tune.Callback):
    def __init__(self, uri: str, cfg: Config, dataset_summary: dict | None = None):
        self.uri, self.cfg, self.summary = uri, cfg, dataset_summary or {}
        self._tracker: Tracker | None = None
        self.parent: str | None = None
        self.runs: dict[str, str] = {}
        self.logged: dict[str, set[int]] = {}  # epochs already in each trial run: a resume never logs one twice
        self._down = False  # after a failure MLflow is left alone until the end: no stalls per epoch

    def __getstate__(self):  # Tune pickles callbacks with the experiment; a client does not travel
        state = dict(self.__dict__)
        state["_tracker"] = None
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
                      "searcher": "optuna-tpe", "scheduler": "asha", "cpus_per_trial": s.cpus_per_trial,
                      "gpus_per_trial": s.gpus_per_trial, **{f"data.{k}": v for k, v in self.summary.items()},
                      **{f"space.{k}": yaml.safe_dump(v, default_flow_style=True).strip() for k, v in s.space.items()}}
            self.parent = self.tracker.start("search", f"search · {self.cfg.run.study}", params=params)
            self.tracker.log_text(self.parent, yaml.safe_dump(config_mod.to_dict(self.cfg), sort_keys=False),
                                  "study_config.yaml")
        return self.parent

    def setup(self, **info) -> None:
        self._safe("search run", self._parent)

    def _trial_run(self, trial) -> str:
        if trial.trial_id not in self.runs:
            found = self.tracker.find("trial", key=trial.trial_id)
            if found:  # a resumed search continues the trial's run
                run = found[0].info.run_id
                self.runs[trial.trial_id] = run
                self.logged[run] = {m.step for m in self.tracker.client.get_metric_history(run, "val_f1")}
                return run
            cfg = config_mod.apply(self.cfg, trial.config, where="trial parameters")
            number = len(self.tracker.find("trial", parent=self._parent())) + 1
            params = {**trial_params(cfg), "trial_id": trial.trial_id}
            self.runs[trial.trial_id] = self.tracker.start("trial", run_name(cfg, f"#{number}"), key=trial.trial_id,
                                                           parent=self._parent(), params=params, reuse=False)
        return self.runs[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._safe("trial start", self._trial_run, trial)

    def _log_epoch(self, run: str, result: dict) -> None:
        epoch = int(result.get("epoch", 0))
        done = self.logged.setdefault(run, set())
        if epoch not in done:
            self.tracker.log_metrics(run, {k: result[k] for k in SHOWN if k in result}, step=epoch)
            done.add(epoch)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._safe("trial result", lambda: self._log_epoch(self._trial_run(trial), result))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        def done():
            run = self._trial_run(trial)
            if self.tracker.status(run) == "FINISHED":
                return  # finished before a kill; Tune's older snapshot only saw it running
            epochs = (trial.last_result or {}).get("epoch", 0)
            self.tracker.set_tags(run, {"epochs": epochs,
                                        "outcome": "full budget" if epochs >= self.cfg.train.epochs else "stopped by ASHA"})
            self.tracker.finish(run, "FINISHED")
        self._safe("trial end", done)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._safe("trial retry", lambda: self.tracker.set_tags(self._trial_run(trial), {"retried": "yes"}))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        def failed():
            run = self._trial_run(trial)
            self.tracker.set_tags(run, {"error": error_line(trial)})
            self.tracker.finish(run, "FAILED")
        self._safe("trial error", failed)

    def sync(self, results) -> None:
        """Fill in from Tune's own records whatever MLflow missed (a tracking outage, a killed driver):
        a run for every trial, every epoch's metrics, and how each trial ended."""
        class _Trial:  # the parts of a Tune trial that _trial_run reads
            def __init__(self, trial_id: str, config: dict):
                self.trial_id, self.config = trial_id, config

        def fill():
            known = {(r.metrics or {}).get("trial_id") for r in results}
            for run in self.tracker.find("trial", parent=self._parent()):
                if run.info.status == "RUNNING" and run.data.tags.get(KEY_TAG) not in known:
                    # started after the driver's last snapshot before a kill: Tune ran it again as a new trial
                    self.tracker.set_tags(run.info.run_id, {"outcome": "lost with the killed driver; rerun as a new trial"})
                    self.tracker.finish(run.info.run_id, "KILLED")
            for r in results:
                trial_id = (r.metrics or {}).get("trial_id")
                if not trial_id:
                    continue
                run = self._trial_run(_Trial(trial_id, r.config))
                hist = r.metrics_dataframe
                for row in ([] if hist is None else hist.to_dict("records")):
                    self._log_epoch(run, row)
                status = "FAILED" if r.error else "FINISHED"
                if self.tracker.status(run) != status:
                    if r.error:
                        self.tracker.set_tags(run, {"error": str(r.error).strip().splitlines()[-1][:500]})
                    self.tracker.finish(run, status)
        self._safe("filling in trial runs", fill, retry=True)

    def close_search(self, table: pd.DataFrame, best_config: Path, plots: list[Path] = ()) -> None:
        """Log the trials table, the best config, the plots and the best score on the search run, and finish it."""
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
                                              "trials_full_budget": int((table["status"] == "done").sum()),
                                              "trials_failed": int((table["status"] == "error").sum())})
            self.tracker.set_tags(parent, {f"best.{k}": best[k] for k in self.cfg.search.space if k in best})
            self.tracker.finish(parent, "FINISHED")
        self._safe("search end", close, retry=True)


class LiveTable(tune.Callback):
    """One line per finished trial, and the top trials every few, in place of Tune's per-trial boxes.

    Tune pickles its callbacks with the experiment, so this prints with ``print`` and holds
    nothing but plain data.
    """

    def __init__(self, cfg: Config, every: int = 5, top: int = 3):
        self.total, self.max_epochs, self.every, self.top = cfg.search.num_samples, cfg.train.epochs, every, top
        self.keys = list(cfg.search.space)
        self.shown = 0

    def _row(self, trial, error: bool) -> dict:
        last = trial.last_result or {}
        epochs = int(last.get("epoch", 0) or 0)
        status = "error" if error else ("done" if epochs >= self.max_epochs else "stopped")
        # the best epoch, as the study ranks trials; Tune keeps it with the trial, so it survives a resume
        best = ((getattr(trial, "metric_analysis", None) or {}).get("val_f1") or {}).get("max")
        return {"trial": trial.trial_id, "status": status, "epochs": epochs, "val_f1": last.get("val_f1", math.nan),
                "best_val_f1": float(best) if best is not None else last.get("val_f1", math.nan), "f1_ge60": last.get("f1_ge60", math.nan),
                **{k: trial.config.get(k) for k in self.keys}}

    def _finished(self, trials, trial, error: bool) -> None:
        from search import report

        try:
            # Tune may still list the trial as running when it calls back
            done = {t.trial_id: t for t in trials if t.status in ("TERMINATED", "ERROR")}
            done[trial.trial_id] = trial
            row = self._row(trial, error)
            how = f"error: {error_line(trial)}" if error else (
                "full budget" if row["status"] == "done" else "stopped by ASHA")
            f1 = row["best_val_f1"]
            f1 = "-" if math.isnan(f1) else f"{f1:.3f}"
            print(f"[{len(done)}/{self.total} done] trial {trial.trial_id}: val_f1 {f1} after {row['epochs']} epochs "
                  f"({how})", flush=True)
            self.shown += 1
            if self.shown % self.every == 0 and len(done) < self.total:
                rows = [self._row(t, t.status == "ERROR" or t is trial and error) for t in done.values()]
                table = pd.DataFrame(rows).sort_values("best_val_f1", ascending=False, na_position="last")
                print(report.top_table(table.reset_index(drop=True), n=self.top), flush=True)
        except Exception as e:  # a progress line is never worth a failed search
            warnings.warn(f"progress line failed: {e}")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finished(trials, trial, error=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finished(trials, trial, error=True)
