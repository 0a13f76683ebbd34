"""The benchmark scripts' quick modes, so they do not rot (their figures are not asserted)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SMOKE


def test_loader_quick_mode_runs_and_records(smoke_cfg, tmp_path):
    results = tmp_path / "RESULTS.md"
    r = subprocess.run([sys.executable, "bench/loader.py", "--quick", "--results", str(results), "--config",
                        str(SMOKE), f"data.root={smoke_cfg.data.root}", f"run.dir={smoke_cfg.run.dir}",
                        f"faces.cache_dir={smoke_cfg.faces.cache_dir}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ours (crop cache + albumentations)" in r.stdout and "ratio:" in r.stdout
    table = results.read_text()
    assert "## Loader" in table and table.count("| 200 × 1 |") == 1


def test_loader_feed_quick_mode_times_every_preset_path_and_worker_count(smoke_cfg, tmp_path):
    results = tmp_path / "RESULTS.md"
    r = subprocess.run([sys.executable, "bench/loader.py", "--feed", "--quick", "--worker-counts", "0,1", "--results",
                        str(results), "--config", str(SMOKE), f"data.root={smoke_cfg.data.root}",
                        f"run.dir={smoke_cfg.run.dir}", f"faces.cache_dir={smoke_cfg.faces.cache_dir}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "CPU normalisation" in r.stdout and "device augmentation itself on this CPU" in r.stdout
    table = results.read_text()
    feed = table.split("## Feed: images/s per loader core")[1].split("\n## ")[0]
    rows = [line for line in feed.splitlines() if line.startswith("| 20")]
    assert len(rows) == 3 * 2 * 2  # presets x paths x worker counts
    assert {tuple(c.strip() for c in line.split("|")[3:6]) for line in rows} == {
        (p, path, w) for p in ("none", "light", "strong") for path in ("loader", "device") for w in ("0", "1")}
    profile = table.split("## Feed: each augmentation operation's cost")[1]
    assert "| strong | noise at 48 px |" in profile and "| light | resize to 32 px |" in profile
    bad = subprocess.run([sys.executable, "bench/loader.py", "--feed", "--presets", "light,heavy", "--worker-counts",
                          "0,x", "--results", str(results)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--presets: unknown 'heavy'" in bad.stderr and "--worker-counts" in bad.stderr


@pytest.mark.unit
def test_gpu_report_reads_each_studys_trial_and_the_gpu_log_over_the_trials_time(tmp_path, monkeypatch):
    """bench/_gpu_report.py on the files gpu_check.sh leaves: Tune's result.json lines and nvidia-smi's CSV log."""
    import datetime
    import json

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import _gpu_report

    monkeypatch.setattr(_gpu_report, "machine", lambda: "a test machine")  # platform.processor() runs uname
    t0 = 1_800_000_000
    for study, rate, wait in (("gpu-loader", 2500.0, 0.4), ("gpu-device", 5000.0, 0.02)):
        trial = tmp_path / "tune" / study / "train_trial_1a2b_1_model_backbone=tf_efficientnet_lite0_2026-12-05"
        trial.mkdir(parents=True)
        lines = [{"epoch": e, "images_per_s": rate / 3 if e == 1 else rate, "loader_wait": 0.9 if e == 1 else wait,
                  "timestamp": t0 + 10 * e, "time_this_iter_s": 10.0,
                  "config": {"model.backbone": "tf_efficientnet_lite0"}} for e in (1, 2, 3)]
        (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in lines))
        t0 += 100

    def stamp(t: float) -> str:  # nvidia-smi's timestamp column
        return datetime.datetime.fromtimestamp(t).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]

    log = ["timestamp, index, utilization.gpu [%], memory.used [MiB]",
           f"{stamp(1_800_000_000 - 60)}, 0, 99 %, 80000 MiB",  # before the trials: left out
           *(f"{stamp(1_800_000_000 + s)}, 0, {50 + s % 40} %, {10000 + s} MiB" for s in range(0, 131, 5)),
           f"{stamp(1_800_000_000 + 131)}, 0, [N/A], [N/A]", "2026/12/05 01:00:0"]  # unreadable lines are skipped
    (tmp_path / "gpu.csv").write_text("\n".join(log) + "\n")
    results = tmp_path / "RESULTS.md"
    assert _gpu_report.main(["--trials", str(tmp_path / "tune"), "--gpu-log", str(tmp_path / "gpu.csv"),
                             "--seconds", "250", "--command", "bash bench/gpu_check.sh", "--results",
                             str(results)]) == 0
    rows = [line for line in results.read_text().split("## GPU check: a realistic trial on CUDA")[1].splitlines()
            if line.startswith("| 20")]
    # steady epochs only (the first pays the warm-up); the loader study first, as it ran first; GPU use over each
    # trial's own time: the sample before the trials, the unreadable lines and the gap between them left out
    first, second = ([c.strip() for c in row.split("|")[3:10]] for row in rows)
    util = [50 + s % 40 for s in range(0, 131, 5)]
    in_first = [u for s, u in zip(range(0, 131, 5), util) if s <= 30]
    in_second = [u for s, u in zip(range(0, 131, 5), util) if 100 <= s <= 130]
    assert first == ["gpu-loader · tf_efficientnet_lite0", "2,500", "40%",
                     f"GPU 0 {sum(in_first) / len(in_first):.0f}% / {max(in_first):.0f}%", "GPU 0 10030 MiB", "3",
                     "250 s"]
    assert second == ["gpu-device · tf_efficientnet_lite0", "5,000", "2%",
                      f"GPU 0 {sum(in_second) / len(in_second):.0f}% / {max(in_second):.0f}%", "GPU 0 10130 MiB",
                      "3", "250 s"]
    empty = tmp_path / "none"
    empty.mkdir()
    assert _gpu_report.main(["--trials", str(empty), "--gpu-log", str(tmp_path / "gpu.csv"), "--seconds", "1",
                             "--command", "x", "--results", str(results)]) == 2


def _quick(script: str, smoke_cfg, results, timeout: int = 300) -> subprocess.CompletedProcess:
    """``bench/<script> --quick`` on the smoke config, pointed at the test's data, run dir and results."""
    return subprocess.run([sys.executable, f"bench/{script}", "--quick", "--results", str(results), "--config",
                           str(SMOKE), f"data.root={smoke_cfg.data.root}", f"run.dir={smoke_cfg.run.dir}",
                           f"faces.cache_dir={smoke_cfg.faces.cache_dir}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_faces_quick_mode_runs_and_records(smoke_cfg, tmp_path):
    results = tmp_path / "RESULTS.md"
    r = _quick("faces.py", smoke_cfg, results)
    assert r.returncode == 0, r.stderr[-2000:]
    for line in ("32 train images, method cascade", "batched (32 per detector call):", "one image at a time:", "ratio:",
                 "crop cache, first call (miss):", "crop cache, same call again (hit):",
                 "crop cache hit, all 420 train images:"):
        assert line in r.stdout, r.stdout
    table = results.read_text()
    assert "## Faces" in table and table.count("| 32 | cascade / cpu / 1 |") == 1


def test_faces_methods_quick_mode_compares_and_trains_each_method(smoke_cfg, tmp_path):
    results = tmp_path / "RESULTS.md"
    r = subprocess.run([sys.executable, "bench/faces.py", "--quick", "--methods", "retinaface,center", "--seeds", "1",
                        "--results", str(results), "--config", str(SMOKE), f"data.root={smoke_cfg.data.root}",
                        f"run.dir={tmp_path / 'runs'}", f"faces.cache_dir={smoke_cfg.faces.cache_dir}", "train.epochs=1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "retinaface: demo train set" in r.stdout and "center seed 0: val macro F1" in r.stdout, r.stdout
    rows = [line for line in results.read_text().splitlines() if line.startswith("| 20")]
    assert [line.split(" | ")[2] for line in rows] == ["retinaface", "center"]
    assert all(line.split(" | ")[5] == "1/1" for line in rows[:1])  # RetinaFace finds the astronaut


def test_crops_quick_mode_runs_and_records(smoke_cfg, tmp_path):
    results = tmp_path / "RESULTS.md"
    r = _quick("crops.py", smoke_cfg, results)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    [row] = [line for line in r.stdout.splitlines() if line.startswith("32 | 8 | ")]
    assert "| yes |" in row, r.stdout  # the Ray tasks gave the crops one process gives
    table = results.read_text()
    assert "## Face crops: one process against shards on Ray" in table and table.count("| 32 | 8 |") == 1


def test_inference_quick_mode_runs_and_records(smoke_cfg, tmp_path):
    results = tmp_path / "RESULTS.md"
    r = _quick("inference.py", smoke_cfg, results)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "64 eval images, test_resnet at 32px, flip TTA on" in r.stdout, r.stdout
    assert "JPEG+crop b1" in r.stdout and "crops b64" in r.stdout
    rows = [line for line in r.stdout.splitlines() if line.strip().startswith(("ensemble of 5", "single model"))]
    assert len(rows) == 2 and all(len(line.split()) in (6, 7) for line in rows), r.stdout
    table = results.read_text()
    assert "## Inference" in table
    assert table.count("| ensemble of 5 | 64 |") == 1 and table.count("| single model | 64 |") == 1


def test_overhead_quick_mode_runs_and_records(smoke_cfg, tmp_path):
    results = tmp_path / "RESULTS.md"
    r = _quick("overhead.py", smoke_cfg, results, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "test_resnet at 32px, 2 epochs" in r.stdout, r.stdout
    for line in ("per trial:", "epochs alone:", "whole command:"):
        assert sum(line in out for out in r.stdout.splitlines()) == 1, r.stdout
    table = results.read_text()
    assert "## Overhead" in table and table.count("| test_resnet 32px 2 ep |") == 1
    assert not (Path(smoke_cfg.run.dir) / "overhead").exists()  # outputs went to a temporary run dir


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_gpu_check_without_gpu_exits_2_with_one_line(tmp_path):
    results = tmp_path / "RESULTS.md"
    r = subprocess.run(["bash", "bench/gpu_check.sh", "--results", str(results)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "no NVIDIA GPU on this machine" in r.stderr
    assert not results.exists()


def test_startup_quick_mode_times_a_bad_config_and_records(smoke_cfg, tmp_path):
    results = tmp_path / "RESULTS.md"
    r = subprocess.run([sys.executable, "bench/startup.py", "--quick", "--results", str(results),
                        f"data.root={smoke_cfg.data.root}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "bad config (train.lr=-1): exit 2: best of 2:" in r.stdout
    rows = [line for line in results.read_text().splitlines() if line.startswith("| 20")]
    assert len(rows) == 1 and "| bad config (train.lr=-1): exit 2 | 2 |" in rows[0]
    bad = subprocess.run([sys.executable, "bench/startup.py", "--repeats", "0"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --repeats must be >= 1, got 0"


def test_suite_cpu_quick_mode_charges_a_tests_command_to_that_test(tmp_path):
    results = tmp_path / "RESULTS.md"
    r = subprocess.run([sys.executable, "bench/suite_cpu.py", "--quick", "--results", str(results)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "1 passed" in r.stdout and "search.tune" in r.stdout
    rows = {line.split(" | ")[4]: line.split(" | ") for line in results.read_text().splitlines()
            if line.startswith("| 20")}
    assert set(rows) >= {"tests/test_tune.py"} and any(k.startswith("all (") for k in rows)
    test_row = rows["tests/test_tune.py"]
    assert float(test_row[5].rstrip(" s")) > 0 and int(test_row[7]) >= 1  # the command and the demo's workers


@pytest.mark.unit
def test_suite_cpu_charges_each_process_to_the_test_running_where_it_started():
    sys.path.insert(0, str(ROOT / "bench"))
    import suite_cpu

    assert suite_cpu.kind("ray::ImplicitFunc.train") == "Ray worker (trials, folds, tasks)"
    assert suite_cpu.kind("/x/ray/core/src/ray/raylet/raylet --raylet_socket_name=/t") == "Ray's own processes"
    assert suite_cpu.kind("/v/bin/python -m search.finalize --config c.yaml") == "search.finalize"
    assert suite_cpu.kind("/v/bin/python bench/tasks.py --quick") == "bench/tasks.py"
    assert suite_cpu.kind("/v/bin/python -u -c import sys;exec(eval(sys.stdin.readline()))") == "pytest"
    procs = [{"pid": 10, "ppid": 1, "first": 0.0, "cpu": 5.0, "cmd": "python -m pytest"},
             {"pid": 11, "ppid": 10, "first": 1.0, "cpu": 4.0, "cmd": "python -u -c import sys;exec(eval(...))"},
             {"pid": 20, "ppid": 11, "first": 12.0, "cpu": 9.0, "cmd": "python -m search.tune"},
             {"pid": 21, "ppid": 20, "first": 13.0, "cpu": 2.0, "cmd": "raylet"},
             {"pid": 22, "ppid": 21, "first": 14.0, "cpu": 7.0, "cmd": "ray::ImplicitFunc.train"},
             {"pid": 30, "ppid": 11, "first": 31.0, "cpu": 3.0, "cmd": "python -m search.combine"},
             {"pid": 40, "ppid": 1, "first": 5.0, "cpu": 99.0, "cmd": "another program"}]
    timeline = [{"pid": 11, "test": "tests/test_a.py::test_one", "start": 10.0, "end": 20.0},
                {"pid": 11, "test": "tests/test_b.py::test_two", "start": 30.0, "end": 40.0}]
    kept = suite_cpu.descendants(procs, root=10)
    assert [p["pid"] for p in kept] == [10, 11, 20, 21, 22, 30]  # not the other program
    per_file, per_kind, count = suite_cpu.attribute(kept, timeline)
    assert per_file == {"tests/test_a.py": 18.0, "tests/test_b.py": 3.0, "(pytest processes themselves)": 4.0}
    assert count["tests/test_a.py"] == 3 and per_kind["Ray worker (trials, folds, tasks)"] == 7.0
