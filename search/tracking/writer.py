"""The writer thread of ``search.tracking.callback.MlflowTrials``: MLflow writes leave Tune's event loop and are done in
order on a thread of their own, each trial's consecutive results written as one batch."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable


class Writer:
    """Jobs done in the order they were put, on a daemon thread started with the first one.

    A job is a function, or a trial's result (a dict): the results of a trial that follow one another in the
    queue go to ``write_results(trial, results)`` in one call, before any later job of that trial. Every call
    goes through ``safe(what, fn, *args)``, which keeps a failing write from stopping the ones after it."""

    def __init__(self, write_results: Callable[[Any, list[dict]], None], safe: Callable[..., Any]):
        self._write_results, self._safe = write_results, safe
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="mlflow-trials", daemon=True)
        self._thread.start()

    def put(self, what: str, trial, job: Callable[[], Any] | dict) -> None:
        self._jobs.put((what, trial, job))

    def flush(self) -> None:
        """Wait until every job put so far is done; the thread then ends (a new Writer takes later jobs)."""
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            batch = [self._jobs.get()]
            while not self._jobs.empty() and len(batch) < 1000:
                batch.append(self._jobs.get())
            pending: dict[str, tuple] = {}  # trial id -> (trial, its results not yet written)
            stop = False
            for job in batch:
                if job is None:  # flush() puts it last
                    stop = True
                    break
                what, trial, work = job
                if not callable(work):
                    pending.setdefault(trial.trial_id, (trial, []))[1].append(work)
                    continue
                if trial.trial_id in pending:  # its results first: they came first
                    self._safe("trial result", self._write_results, *pending.pop(trial.trial_id))
                self._safe(what, work)
            for trial, results in pending.values():
                self._safe("trial result", self._write_results, trial, results)
            if stop:
                return
