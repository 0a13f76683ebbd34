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


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300, before_kill=None) -> None:
    """SIGKILL ``proc``'s whole session once ``ready()``; ``before_kill()`` runs first, with it still alive, and
    ``ready()`` is awaited again after it (on a busy machine the command may have moved on meanwhile)."""
    deadline = time.time() + timeout

    def wait() -> None:
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail("the command ended before it could be killed:\n" + proc.stdout.read()[-3000:])
            try:
                if ready():
                    return
            except Exception:  # the store may be mid-write; look again
                pass
            time.sleep(0.5)
        pytest.fail("the moment to kill never came")

    try:
        wait()
        if before_kill is not None:
            before_kill()
            wait()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _optuna_trials(cfg) -> list:
    """The study's trials as its Optuna database holds them."""
    import optuna

    from search.study.optuna_study import storage_url

    return optuna.load_study(study_name=cfg.run.study, storage=storage_url(cfg)).trials


def _check_optuna_matches(cfg, planned: int) -> None:
    """Optuna holds exactly the study's planned trials as finished, none still running, each with the
    value and every epoch Tune recorded (trials.csv), and nothing else but trials marked lost."""
    import pandas as pd

    from search.study.optuna_study import LOST_ATTR

    trials = _optuna_trials(cfg)
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == planned, [(t.number, t.state.name) for t in trials]
    assert all(t.state.name == "FAIL" and LOST_ATTR in t.user_attrs for t in trials if t not in done)
    table = pd.read_csv(Path(cfg.run.dir) / cfg.run.study / "trials.csv")
    assert sorted(round(t.value, 6) for t in done) == sorted(round(v, 6) for v in table["val_f1"])
    for t in done:
        assert sorted(t.intermediate_values) == list(range(1, len(t.intermediate_values) + 1))
    assert sorted(len(t.intermediate_values) for t in done) == sorted(table["epochs"])
