"""A pytest plugin for bench/suite_cpu.py: when each test ran, and in which process (an xdist worker's pid).

Loaded with ``-p bench._suite_timeline``; writes a JSON line per test phase to ``$SUITE_CPU_TIMELINE``."""

from __future__ import annotations

import json
import os
import time

_out = None


def pytest_runtest_logreport(report):
    global _out
    path = os.environ.get("SUITE_CPU_TIMELINE")
    if not path or getattr(report, "node", None) is not None:
        return  # a report xdist's controller relays from a worker: the worker wrote it
    if _out is None:
        _out = open(path, "a")
    end = time.time()
    _out.write(json.dumps({"pid": os.getpid(), "test": report.nodeid, "phase": report.when,
                           "start": end - report.duration, "end": end}) + "\n")
    _out.flush()
