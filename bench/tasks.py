"""One 18-way model against the write-up's three task models, on the same epoch budget.

    python bench/tasks.py [--quick] [--results PATH] [--config conf/search.yaml] [key=value ...]

Two arms, each run with the project's own commands (as subprocesses, so each step is what a user runs):

- ``all``: ``search.tune`` then ``search.finalize`` of one 18-way study (the config as it is);
- ``tasks``: a ``search.tune`` and a ``search.finalize`` per task (``model.task=mask|gender|age``), then
  ``search.combine``. The 18-way arm's epochs are split between the three tasks (:data:`SPLIT`): each task
  study is stopped by ``search.budget_epochs`` at its share of the 18-way search's epochs, and its fold
  models train its share of ``finalize.epochs``, so both arms train about as many epochs in all. Age, the
  hardest task, gets the largest share, mask, nearly solved after one epoch, the smallest. With
  ``--split full`` each task study gets the 18-way arm's whole budget instead (studies ``mask-full``, ...):
  three times the compute, as the write-up's team spent it.

Every step's wall time is kept in ``<run.dir>/bench_tasks.json``; running the command again skips the
finished steps (and the commands themselves resume an interrupted step). Prints the table and appends
one row per arm to bench/RESULTS.md: out-of-fold and eval macro F1, the per-age-band OOF F1, epochs trained
and wall time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._results import RESULTS, append_row, machine  # noqa: E402
from maskclf import config  # noqa: E402
from maskclf.errors import cli  # noqa: E402
from search.study import settings

SECTION = "Tasks: one 18-way model against separate mask, gender and age models"
SMOKE = Path(__file__).resolve().parent.parent / "conf" / "smoke.yaml"
# each task's share of the 18-way arm's search and finalize epochs
SPLIT = {"mask": 0.2, "gender": 0.35, "age": 0.45}


def split(total: int, shares: dict[str, float] = SPLIT) -> dict[str, int]:
    """``total`` epochs split by ``shares`` into whole numbers (at least 1 each) that add up to ``total``
    (largest remainders first)."""
    raw = {k: total * v for k, v in shares.items()}
    out = {k: max(1, math.floor(v)) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - math.floor(raw[k]), reverse=True):
        if sum(out.values()) >= total:
            break
        out[k] += 1
    return out


def _run(argv: list[str], state: dict, key: str, state_file: Path) -> None:
    """Run one command unless ``state`` says it finished; record its wall time."""
    if key in state:
        print(f"== {key}: done before ({state[key]:.0f} s)", flush=True)
        return
    print(f"== {key}: python -m {' '.join(argv)}", flush=True)
    t0 = time.monotonic()
    # each command starts a Ray of its own unless told where one is: joining whatever Ray runs on this machine
    # (a test suite's, another benchmark's) would tie the step's life to that one's
    env = {**os.environ, "RAY_ADDRESS": os.environ.get("RAY_ADDRESS", "local")}
    r = subprocess.run([sys.executable, "-m", *argv], env=env)
    if r.returncode != 0:
        raise SystemExit(f"{key} failed (exit {r.returncode}); run the benchmark again to resume it")
    state[key] = time.monotonic() - t0
    state_file.write_text(json.dumps(state, indent=2) + "\n")


def _epochs_searched(run_dir: Path, study: str) -> int:
    return int(pd.read_csv(run_dir / study / "trials.csv")["epochs"].sum())


def _latest(folder: Path, prefix: str, studies: dict[str, str] | None = None) -> dict:
    """metrics.json of the newest finished ``<prefix>``, ``<prefix>-2``, ... in ``folder`` (for a combination:
    the newest of ``studies``)."""
    done = [json.loads((p / "metrics.json").read_text()) | {"_dir": p} for p in folder.glob(f"{prefix}*")
            if (p / "metrics.json").is_file()]
    if studies:
        done = [m for m in done if {t: s["study"] for t, s in m.get("sources", {}).items()} == studies]
    if not done:
        raise SystemExit(f"no finished {prefix} in {folder}")
    m = max(done, key=lambda m: (m["_dir"] / "metrics.json").stat().st_mtime)
    if "task_f1" not in m:  # each task's macro F1 from the 18-class out-of-fold probabilities
        from maskclf.ensemble import task_f1

        oof = pd.read_csv(m["_dir"] / "oof.csv")
        m["task_f1"] = task_f1(oof["label"].to_numpy(), oof[[f"p{c}" for c in range(18)]].to_numpy())
    return m


def run_arms(args, cfg: config.Config) -> dict:
    """Run (or resume) both arms; returns each arm's figures."""
    base = ["--config", str(args.config), *args.overrides]
    run_dir = config.run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_file = run_dir / "bench_tasks.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    _run(["search.tune", *base, "run.study=all"], state, "all/tune", state_file)
    _run(["search.finalize", *base, "run.study=all"], state, "all/finalize", state_file)
    searched = _epochs_searched(run_dir, "all")
    final_epochs = cfg.finalize.epochs or cfg.train.epochs
    if args.split == "equal":
        budgets, epochs, suffix = split(searched), split(final_epochs), ""
    else:  # the write-up's way: each task model gets what the 18-way one had
        budgets, epochs, suffix = dict.fromkeys(SPLIT, searched), dict.fromkeys(SPLIT, final_epochs), "-full"
    names = {t: f"{t}{suffix}" for t in SPLIT}
    for task, name in names.items():
        study = [f"run.study={name}", f"model.task={task}"]
        _run(["search.tune", *base, *study, f"search.budget_epochs={budgets[task]}"], state, f"{name}/tune",
             state_file)
        _run(["search.finalize", *base, *study, f"finalize.epochs={epochs[task]}"], state, f"{name}/finalize",
             state_file)
    _run(["search.combine", *base, *(f"{t}={n}" for t, n in names.items())], state, f"tasks{suffix}/combine",
         state_file)
    arms = {"all": {"m": _latest(run_dir / "all", "final"), "searched": searched,
                    "final": final_epochs * cfg.folds.n, "wall": state["all/tune"] + state["all/finalize"],
                    "what": f"one 18-way study: {searched} search epochs, folds of {final_epochs} epochs"},
            "tasks": {"m": _latest(run_dir, "combined", names),
                      "searched": sum(_epochs_searched(run_dir, n) for n in names.values()),
                      "final": sum(epochs.values()) * cfg.folds.n,
                      "wall": sum(state[f"{n}/{step}"] for n in names.values() for step in ("tune", "finalize")) +
                              state[f"tasks{suffix}/combine"],
                      "what": "mask / gender / age studies: search budgets " +
                              " / ".join(str(budgets[t]) for t in SPLIT) + " epochs, folds of " +
                              " / ".join(str(epochs[t]) for t in SPLIT) + " epochs"}}
    return arms


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _row(arm: dict) -> list[str]:
    m = arm["m"]
    bands = m.get("band_f1", {})
    return [arm["what"], _fmt(m.get("oof_f1")), _fmt(m.get("eval_f1")),
            " / ".join(_fmt(bands.get(b)) for b in ("<30", "30-59", ">=60")),
            " / ".join(_fmt(m["task_f1"].get(t)) for t in ("mask", "gender", "age")),
            " / ".join(_fmt(m.get(f"{t}_acc")) for t in ("mask", "gender", "age")),
            f"{arm['searched']} + {arm['final']}", f"{arm['wall'] / 60:.1f} min"]


