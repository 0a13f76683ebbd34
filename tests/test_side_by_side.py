"""Two searches started side by side on one machine, each with no Ray address given: each runs on a private
Ray of its own, so the first to finish takes nothing of the other's with it; and a command on a joined cluster
that stops answering ends with one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from search.study import settings
from tests.faults import ROOT, SMOKE, _args


pytestmark = pytest.mark.integration


def _search(cfg, study: str, epochs: int) -> subprocess.Popen:
    args = _args(cfg, study, "search.num_samples=1", f"train.epochs={epochs}", f"search.grace_period={epochs}")
    # no address: what a user's two terminals have
    return subprocess.Popen([sys.executable, "-m", "search.tune", "--config", str(SMOKE), *args], cwd=ROOT,
                            env={**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_two_searches_side_by_side_each_start_their_own_ray_and_both_finish(smoke_cfg):
    first = _search(smoke_cfg, "first", 1)
    seen = []
    deadline = time.time() + 180
    while not any("started a local Ray" in line for line in seen):  # the first one's Ray is up
        line = first.stdout.readline()
        assert line or first.poll() is None, "".join(seen)[-3000:]
        seen.append(line)
        assert time.time() < deadline, "".join(seen)[-3000:]
    second = _search(smoke_cfg, "second", 6)  # outlives the first
    out1 = "".join(seen) + first.communicate(timeout=600)[0]
    assert first.returncode == 0, out1[-3000:]
    assert second.poll() is None, "the second search ended with the first"
    out2 = second.communicate(timeout=600)[0]
    assert second.returncode == 0, out2[-3000:]
    assert "started a local Ray" in out2 and "connecting to" not in out2
    for study, epochs in (("first", 1), ("second", 6)):
        cfg = settings.load(SMOKE, _args(smoke_cfg, study))
        table = pd.read_csv(Path(cfg.run.dir) / study / "trials.csv")
        assert len(table) == 1 and table["best_val_f1"].between(0, 1).all(), table
        assert table["epochs"].tolist() == [epochs] and table["status"].tolist() == ["done"], table


def test_a_command_whose_cluster_stops_answering_ends_with_one_line(tmp_path):
    """The watch a command starts when it joins a cluster: the head's port stops answering, the command ends
    with exit code 1 and one line that names the cluster (here a plain listening socket stands for the head)."""
    import socket

    head = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{head.getsockname()[1]}"
    script = ("import time; from search.cluster import watch\n"
              f"watch({address!r}, every_s=0.2, lost_after_s=1.0)\n"
              "print('joined', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "joined\n"
        time.sleep(1.5)
        assert proc.poll() is None  # a head that answers keeps the command going
        head.close()
        t0 = time.time()
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and time.time() - t0 < 10
    [line] = err.strip().splitlines()
    assert line.startswith(f"error: the Ray cluster at {address} stopped answering") and "run the command again" in line
