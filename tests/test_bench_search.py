"""bench/search_efficiency.py (replayed searches), bench/search_live.py and bench/search_profile.py: their
quick modes, so they do not rot (figures not asserted), and the summaries' rules."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT


QUICK_EPOCHS = 3  # half the smoke config's: these runs check that the script works, not its figures


def _quick(script: str, smoke_cfg, *args: str) -> subprocess.CompletedProcess:
    """``bench/<script> --quick ARGS`` on the smoke data, in a Ray of its own."""
    return subprocess.run([sys.executable, f"bench/{script}", "--quick", *args, f"data.root={smoke_cfg.data.root}",
                           f"run.dir={smoke_cfg.run.dir}", f"faces.cache_dir={smoke_cfg.faces.cache_dir}"],
                          cwd=ROOT, env={**os.environ, "RAY_ADDRESS": ""}, capture_output=True, text=True, timeout=600)


def test_live_search_bench_quick_mode_runs_and_records(smoke_cfg, tmp_path):
    results, png = tmp_path / "RESULTS.md", tmp_path / "curve.png"
    r = _quick("search_live.py", smoke_cfg, "--results", str(results), "--plot", str(png),
               f"train.epochs={QUICK_EPOCHS}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "epochs to random final" in r.stdout and "Goal: ours (the config's search with ASHA)" in r.stdout
    table = results.read_text()
    assert "## Search: best val F1 against epochs spent" in table
    s = smoke_cfg.search
    ours = f"ours: ASHA ({s.sampler}, grace {s.grace_period}, rf {s.reduction_factor}, startup {s.n_startup_trials}, " \
           f"{s.stopped_trials})"
    for label in (ours, "random search, full epochs", "TPE, full epochs"):
        assert table.count(f"| {label} | {2 * QUICK_EPOCHS} | 1 |") == 1, table
    # the verdict follows from the figures it states: met when ours reached random's final best within the goal
    said = re.findall(r"\*\*(met|not met)\*\*", table)
    reached = re.search(r"ours reached it after (\d+) of (\d+) epochs", table)
    sys.path.insert(0, str(ROOT / "bench"))
    from search_live import GOAL

    met = reached is not None and int(reached[1]) <= int(reached[2]) * GOAL
    assert said == ["met" if met else "not met"], table
    assert reached is not None or f"ours did not reach it within the {2 * QUICK_EPOCHS} epochs" in table
    assert png.is_file() and png.stat().st_size > 0
    studies = {p.name for p in (Path(smoke_cfg.run.dir) / "bench-search" / "tune").iterdir() if p.is_dir()}
    b = 2 * QUICK_EPOCHS
    tag = f"{s.sampler}-g{s.grace_period}r{s.reduction_factor}n{s.n_startup_trials}{s.stopped_trials[0]}{s.brackets}"
    assert studies == {f"ours-{tag}-b{b}-s0", f"random-b{b}-s0", f"tpe-full-b{b}-s0"}


def test_replayed_search_bench_quick_mode_writes_its_summary_and_resumes(tmp_path):
    out, png, results = tmp_path / "se.json", tmp_path / "se.png", tmp_path / "RESULTS.md"
    cmd = [sys.executable, "bench/search_efficiency.py", "--quick", "--parallel", "2", "--json", str(out),
           "--plot", str(png), "--results", str(results), f"run.dir={tmp_path / 'runs'}"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(out.read_text())
    records = summary["records"]
    assert {(x["method"], x["budget"]) for x in records} == {(m, b) for m in ("random", "ours", "pruned", "top-k")
                                                              for b in (4, 8)}
    for x in records:
        assert x["seeds"] == 2 and 0 < x["final_best_median"] <= 1
        assert {"median_fraction", "ci_low", "ci_high"} <= set(x)
        if x["median_fraction"] is not None and x["ci_low"] is not None:
            assert x["ci_low"] <= x["median_fraction"]
    assert png.is_file() and png.stat().st_size > 0
    rows = [line for line in results.read_text().splitlines() if "`python bench/search_efficiency.py --quick" in line]
    assert len(rows) == len(records)
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "8 studies recorded" in again.stdout and "0 to run" in again.stdout
    assert json.loads(out.read_text())["records"] == records


def _efficiency_module():
    sys.path.insert(0, str(ROOT / "bench"))
    import search_efficiency

    return search_efficiency


@pytest.mark.unit
def test_fraction_of_budget_counts_epochs_to_random_s_median_final_best():
    se = _efficiency_module()
    inf = float("inf")
    # 2 seeds x a budget of 2 trials of 2 epochs; random's finals 0.4 and 0.6 give the target 0.5
    curves = {"random": {2: np.array([[0.1, 0.2, 0.3, 0.4], [0.3, 0.6, 0.6, 0.6]])},
              "ours": {2: np.array([[0.5, 0.5, 0.5, 0.5], [0.2, 0.2, 0.2, 0.3]])}}
    records = se.summarize(curves, ["random", "ours"], seeds=2, budgets=[2], epochs=2, draws=200)
    rnd, ours = records
    assert rnd["target"] == ours["target"] == 0.5
    # random: seed 1 after 2 of 4 epochs, seed 0 never; ours: seed 0 after 1 epoch, seed 1 never
    assert rnd["median_fraction"] is None and rnd["reached"] == ours["reached"] == 1
    assert np.isclose(se._needed(curves["ours"][2], 0.5, None) / 4, [0.25, inf]).all()
    assert ours["final_best_median"] == 0.4 and rnd["final_best_median"] == 0.5
    assert se.best_curve([[0, 1, 0.2], [0, 2, 0.1], [1, 1, 0.5]], 5).tolist() == [0.2, 0.2, 0.5, 0.5, 0.5]


def _profile_module():
    sys.path.insert(0, str(ROOT / "bench"))
    import search_profile

    return search_profile


@pytest.mark.unit
def test_replayed_asha_stops_trials_below_the_rung_quantile_and_spends_the_budget():
    sp = _profile_module()
    curves = np.array([[0.5, 0.6, 0.7, 0.8], [0.1, 0.1, 0.1, 0.1], [0.6, 0.7, 0.8, 0.9], [0.2, 0.2, 0.2, 0.2]])
    best, started = sp.replay(curves, np.arange(4), budget=8, grace=1, rf=2, concurrent=1)
    # trial 0 is the first at rung 1 and at rung 2 (runs 4 epochs), trial 1 stops at 1, trial 2 beats
    # the rung-1 median and trains on, so the budget ends after 4 + 1 + 3 epochs with 0.8 the best
    assert started == 3 and len(best) == 8
    np.testing.assert_allclose(best, [0.5, 0.6, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8])
    full, n_full = sp.replay(curves, np.arange(4), budget=8, grace=None, rf=2, concurrent=1)
    assert n_full == 2 and full[-1] == 0.8
    assert sp.rungs(1, 3, 8) == [1, 3] and sp.rungs(2, 2, 8) == [2, 4]


@pytest.mark.unit
def test_oracle_skips_every_trial_that_ends_below_the_target_after_one_epoch():
    sp = _profile_module()
    curves = np.array([[0.1, 0.2, 0.3], [0.0, 0.1, 0.2], [0.2, 0.5, 0.9]])
    assert sp.oracle_epochs(curves, np.arange(3), target=0.9, concurrent=1) == 1 + 1 + 3
    with pytest.raises(ValueError):
        sp.oracle_epochs(curves, np.arange(3), target=0.95)


def test_search_profile_quick_mode_runs_and_records(smoke_cfg, tmp_path):
    results = tmp_path / "RESULTS.md"
    r = _quick("search_profile.py", smoke_cfg, "--results", str(results))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Spearman of val F1" in r.stdout and "oracle stopping: median" in r.stdout
    table = results.read_text()
    assert "## Search profile: what early stopping can gain" in table
    assert table.count("`python bench/search_profile.py --quick") == 1
