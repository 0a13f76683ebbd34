"""The MLflow writer thread of the Tune callback (search.tracking.writer), on its own: order, batching, failures."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from search.tracking.writer import Writer


def _trial(tid: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid)


def test_jobs_run_in_order_and_a_trials_queued_results_go_as_one_batch_before_its_next_job():
    done: list = []
    hold = threading.Event()
    safe_calls: list[str] = []

    def safe(what, fn, *args):
        safe_calls.append(what)
        return fn(*args)

    w = Writer(lambda trial, results: done.append((trial.trial_id, [r["epoch"] for r in results])), safe)
    w.put("trial start", _trial("a"), hold.wait)  # the thread waits here while the rest queues up
    w.put("trial result", _trial("a"), {"epoch": 1})
    w.put("trial result", _trial("b"), {"epoch": 1})
    w.put("trial result", _trial("a"), {"epoch": 2})
    w.put("trial end", _trial("a"), lambda: done.append(("a", "end")))
    w.put("trial result", _trial("b"), {"epoch": 2})
    hold.set()
    w.flush()
    # a's two results in one call, before a's end; b's results in one call at the end of the batch
    assert done == [("a", [1, 2]), ("a", "end"), ("b", [1, 2])]
    assert safe_calls == ["trial start", "trial result", "trial end", "trial result"]
    assert not w._thread.is_alive()  # flush ends the thread


def test_a_failing_write_does_not_stop_the_ones_after_it():
    done: list = []
    failures: list[str] = []

    def safe(what, fn, *args):
        try:
            return fn(*args)
        except Exception as e:  # as MlflowTrials._safe: warn and go on
            failures.append(f"{what}: {e}")

    def broken():
        raise ConnectionError("tracking server gone")

    w = Writer(lambda trial, results: done.append(len(results)), safe)
    w.put("trial start", _trial("a"), broken)
    w.put("trial result", _trial("a"), {"epoch": 1})
    w.put("trial end", _trial("a"), lambda: done.append("end"))
    w.flush()
    assert failures == ["trial start: tracking server gone"] and done == [1, "end"]
