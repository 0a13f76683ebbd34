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
from search.study import settings

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


def _once_per_run(tmp_path_factory, name: str, build) -> Path:
    """``<run's temp folder>/<name>``, made by ``build(folder)`` once per test run: the side-by-side workers share
    it, the first to get here builds it while the others wait."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's folder, over the workers'
    home = shared / name
    home.mkdir(exist_ok=True)
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (home / "complete").is_file():
            t0 = time.time()
            build(home)
            print(f"shared {name}: {time.time() - t0:.1f} s", file=sys.stderr)
            (home / "complete").touch()
    return home


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> Path:
    """The smoke config's demo dataset (and, beside it, its crop cache), made once per test run."""
    from maskclf import demo

    def build(home: Path) -> None:
        cfg = settings.load(SMOKE)
        demo.generate(home / "data", cfg.data.demo_people, cfg.data.demo_eval_people, cfg.data.demo_seed,
                      progress=False)

    return _once_per_run(tmp_path_factory, "smoke-shared", build) / "data"


@pytest.fixture(scope="session")
def smoke_final(smoke_data, tmp_path_factory):
    """A finished smoke study shared by every test of the run that only reads one: ``python -m search.tune`` (2
    trials of 2 epochs), then ``python -m search.finalize`` of its best configuration on the five folds, each in a
    Ray of its own. Tests that write to the study work on a copy (:func:`copy_run_dir`)."""
    from types import SimpleNamespace

    overrides = [f"data.root={smoke_data}", f"faces.cache_dir={smoke_data.parent / 'cache'}"]

    def build(home: Path) -> None:
        for step, extra in (("tune", ["train.epochs=2", "search.grace_period=2"]), ("finalize", [])):
            r = subprocess.run([sys.executable, "-m", f"search.{step}", "--config", str(SMOKE), *overrides,
                                f"run.dir={home / 'runs'}", *extra], cwd=ROOT,
                               env={**os.environ, "RAY_ADDRESS": "local"}, capture_output=True, text=True, timeout=900)
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
            (home / f"{step}.log").write_text(r.stdout)

    home = _once_per_run(tmp_path_factory, "smoke-final", build)
    return SimpleNamespace(run_dir=home / "runs", overrides=[*overrides, f"run.dir={home / 'runs'}"],
                           data=smoke_data, tune_lines=(home / "tune.log").read_text().splitlines(),
                           lines=(home / "finalize.log").read_text().splitlines())


