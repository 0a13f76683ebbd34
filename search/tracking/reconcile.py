"""MLflow filled in from Tune's own records after a tracking outage or a killed driver.

Tune's results hold every trial's config, its per-epoch metrics and how it ended; after a run whose MLflow
writes were lost (the server went away) or cut short (the driver was killed between Tune's snapshots), this
gives every trial a run, every epoch its metrics and every run the status its trial ended with, and closes the
runs of trials that Tune ran again as new trials.
"""

from __future__ import annotations

from maskclf.config import Config
from search.cluster.progress import outcome
from search.tracking import KEY_TAG
from search.tracking.trial_runs import TrialRuns


def fill_in(runs: TrialRuns, results, cfg: Config) -> None:
    """Bring the runs under ``runs``' parent in line with Tune's ``results`` (a ResultGrid, or Results)."""
    tracker = runs.tracker
    # a trial the study's epoch budget stopped before its first epoch has no config in Tune's result
    started = [r for r in results if (r.metrics or {}).get("trial_id")]
    known = {runs.key(r.metrics["trial_id"], r.config) for r in started if r.config is not None}
    if not runs.folds:
        known |= {r.metrics["trial_id"] for r in started}
    for run in tracker.find(runs.kind, parent=runs.search_run()):
        if run.info.status == "RUNNING" and run.data.tags.get(KEY_TAG) not in known:
            # started after the driver's last snapshot before a kill: Tune ran it again as a new trial
            tracker.set_tags(run.info.run_id, {"outcome": "lost with the killed driver; rerun as a new trial"})
            tracker.finish(run.info.run_id, "KILLED")
    for r in started:
        trial_id = r.metrics["trial_id"]
        if r.config is None:
            _end_unreported(runs, trial_id)
            continue
        run = runs.run_of(trial_id, r.config)
        history = r.metrics_dataframe
        for row in ([] if history is None else history.to_dict("records")):
            runs.log_epoch(run, row)
        status = "FAILED" if r.error else "FINISHED"
        if tracker.status(run) != status:
            if r.error:
                tracker.set_tags(run, {"error": str(r.error).strip().splitlines()[-1][:500]})
            else:  # ended unseen: killed driver, or stopped with the others by the study's epoch budget
                epochs = int(r.metrics.get("epoch") or 0)
                tracker.set_tags(run, {"epochs": epochs, "outcome": outcome(cfg, epochs)})
            tracker.finish(run, status)


def _end_unreported(runs: TrialRuns, trial_id: str) -> None:
    """Finish the run of a trial that Tune stopped before its first epoch (the study's epoch budget ended while
    it started), without telling the callbacks."""
    if runs.folds:
        return
    for run in runs.tracker.find(runs.kind, key=trial_id, parent=runs.search_run()):
        if run.info.status == "RUNNING":
            runs.tracker.set_tags(run.info.run_id, {"epochs": 0, "outcome": "stopped by the study's epoch budget "
                                                                            "before its first epoch"})
            runs.tracker.finish(run.info.run_id, "FINISHED")
