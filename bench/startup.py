"""What a command costs before and around the training: a search's wall time and CPU time, and a bad config's.

    python bench/startup.py [--quick] [--repeats 3] [--results PATH] [key=value ...]

Runs, each ``--repeats`` times in a fresh ``run.dir`` (the crop cache is built once first and then hit):

- ``python -m search.tune --config conf/smoke.yaml``: a whole smoke search (2 trials of at most 6 tiny
  epochs, a local Ray, a new MLflow SQLite store and Optuna database), the search the tests run dozens of
  times; the trials train for a few seconds, so what the figure shows is mostly the start-up of the driver,
  Ray, MLflow and the trial processes;
- the same command with ``train.lr=-1``: a bad config, which should exit 2 before any of that starts.

CPU time is the user + system time of the command's whole process tree (the driver, Ray's node processes,
the trial workers): the sum over the tree read from /proc every 0.2 s while it runs (a process that lives less
than that is missed, and so is the last 0.2 s of each), or, where larger, what ``wait4`` reports for the command
and the processes it waited for (Ray's trial workers are not among them). Both undercount a little; the larger
is kept. Reports the best (least) of the repeats of each and appends a row per command to bench/RESULTS.md.
``--quick``: the bad config only, twice.
"""

from __future__ import annotations

import argparse
import datetime
import os
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


_TICK = os.sysconf("SC_CLK_TCK")


def _sample_tree(root: int, cpu: dict[int, float]) -> None:
    """Record in ``cpu`` the user + system seconds so far of ``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    used: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ..., utime, stime
        children.setdefault(int(fields[1]), []).append(int(name))
        used[int(name)] = (int(fields[11]) + int(fields[12])) / _TICK
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in used:
            cpu[pid] = max(cpu.get(pid, 0.0), used[pid])
        todo += children.get(pid, [])


def _run(argv: list[str], expect: int) -> tuple[float, float]:
    """Wall seconds and CPU seconds (the whole process tree) of ``python -m argv``."""
    cpu: dict[int, float] = {}
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "RAY_ADDRESS": "local"})
        while True:
            _sample_tree(proc.pid, cpu)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        if code != expect:
            err.seek(0)
            raise SystemExit(f"python -m {' '.join(argv)} exited {code}, not {expect}:\n{err.read()[-2000:]}")
    return wall, max(sum(cpu.values()), usage.ru_utime + usage.ru_stime)


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
