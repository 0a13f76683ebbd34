"""What a command costs before and around the training: a search's wall time and CPU time, and a bad config's.

    python bench/startup.py [--quick] [--repeats 3] [--results PATH] [key=value ...]

Runs, each ``--repeats`` times in a fresh ``run.dir`` (the crop cache is built once first and then hit):

- ``python -m search.tune --config conf/smoke.yaml``: a whole smoke search (2 trials of at most 6 tiny
  epochs, a local Ray, a new MLflow SQLite store and Optuna database), the search the tests run dozens of
  times; the trials train for a few seconds, so what the figure shows is mostly the start-up of the driver,
  Ray, MLflow and the trial processes;
- the same command with ``train.lr=-1``: a bad config, which should exit 2 before any of that starts.

CPU time is the user + system time of the command and every process it waited for (Ray's node processes
and, through them, the trial workers), from ``getrusage(RUSAGE_CHILDREN)``. Reports the best (least) of
the repeats of each and appends a row per command to bench/RESULTS.md. ``--quick``: the bad config only,
twice.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._results import RESULTS, append_row, machine  # noqa: E402
from maskclf.errors import InputError, cli  # noqa: E402

SECTION = "Start-up: what a smoke search and a bad config cost (wall and CPU time of the whole process tree)"
SMOKE = ROOT / "conf" / "smoke.yaml"


def _run(argv: list[str], expect: int) -> tuple[float, float]:
    """Wall seconds and CPU seconds (the command and what it waited for) of ``python -m argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "RAY_ADDRESS": "local"})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != expect:
        raise SystemExit(f"python -m {' '.join(argv)} exited {r.returncode}, not {expect}:\n{r.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/startup.py", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the bad config only, twice")
    p.add_argument("--repeats", type=int, default=3, help="runs of each command; the best is kept (default 3)")
    p.add_argument("--results", default=str(RESULTS), help="results file (default bench/RESULTS.md)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="for every run (data.root=..., ...)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        raise InputError(f"--repeats must be >= 1, got {args.repeats}")
    repeats = 2 if args.quick else args.repeats
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        base = ["search.tune", "--config", str(SMOKE), f"faces.cache_dir={tmp}/cache", *args.overrides]
        cases = [("bad config (train.lr=-1): exit 2", ["train.lr=-1"], 2)]
        if not args.quick:
            _run([*base, f"run.dir={tmp}/warm"], 0)  # the demo data and crop cache, once
            cases.insert(0, ("smoke search.tune (2 trials)", [], 0))
        rows = []
        for what, extra, code in cases:
            runs = [_run([*base, f"run.dir={tmp}/run{i}", *extra], code) for i in range(repeats)]
            wall, cpu = min(w for w, _ in runs), min(c for _, c in runs)
            print(f"{what}: best of {repeats}: {wall:.2f} s wall, {cpu:.2f} s CPU  (all: "
                  + ", ".join(f"{w:.2f}/{c:.2f}" for w, c in runs) + ")")
            rows.append((what, wall, cpu))
    cmd = "python bench/startup.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for what, wall, cpu in rows:
        append_row(SECTION, ["date", "machine", "command measured", "repeats", "wall (best)", "CPU (best)", "command"],
                   [str(datetime.date.today()), machine(), what, str(repeats), f"{wall:.2f} s", f"{cpu:.2f} s",
                    f"`{cmd.strip()}`"], args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