HEADER = ["arm", "OOF macro F1", "eval macro F1", "OOF F1 by age band (<30 / 30-59 / >=60)",
          "OOF task macro F1 (mask / gender / age)", "OOF mask / gender / age accuracy", "epochs (search + folds)", "wall time"]


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/tasks.py", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None, help="YAML config (default conf/search.yaml; --quick: conf/smoke.yaml)")
    p.add_argument("--quick", action="store_true", help="the smoke config, one 1-epoch trial per study, folds 0 and 1")
    p.add_argument("--split", choices=("equal", "full"), default="equal",
                   help="equal: the 18-way arm's epochs shared by the three tasks (default); full: each task model "
                        "gets as many as the 18-way one (three times the budget, as the write-up spent it)")
    p.add_argument("--results", default=str(RESULTS), help="results file (default bench/RESULTS.md)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    args.config = args.config or str(SMOKE if args.quick else config.DEFAULT_CONFIG)
    if args.quick:
        args.overrides = ["train.epochs=1", "search.grace_period=1", "search.num_samples=1", "finalize.folds=0,1",
                          *args.overrides]
    cfg = settings.load(args.config, args.overrides)
    arms = run_arms(args, cfg)
    print(" | ".join(HEADER))
    for arm in arms.values():
        print(" | ".join(_row(arm)))
    cmd = "python bench/tasks.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for arm in arms.values():
        append_row(SECTION, ["date", "machine", *HEADER, "command"],
                   [str(datetime.date.today()), machine(), *_row(arm), f"`{cmd.strip()}`"], args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