@pytest.fixture(scope="session")
def tasks_quick(smoke_data, tmp_path_factory):
    """``bench/tasks.py --quick`` run once for the whole test run: an 18-way study and mask, gender and age studies
    (one 1-epoch trial each), each finalized on folds 0 and 1, and ``search.combine`` of the three task studies.
    Its bench test and the combine tests read it; tests that write to it work on a copy (:func:`copy_run_dir`)."""
    from types import SimpleNamespace

    def cmd(home: Path) -> list[str]:
        return [sys.executable, "bench/tasks.py", "--quick", "--results", str(home / "RESULTS.md"),
                f"data.root={smoke_data}", f"run.dir={home / 'runs'}", f"faces.cache_dir={smoke_data.parent / 'cache'}"]

    def build(home: Path) -> None:
        r = subprocess.run(cmd(home), cwd=ROOT, env={**os.environ, "RAY_ADDRESS": "local"}, capture_output=True,
                           text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        (home / "stdout.log").write_text(r.stdout)

    home = _once_per_run(tmp_path_factory, "tasks-quick", build)
    return SimpleNamespace(run_dir=home / "runs", overrides=cmd(home)[-3:], data=smoke_data,
                           results=home / "RESULTS.md", stdout=(home / "stdout.log").read_text())


def copy_run_dir(src: Path, dst: Path) -> Path:
    """A copy of a run dir that is a run dir of its own: the paths in its MLflow store and its files name ``dst``."""
    import shutil
    import sqlite3

    shutil.copytree(src, dst)
    old, new = str(src), str(dst)
    for f in dst.rglob("*"):
        if f.is_file() and f.suffix in (".yaml", ".json", ".csv", ".txt", "") and f.name != "mlflow.db":
            try:
                text = f.read_text()
            except UnicodeDecodeError:
                continue
            if old in text:
                f.write_text(text.replace(old, new))
    db = sqlite3.connect(dst / "mlflow.db")
    with db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
            for col in db.execute(f"PRAGMA table_info('{table}')").fetchall():
                if col[2].upper().startswith(("VARCHAR", "TEXT")):
                    db.execute(f'UPDATE "{table}" SET "{col[1]}" = replace("{col[1]}", ?, ?)', (old, new))
    db.close()
    return dst


@pytest.fixture
def smoke_cfg(smoke_data: Path, tmp_path: Path) -> config.Config:
    """The real smoke config pointed at the session's dataset and a fresh run dir."""
    return settings.load(SMOKE, {"data.root": str(smoke_data), "run.dir": str(tmp_path / "runs"),
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
    # its job runner (GenAI evaluation jobs, a dozen processes) is nothing this project uses
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
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


# The order test files start in (pytest's own order is kept: see --no-loadscope-reorder in pyproject.toml). With
# one file per worker (--dist loadfile), a long file started last would leave the other workers idle while it
# finishes, so the longest go first: the two that build the run's shared studies (tasks_quick, smoke_final), then
# long ones that need neither, then the readers of the shared studies, which find them built by then.
_LONGEST_FIRST = ["test_bench_tasks", "test_finalize", "test_faults_driver", "test_bench_real_scale",
                  "test_faults_finalize", "test_bench_search", "test_tune", "test_browser", "test_cluster",
                  "test_combine", "test_distill", "test_side_by_side", "test_search_options", "test_bench_scale",
                  "test_faults", "test_bench", "test_crops", "test_study_growth", "test_dataset", "test_curves"]

# The tiers. unit: the developer's loop (no Ray, no MLflow server, no subprocess, no full-dataset MTCNN);
# integration: real local Ray and MLflow runs, kill-and-resume, the three-node cluster, the browser;
# bench: the bench scripts' quick modes.
TIERS = ("unit", "integration", "bench")
# fixtures that start Ray or build smoke studies: a test that uses one (even through another fixture) is
# at least an integration test
_RAY_FIXTURES = {"ray_local", "smoke_final", "tasks_quick", "cluster"}


def _tier(item) -> str:
    """The test's tier: its own mark if it has one, else what the rule says from what it uses."""
    marked = {m.name for m in item.iter_markers() if m.name in TIERS}
    if len(marked) > 1:
        raise pytest.UsageError(f"{item.nodeid}: marked {' and '.join(sorted(marked))}; a test has one tier")
    if item.path.stem.startswith("test_bench") and "unit" not in marked:
        implied = "bench"
    elif _RAY_FIXTURES & set(item.fixturenames):
        implied = "integration"
    else:
        implied = "unit"
    tier = marked.pop() if marked else implied
    if tier == "unit" and implied != "unit":
        why = "is a bench quick mode" if implied == "bench" else "uses Ray"
        raise pytest.UsageError(f"{item.nodeid}: marked unit but {why}; mark it {implied}")
    return tier


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = _tier(item)
        if not item.get_closest_marker(tier):
            item.add_marker(getattr(pytest.mark, tier))
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: each file keeps its own order


class _UnitTierError(AssertionError):
    pass


@pytest.fixture(autouse=True)
def _unit_tier_guard(request, monkeypatch):
    """A unit test that starts a process (a subprocess, Ray, an MLflow server) fails and says where it belongs."""
    if not request.node.get_closest_marker("unit"):
        yield
        return

    popen = subprocess.Popen.__init__

    def refuse(self, args, *a, **kw):
        shown = args if isinstance(args, str) else " ".join(map(str, args))
        # ctypes finding a shared library, platform.processor() (MLflow's telemetry): both on a first import
        if shown.split(" ", 1)[0].endswith("/ldconfig") or shown == "uname -p":
            return popen(self, args, *a, **kw)
        raise _UnitTierError(f"a unit test starts no process, but this one ran `{shown[:120]}`: "
                             f"mark it integration (or bench, for a bench quick mode)")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    from maskclf import faces

    seen = []

    def counted(name, detect):
        def run(images, device):
            seen.append(len(images))
            if sum(seen) > _UNIT_DETECTOR_PHOTOS:
                raise _UnitTierError(f"a unit test runs a face detector on a few photos, but this one sent {name} "
                                     f"{sum(seen)} in all: use faces.method=center, or mark it integration")
            return detect(images, device)
        return run

    for name, detect in list(faces.DETECTORS.items()):
        monkeypatch.setitem(faces.DETECTORS, name, counted(name, detect))
    yield


_UNIT_DETECTOR_PHOTOS = 64  # a whole smoke dataset (420 photos) is integration work
