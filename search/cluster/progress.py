"""What a study and a finalize print as they run, in place of Tune's per-trial status boxes: a line per
finished trial (and the top trials every few), a line per fold epoch; and the fold checkpoints that
finalize keeps the moment each fold finishes.

Tune pickles its callbacks with the experiment, so these print with ``print`` and hold plain data only.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pandas as pd
from ray import tune

from maskclf.config import Config


def error_line(trial) -> str:
    """The last line of a failed Tune trial's traceback (the exception and its message)."""
    reason = getattr(trial, "error_file", None)
    try:
        text = Path(reason).read_text()[-4000:] if reason and Path(reason).is_file() else "see the Tune logs"
    except OSError:
        text = "see the Tune logs"
    return text.strip().splitlines()[-1] if text.strip() else "unknown"


def outcome(cfg: Config, epochs: int) -> str:
    """How a trial that ended without an error ended, in words."""
    if epochs >= cfg.train.epochs:
        return "full budget"
    if cfg.search.budget_epochs:  # the study's epoch budget stops trials as well as the scheduler
        return "stopped early (ASHA or the study's epoch budget)" if cfg.search.scheduler == "asha" \
            else "stopped by the study's epoch budget"
    return "stopped by ASHA"


class LiveTable(tune.Callback):
    """One line per finished trial, and the top trials every few, in place of Tune's per-trial boxes.

    Tune pickles its callbacks with the experiment, so this prints with ``print`` and holds
    nothing but plain data.
    """

    def __init__(self, cfg: Config, every: int = 5, top: int = 3, before: int = 0):
        self.cfg, self.every, self.top = cfg, every, top
        # ``before``: trials of the study's earlier parts (an extended study counts on from them)
        self.before, self.total, self.max_epochs = before, before + cfg.search.num_samples, cfg.train.epochs
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
        from search.tracking import report

        try:
            # Tune may still list the trial as running when it calls back
            done = {t.trial_id: t for t in trials if t.status in ("TERMINATED", "ERROR")}
            done[trial.trial_id] = trial
            row = self._row(trial, error)
            how = f"error: {error_line(trial)}" if error else (
                outcome(self.cfg, row["epochs"]))
            f1 = row["best_val_f1"]
            f1 = "-" if math.isnan(f1) else f"{f1:.3f}"
            print(f"[{self.before + len(done)}/{self.total} done] trial {trial.trial_id}: val_f1 {f1} after {row['epochs']} epochs "
                  f"({how})", flush=True)
            self.shown += 1
            if self.shown % self.every == 0 and self.before + len(done) < self.total:
                rows = [self._row(t, t.status == "ERROR" or t is trial and error) for t in done.values()]
                table = pd.DataFrame(rows).sort_values("best_val_f1", ascending=False, na_position="last")
                print(report.top_table(table.reset_index(drop=True), n=self.top), flush=True)
        except Exception as e:  # a progress line is never worth a failed search
            warnings.warn(f"progress line failed: {e}")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finished(trials, trial, error=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finished(trials, trial, error=True)


class FoldCheckpoints(tune.Callback):
    """Finalize's folds on the driver: each fold's checkpoint into ``<final>/folds/fold<k>/`` the moment the
    fold finishes, so a finalize killed later keeps it; and a line per fold epoch. Plain data only: Tune
    pickles its callbacks with the experiment, so this prints with ``print``."""

    def __init__(self, out: Path, epochs: int):
        self.out, self.epochs = str(out), epochs

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        print(f"fold {trial.config['folds.fold']}: epoch {result.get('epoch')}/{self.epochs} "
              f"val macro F1 {result.get('val_f1', math.nan):.4f}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        from search.cluster.experiment import copy_checkpoint, epochs_done

        dest = Path(self.out) / "folds" / f"fold{trial.config['folds.fold']}" / "checkpoint"
        # a fold restored after its end (its completion not yet in Tune's saved state) keeps the copy it has
        if trial.checkpoint is not None and epochs_done(dest) < self.epochs:
            copy_checkpoint(trial.checkpoint, dest)
