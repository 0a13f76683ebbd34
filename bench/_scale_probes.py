"""The driver-side instruments of bench/scale.py: timing wrappers on Tune's and Optuna's decision calls,
a recorder of each trial's busy intervals, the driver's CPU time and memory."""

from __future__ import annotations

import math
import os
import resource
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable


class Probe:
    """Wall time of the driver's decision calls, keyed by how many trials had finished."""

    def __init__(self):
        self.calls: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.finished = 0
        self.added: dict[str, float] = {}  # when Tune created each trial
        self._undo: list[tuple[type, str, object]] = []

    def wrap(self, cls: type, name: str, group: str, seen: Callable | None = None) -> None:
        """Time ``cls.name`` into ``group``; ``seen`` is called first with the same arguments."""
        own = cls.__dict__.get(name)
        original = getattr(cls, name)
        calls, probe = self.calls[group], self

        def timed(*args, **kwargs):
            if seen is not None:
                seen(*args, **kwargs)
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                calls.append((probe.finished, time.perf_counter() - t))
        setattr(cls, name, timed)
        self._undo.append((cls, name, own))

    def restore(self) -> None:
        for cls, name, own in reversed(self._undo):
            if own is None:
                delattr(cls, name)
            else:
                setattr(cls, name, own)
        self._undo.clear()

    def total(self, group: str) -> float:
        return sum(s for _, s in self.calls[group])


def instrument(probe: Probe) -> None:
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from search.tracking.callback import MlflowTrials
    from search.cluster.progress import LiveTable
    from search.tracking import Tracker
    from search.tracking.trial_runs import TrialRuns

    for name in ("suggest", "on_trial_result", "on_trial_complete"):
        probe.wrap(OptunaSearch, name, "searcher")
    for name in ("on_trial_result", "on_trial_complete", "choose_trial_to_run"):
        probe.wrap(ASHAScheduler, name, "scheduler")
    probe.wrap(ASHAScheduler, "on_trial_add", "scheduler",
               seen=lambda sched, controller, trial: probe.added.setdefault(trial.trial_id, time.time()))
    for name in ("on_trial_start", "on_trial_result", "on_trial_complete"):
        probe.wrap(MlflowTrials, name, "mlflow")
    probe.wrap(LiveTable, "on_trial_complete", "progress")
    probe.wrap(TuneController, "save_to_dir", "state")
    probe.wrap(OptunaSearch, "suggest", "suggest")  # also inside "searcher": the TPE part alone
    for name in ("find", "start", "set_tags", "finish", "status"):
        probe.wrap(Tracker, name, f"mlflow.{name}")
    for name in ("log_epoch", "log_epochs"):  # metric writes: in Tune's loop before, on the writer after
        probe.wrap(TrialRuns, name, "mlflow.metrics")
    if hasattr(MlflowTrials, "flush"):
        probe.wrap(MlflowTrials, "flush", "mlflow.flush")


def end_of_experiment():
    """A Tune callback that keeps when the experiment ended (after the study's own callbacks, listed before it)."""
    from ray import tune

    class EndOfExperiment(tune.Callback):
        at = math.nan

        def on_experiment_end(self, trials, **info) -> None:
            self.at = time.perf_counter()

    return EndOfExperiment()


def recorder(probe: Probe):
    """A Tune callback that keeps each trial's start and each epoch's busy interval."""
    from ray import tune

    class Recorder(tune.Callback):
        def __init__(self):
            self.fit_start = self.fit_end = self.cpu_start = self.cpu_end = self.mb_start = math.nan
            self.started: dict[str, float] = {}
            self.busy: list[tuple[str, int, float, float]] = []

        def setup(self, **info) -> None:
            self.fit_start, self.cpu_start, self.mb_start = time.time(), cpu_s(), Memory.now_mb()

        def on_experiment_end(self, trials, **info) -> None:
            self.fit_end, self.cpu_end = time.time(), cpu_s()

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            self.started.setdefault(trial.trial_id, time.time())

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            self.busy.append((trial.trial_id, int(result["epoch"]), result["busy_from"], result["busy_to"]))

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            probe.finished += 1

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            probe.finished += 1

    return Recorder()


def cpu_s() -> float:
    """CPU seconds of this process so far (every thread: Tune's loop, Ray's client, MLflow)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Memory:
    """The driver's resident memory and the machine's load, sampled twice a second."""

    def __init__(self):
        self.peak_mb = self.now_mb()
        self.loads: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return math.nan

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.peak_mb = max(self.peak_mb, self.now_mb())
            self.loads.append(os.getloadavg()[0])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
