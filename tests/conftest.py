"""Shared fixtures: tiny datasets in the real layout and the smoke config, shrunk further."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskclf import config
from maskclf.labels import STEM_TO_MASK

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "conf" / "smoke.yaml"
# Every Ray the tests start is their own: a bare ray.init() or the commands' "join the Ray running
# on this node" would otherwise attach to whatever else runs here (a `ray up`, a benchmark).
os.environ["RAY_ADDRESS"] = "local"


def write_person(images: Path, folder: str, exts=(".jpg",), size=(48, 64), seed=0) -> None:
    """Seven small photos of one person in the competition's folder layout."""
    rng = np.random.default_rng(seed)
    d = images / folder
    d.mkdir(parents=True)
    for i, stem in enumerate(STEM_TO_MASK):
        arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(d / f"{stem}{exts[i % len(exts)]}")


def write_layout(root: Path, people: list[tuple[str, str, int]], eval_images: int = 3) -> Path:
    """A minimal dataset in the competition layout: people = [(id, gender, age), ...]."""
    images = root / "train" / "images"
    images.mkdir(parents=True)
    with open(root / "train" / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "gender", "race", "age", "path"])
        for k, (pid, gender, age) in enumerate(people):
            folder = f"{pid}_{gender}_Asian_{age}"
            w.writerow([pid, gender, "Asian", age, folder])
            write_person(images, folder, exts=(".jpg", ".jpeg", ".png"), seed=k)
    ev = root / "eval" / "images"
    ev.mkdir(parents=True)
    with open(root / "eval" / "info.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageID", "ans"])
        for k in range(eval_images):
            name = f"{k:040x}.jpg"
            Image.fromarray(np.full((64, 48, 3), 30 * k, np.uint8)).save(ev / name)
            w.writerow([name, 0])
    return root


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    people = [("000001", "female", 45), ("000002", "male", 22), ("000003", "female", 60), ("001498-1", "male", 33)]
    return write_layout(tmp_path / "data", people)


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> Path:
    """The smoke config's demo dataset (and, beside it, its crop cache), made once per test run: the
    side-by-side workers share one copy, which the first to get here writes while the others wait."""
    import fcntl

    from maskclf import demo

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's folder, over the workers'
    root = shared / "smoke-shared" / "data"
    root.parent.mkdir(exist_ok=True)
    with open(shared / "smoke-shared.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root.parent / "complete").is_file():
            cfg = config.load(SMOKE)
            demo.generate(root, cfg.data.demo_people, cfg.data.demo_eval_people, cfg.data.demo_seed, progress=False)
            (root.parent / "complete").touch()
    return root


@pytest.fixture
def smoke_cfg(smoke_data: Path, tmp_path: Path) -> config.Config:
    """The real smoke config pointed at the session's dataset and a fresh run dir."""
    return config.load(SMOKE, {"data.root": str(smoke_data), "run.dir": str(tmp_path / "runs"),
                               "faces.cache_dir": str(smoke_data.parent / "cache")})


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray with two CPUs, shared by the tests of one module."""
    import ray

    # address="local": a new Ray even when another runs on this machine (`ray start`, a dev cluster)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(backend_uri: str, port: int, artifacts: Path | None = None) -> subprocess.Popen:
    """A real ``mlflow server`` on loopback, in a process group of its own: it starts helper
    processes that outlive a plain SIGTERM, so callers stop it with ``os.killpg``."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", backend_uri, "--workers", "1"]
    if artifacts is not None:
        cmd += ["--artifacts-destination", str(artifacts)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            return proc
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail("mlflow server did not start")
            time.sleep(0.5)


# The longest test files first (minutes each on 2 cores, from CI's --durations): with one file per worker
# (--dist loadfile), a long file started last would leave the other workers idle while it finishes.
_LONGEST_FIRST = ["test_bench_tasks", "test_bench_search", "test_faults_driver", "test_browser", "test_combine",
                  "test_tune", "test_distill", "test_finalize", "test_faults_finalize", "test_cluster",
                  "test_study_growth", "test_bench_scale", "test_faults", "test_search_options", "test_bench"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: each file keeps its own order
