"""bench/real_scale.py --quick: the demo generator, search.tune and search.finalize run as a user runs them, every
phase timed and measured from /proc (figures not asserted, only that they were taken), and a rerun that skips
the finished steps."""

import json
import subprocess
import sys

from tests.conftest import ROOT

TUNE = ["start-up", "validation", "face crops", "trial start", "first epoch", "trials", "whole command"]
FINALIZE = ["validation", "face crops", "fold start", "first epoch", "folds", "predictions", "files and model",
            "whole command"]


def _bench(tmp_path, results):
    return subprocess.run([sys.executable, "bench/real_scale.py", "--quick", "--data", str(tmp_path / "data"),
                           "--run-dir", str(tmp_path / "run"), "--results", str(results)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_real_scale_quick_mode_measures_every_phase_and_a_rerun_skips_it(tmp_path):
    results = tmp_path / "RESULTS.md"
    r = _bench(tmp_path, results)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]

    # the dataset was generated aside and renamed into place
    assert (tmp_path / "data" / "train" / "train.csv").is_file() and (tmp_path / "data" / "eval" / "info.csv").is_file()
    assert not (tmp_path / ".data.partial").exists()
    state = json.loads((tmp_path / "run" / "real_scale.json").read_text())
    assert state["people"] == {"train": 40, "eval": 10, "train_images": 280, "eval_images": 70}
    steps = state["steps"]
    assert list(steps) == ["dataset", "tune", "finalize"]
    assert all(s["status"] == "done" and s["rc"] == 0 and not s["resumed"] for s in steps.values()), steps
    assert [p["phase"] for p in steps["dataset"]["phases"]] == ["generate"]
    assert [p["phase"] for p in steps["tune"]["phases"]] == TUNE, steps["tune"]["phases"]
    assert [p["phase"] for p in steps["finalize"]["phases"]] == FINALIZE, steps["finalize"]["phases"]
    for step in steps.values():
        for p in step["phases"]:
            assert p["wall_s"] > 0 and p["driver_rss"] > 0 and p["driver_private"] > 0, p
            assert 0 < p["driver_heap"] <= p["driver_rss"], p  # the heap (anonymous memory) is resident
            assert p["all_private"] >= p["driver_private"] and p["object_store"] >= 0, p
        if len(step["phases"]) > 1:  # the phases follow one another from the command's start to its end
            *parts, whole = step["phases"]
            assert abs(sum(p["wall_s"] for p in parts) - whole["wall_s"]) < 0.1, step["phases"]
    # Ray's processes are in the command's tree: the trial and fold processes were seen and measured
    for step in ("tune", "finalize"):
        phase = next(p for p in steps[step]["phases"] if p["phase"] == "first epoch")
        assert phase["trial_private"] > 0 and phase["trial_heap"] > 0 and phase["trial_processes"] >= 1, phase
        names = steps[step]["processes"]
        assert "raylet" in names and any(n.startswith("ray::ImplicitFunc") for n in names), names
        assert not steps[step]["left_running"], steps[step]["left_running"]

    # the printed table and the rows: one per phase and command
    for name in {*TUNE, *FINALIZE, "generate"}:
        assert f"  {name}  " in r.stdout, r.stdout
    table = results.read_text()
    assert "## Real scale: the competition's size through search.tune and search.finalize" in table
    recorded = [line for line in table.splitlines() if line.startswith("| ") and "| 40 + 10 |" in line]
    assert len(recorded) == 1 + len(TUNE) + len(FINALIZE), table

    # a rerun skips every finished step, prints the same table and records no row twice
    again = _bench(tmp_path, results)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert again.stderr.count(", skipped") == 3, again.stderr
    assert again.stdout == r.stdout
    assert results.read_text() == table
    state2 = json.loads((tmp_path / "run" / "real_scale.json").read_text())
    assert {k: s["finished_at"] for k, s in state2["steps"].items()} == \
        {k: s["finished_at"] for k, s in steps.items()}
