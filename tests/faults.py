"""What the fault tests share: commands started in a session of their own, killed at a chosen moment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search.tracking import Tracker, tracking_uri

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "conf" / "smoke.yaml"


def _tracker(cfg) -> Tracker:
    return Tracker(tracking_uri(cfg), cfg.run.study)


def _steps(tracker: Tracker, run_id: str) -> list[int]:
    return [m.step for m in tracker.client.get_metric_history(run_id, "val_f1")]


def _args(cfg, study: str, *extra: str) -> list[str]:
    return [f"data.root={cfg.data.root}", f"run.dir={cfg.run.dir}", f"faces.cache_dir={cfg.faces.cache_dir}",
            f"run.study={study}", *extra]


def _start(module: str, args: list[str]) -> subprocess.Popen:
    # a session of its own, so the kill takes the driver's local Ray with it
    return subprocess.Popen([sys.executable, "-m", module, "--config", str(SMOKE), *args], cwd=ROOT,
                            env={**os.environ, "RAY_ADDRESS": "local", "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail("the command ended before it could be killed:\n" + proc.stdout.read()[-3000:])
            try:
                if ready():
                    break
            except Exception:  # the store may be mid-write; look again
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the moment to kill never came")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
