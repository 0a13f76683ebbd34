"""Where the test suite's CPU time goes: per test file, and per kind of process the tests start.

    python bench/suite_cpu.py [--quick] [--top 15] [--results PATH] [-- PYTEST-ARGS ...]

Runs ``python -m pytest`` (default: ``-m "not unit"``, the integration and bench tiers, as CI runs them) while
reading every process's user + system time from /proc each second. Each process is charged to the test that was
running, in the pytest process (an xdist worker) it descends from, when it was first seen: the commands a test
starts, their local Rays, the trial and fold processes, and the test's own work in the worker. A process that
lives less than a second may be missed, and so is the last second of each; the controller's and the workers' own
idle time is charged to no test. Prints the files by CPU time and the process kinds, and appends one row per
file of the ``--top`` (and one for the whole run) to bench/RESULTS.md.

On 2 cores a suite whose processes keep both busy cannot take less wall time than its CPU time over 2: the
table says which tests that time is spent on. ``--quick``: one test that starts a command, which exits in seconds.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._results import RESULTS, append_row, machine  # noqa: E402
from maskclf.errors import InputError, cli  # noqa: E402

SECTION = "Test suite: where its CPU time goes (bench/suite_cpu.py)"
HEADER = ["date", "machine", "code", "pytest", "test file", "CPU", "share", "processes", "command"]
QUICK = ["tests/test_tune.py::test_bad_tracking_uri_fails_fast_before_ray", "-n0"]
_TICK = os.sysconf("SC_CLK_TCK")


def sample(procs: dict) -> None:
    """Update ``procs`` ((pid, start) -> record) with every process's CPU seconds, parent and command line."""
    now = time.time()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ..., utime, stime
        rec = procs.setdefault((int(name), fields[19]), {"pid": int(name), "ppid": int(fields[1]), "first": now,
                                                         "cmd": ""})
        rec["cpu"] = (int(fields[11]) + int(fields[12])) / _TICK
        rec["cmd"] = cmd or rec["cmd"]  # a process that is exiting has an empty command line


def kind(cmd: str) -> str:
    """What a process is, from its command line."""
    if cmd.startswith("ray::") or re.search(r"workers/(default|setup)_worker\.py", cmd):
        return "Ray worker (trials, folds, tasks)"
    if re.search(r"raylet|gcs_server|dashboard|log_monitor|runtime_env|monitor\.py", cmd):
        return "Ray's own processes"
    found = re.search(r"-m (search\.\w+|maskclf\.\w+|mlflow)\b", cmd) or re.search(r"(bench/\w+\.py)", cmd)
    if found:
        return found.group(1)
    if "chrom" in cmd:
        return "chromium"
    if "-m pytest" in cmd or "exec(eval(sys.stdin.readline()))" in cmd:
        return "pytest"
    return "other"


def attribute(procs: list[dict], timeline: list[dict]) -> tuple[dict, dict, dict]:
    """CPU seconds per test file, per process kind, and processes per test file."""
    runs: dict[int, list[tuple[float, float, str]]] = collections.defaultdict(list)  # pytest pid -> windows
    for t in timeline:
        runs[t["pid"]].append((t["start"], t["end"], t["test"].split("::")[0]))
    by_pid = {p["pid"]: p for p in procs}
    per_file, per_kind, count = collections.Counter(), collections.Counter(), collections.Counter()
    for p in procs:
        per_kind[kind(p["cmd"])] += p["cpu"]
        owner, hops = p, 0
        while owner is not None and owner["pid"] not in runs and hops < 50:
            owner, hops = by_pid.get(owner["ppid"]), hops + 1
        if owner is None or owner["pid"] not in runs:
            continue
        if owner is p:  # a pytest process's own time: charged to no test (imports, collection, idle)
            per_file["(pytest processes themselves)"] += p["cpu"]
            continue
        when = next((f for s, e, f in runs[owner["pid"]] if s - 1 <= p["first"] <= e + 1), "(between tests)")
        per_file[when] += p["cpu"]
        count[when] += 1
    return per_file, per_kind, count


