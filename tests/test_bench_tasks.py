"""bench/tasks.py --quick: both arms (an 18-way study, three task studies and their combination) run through
the real commands, and a rerun resumes from its record instead of training again (figures not asserted)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, copy_run_dir

sys.path.insert(0, str(ROOT / "bench"))
import tasks as bench_tasks  # noqa: E402


@pytest.mark.unit
def test_epoch_shares_are_whole_add_up_and_give_each_task_one():
    assert bench_tasks.split(22) == {"mask": 4, "gender": 8, "age": 10}
    assert bench_tasks.split(8) == {"mask": 2, "gender": 3, "age": 3}
    assert bench_tasks.split(2) == {"mask": 1, "gender": 1, "age": 1}  # at least one each, even past the total


def test_quick_mode_runs_both_arms_records_and_resumes(tasks_quick, tmp_path):
    table = tasks_quick.results.read_text()
    assert "## Tasks: one 18-way model against separate mask, gender and age models" in table
    assert table.count("| one 18-way study:") == 1 and table.count("| mask / gender / age studies:") == 1
    state = json.loads((tasks_quick.run_dir / "bench_tasks.json").read_text())
    assert set(state) == {"all/tune", "all/finalize", "mask/tune", "mask/finalize", "gender/tune",
                          "gender/finalize", "age/tune", "age/finalize", "tasks/combine"}
    combined = json.loads((tasks_quick.run_dir / "combined" / "metrics.json").read_text())
    assert {t: s["study"] for t, s in combined["sources"].items()} == {"mask": "mask", "gender": "gender", "age": "age"}

    # the rerun, on a copy (other tests read the original): every step is taken from the record
    run_dir = copy_run_dir(tasks_quick.run_dir, tmp_path / "runs")
    results = tmp_path / "RESULTS.md"
    cmd = [sys.executable, "bench/tasks.py", "--quick", "--results", str(results),
           *(o for o in tasks_quick.overrides if not o.startswith("run.dir=")), f"run.dir={run_dir}"]
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("done before") == len(state), again.stdout[-3000:]
    assert not (run_dir / "combined-2").exists()
    assert results.read_text().count("| one 18-way study:") == 1