def run(pytest_args: list[str], work: Path) -> tuple[int, float, list[dict], list[dict]]:
    """Run pytest under the sampler; its exit code, wall time, processes and timeline."""
    timeline = work / "timeline.jsonl"
    env = {**os.environ, "SUITE_CPU_TIMELINE": str(timeline),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # a temp folder of its own: pytest tidies old ones away, and another run's may be in use
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "bench._suite_timeline", "-p", "no:cacheprovider",
            f"--basetemp={work / 'pytest'}", *pytest_args]
    procs: dict = {}
    t0 = time.time()
    with open(work / "pytest.log", "w") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            sample(procs)
            time.sleep(1.0)
    wall = time.time() - t0
    return proc.returncode, wall, descendants(list(procs.values()), proc.pid), _timeline(timeline)


def descendants(procs: list[dict], root: int) -> list[dict]:
    """The processes of ``procs`` that are ``root`` or below it (by the parent each had when first seen)."""
    by_pid = {p["pid"]: p for p in procs}
    kept = []
    for p in procs:
        owner, hops = p, 0
        while owner is not None and owner["pid"] != root and hops < 50:
            owner, hops = by_pid.get(owner["ppid"]), hops + 1
        if owner is not None and owner["pid"] == root:
            kept.append(p)
    return kept


def _timeline(timeline: Path) -> list[dict]:
    return [json.loads(line) for line in timeline.read_text().splitlines()] if timeline.exists() else []


def _code() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "-"
    except OSError:
        return "-"


@cli
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python bench/suite_cpu.py", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one test that starts a command, which exits in seconds")
    p.add_argument("--top", type=int, default=15, help="test files written to the results (default 15)")
    p.add_argument("--results", default=str(RESULTS), help="results file (default bench/RESULTS.md)")
    args = p.parse_args(own)
    if args.top < 1:
        raise InputError(f"--top must be >= 1, got {args.top}")
    pytest_args = pytest_args or (QUICK if args.quick else ["-m", "not unit"])
    with tempfile.TemporaryDirectory(prefix="bench-suite-cpu-") as tmp:
        code, wall, procs, timeline = run(pytest_args, Path(tmp))
        tail = (Path(tmp) / "pytest.log").read_text().strip().splitlines()[-1:]
    if code not in (0, 1):
        raise SystemExit(f"pytest exited {code}: {' '.join(tail)}")
    per_file, per_kind, count = attribute(procs, timeline)
    total = sum(p["cpu"] for p in procs)
    print(f"pytest {shlex.join(pytest_args)}: exit {code}, {wall:.0f} s wall, {total:.0f} CPU-s in {len(procs)} "
          f"processes ({total / wall:.2f} cores busy on average); {' '.join(tail)}")
    print("\nCPU-s  share  processes  test file")
    for name, cpu in per_file.most_common():
        print(f"{cpu:6.0f}  {cpu / total:5.1%}  {count[name]:9d}  {name}")
    print("\nCPU-s  share  process kind")
    for name, cpu in per_kind.most_common():
        print(f"{cpu:6.0f}  {cpu / total:5.1%}  {name}")
    shown = shlex.join(pytest_args)
    cmd = "`" + shlex.join(["python", "bench/suite_cpu.py", *argv]) + "`"
    stamp, where, code_id = str(datetime.date.today()), machine(), _code()
    append_row(SECTION, HEADER, [stamp, where, code_id, f"`{shown}`", f"all ({wall:.0f} s wall)", f"{total:.0f} s",
                                 "100%", str(len(procs)), cmd], args.results)
    for name, cpu in per_file.most_common(args.top):
        append_row(SECTION, HEADER, [stamp, where, code_id, f"`{shown}`", name, f"{cpu:.0f} s",
                                     f"{cpu / total:.1%}", str(count[name]), cmd], args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
