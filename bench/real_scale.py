"""The whole pipeline at the competition's size: a 2,700 + 1,800-people dataset through ``python -m search.tune``
and ``python -m search.finalize``, each phase timed and its memory taken from /proc.

    python bench/real_scale.py [--data PATH] [--people 2700] [--eval-people 1800] [--quick]
                               [--results PATH] [--run-dir PATH] [--interval S] [key=value ...]

Three steps, each a subprocess run as a user runs it, from the repository root:

1. dataset: ``python -m maskclf.demo --people N --eval-people M`` (18,900 + 12,600 photos at 384x512 by default),
   generated once at ``--data`` (default ``~/maskclf-data/real-scale-N-M``, outside the repository) and reused
   whenever it holds ``train/train.csv`` and ``eval/info.csv``. It is written into a hidden sibling folder and
   renamed when complete: the generator moves ``train/`` and ``eval/`` into place one after the other, so a
   generation killed between the two would leave a train set that looks complete.
2. tune: ``python -m search.tune --config conf/competition.yaml`` with the competition's data and crop settings
   (256-px MTCNN crops) and CPU-sized trials: 2 trials of 1 epoch at 48 px, one core each, 2 at once, on
   ``tf_efficientnet_lite0`` with its offline ImageNet weights (the competition's space with its backbones
   reduced to that one), in a private local Ray. ``data.corrections`` is off: the demo's ids run 000001,
   000002, ... like the real ones, so the real data's fixes (000020's swapped photos, ...) would corrupt
   the labels of demo people who happen to have those ids.
3. finalize: ``python -m search.finalize`` with the same settings on folds 0 and 1 (``finalize.folds=0,1``),
   1 epoch each, then its out-of-fold and eval predictions, files and registered model.

Extra ``key=value`` arguments go to both commands after these, so they win (e.g. ``search.num_samples=4``).

While a command runs, a sampler thread reads /proc every ``--interval`` seconds (default 1) for the command's
process tree: the driver and every process descending from it or in its session (the command runs in a session
of its own; Ray's GCS, raylet and worker processes are the driver's children and grandchildren). For each
process, resident and private memory (``Rss``; ``Private_Clean + Private_Dirty`` of /proc/PID/smaps_rollup:
pages that one process alone maps at the moment, so the object store's pages, a memory-mapped cache file's pages
and the shared libraries' pages that no other process has touched yet count too: a driver's private figure drops
when trial processes load torch), and its heap (``Anonymous``: memory that is the process's own, in no file and
in no shared memory: what a copy of the crops in a process would grow; the goal's "memory above the shared
crops"). Trial and fold processes (the "trial" columns) are the Ray actors named ``ray::ImplicitFunc...`` (or
``ray::_Inner...``) in /proc/PID/cmdline, and the workers that run a fold model's predictions (``ray::predict_fold``). The object store is the used bytes of /dev/shm less what was used when the command started
(Ray keeps its store there unless /dev/shm is too small; other users of /dev/shm move this figure too).

The phases come from the command's own lines, timestamped as they arrive, and from the trials' own reports:

- search.tune: start-up (imports, MLflow and Optuna stores, Ray) until ``started a local Ray``; validation until
  ``dataset ...:``; face crops until the crop cache line (``face crop cache miss, built ...`` or a hit); trial
  start (Tune, the crops into the object store, trial processes, their imports and data, the model) until the
  first trial begins its first epoch; the first epoch (training and validation) until that trial reports; the
  trials until the command ends (the other trials, the MLflow wrap-up, plots, best config). A report's moment
  is its checkpoint's appearance in Tune's storage (``<run.dir>/tune``); the epoch's beginning is that less the
  ``epoch_time`` the trial reported.
- search.finalize: validation (with imports) until ``dataset ...:``; face crops (train crops, eval crops) until
  the last crop cache line; fold start (Ray, fold processes) until the first fold begins its first epoch; that
  epoch until the first ``fold k: epoch`` line; the folds until the last one; the predictions (each fold model
  on its out-of-fold images and on the eval images, as Ray tasks) until the last ``fold k: predicted`` line; files
  and model (plots, MLflow artifacts, the registered model) until the command ends.

A phase whose end was not seen (a resumed finalize whose folds were complete trains none) is counted in the next.

For each phase: wall time, the driver's peak RSS and private memory, the largest trial (or fold) process's peak
private memory, the peak private memory of all the processes together and the object store's peak. The table
is printed and appended to bench/RESULTS.md, one row per phase and command, with the people counts.

Resumable: ``<run-dir>/real_scale.json`` (default run dir: ``--data`` with ``-run`` added) keeps every finished
step with its measurements, and a rerun skips finished steps and prints them again (their rows go to a results
file once). An interrupted step runs again, and its command resumes where it stopped (the study, the folds).
Each command's output, timestamped, is in ``<run-dir>/logs/<step>.log`` and its samples in
``<run-dir>/logs/<step>-memory.csv``.

``--quick``: 40 + 10 people, 64-px crops, one 32-px trial, otherwise the same: a check that the benchmark runs,
about a minute and a half on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import yaml

from maskclf.errors import InputError, RunFailed, cli

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_row, machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = Path("conf") / "competition.yaml"  # relative: the commands run from the repository root
STATE = "real_scale.json"
SECTION = "Real scale: the competition's size through search.tune and search.finalize"
HEADER = ["date", "machine", "people (train + eval)", "command", "phase", "wall", "driver RSS", "driver private",
          "driver heap", "largest trial private", "largest trial heap", "all processes private", "object store",
          "bench command"]
BACKBONE = "tf_efficientnet_lite0"  # the backbone with offline ImageNet weights (the weights extra)
STEPS = {"dataset": "python -m maskclf.demo", "tune": "python -m search.tune", "finalize": "python -m search.finalize"}
PHOTOS = 7  # per person
WHOLE = "whole command"

# the command lines that end a phase
MARKS = {
    "ray": re.compile(r"^(started a local Ray|connecting to the Ray cluster|Ray cluster:)"),
    "dataset": re.compile(r"^dataset .+: "),
    "crops": re.compile(r"^face crop cache (hit|miss)"),
    "trial_done": re.compile(r"^\[\d+/\d+ done\] trial "),
    "fold_epoch": re.compile(r"^fold (\d+): epoch (\d+)/\d+ "),
    "final_dir": re.compile(r"^(?:finalizing|continuing the interrupted finalize) in (.+?): folds "),
    "predicted": re.compile(r"^fold \d+: predicted \d+ train images"),
}
PROGRESS = re.compile(r"\d+%\||\d+(\.\d+)?(it/s|s/it)\]")  # a progress bar's update


# ---- /proc ---------------------------------------------------------------------------------------------------

def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id) of every process."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()  # the name in (...) may hold spaces
        out[int(name)] = (int(fields[1]), int(fields[3]))
    return out


def tree(root: int) -> list[int]:
    """``root`` and every process that descends from it or belongs to its session (``root`` leads a session)."""
    table = _processes()
    children = defaultdict(list)
    for pid, (parent, _) in table.items():
        children[parent].append(pid)
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += children[pid]
    seen |= {pid for pid, (_, session) in table.items() if session == root}
    return sorted(seen & table.keys())


def session(root: int) -> list[int]:
    """The processes still in ``root``'s session."""
    return [pid for pid, (_, s) in _processes().items() if s == root]


def memory(pid: int) -> tuple[int, int, int] | None:
    """(resident, private, heap) bytes of a process from /proc/PID/smaps_rollup; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    rss = private = heap = 0
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key == "Rss":
            rss = int(rest.split()[0]) * 1024
        elif key in ("Private_Clean", "Private_Dirty"):
            private += int(rest.split()[0]) * 1024
        elif key == "Anonymous":
            heap = int(rest.split()[0]) * 1024
    return rss, private, heap


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def is_trial(cmd: str) -> bool:
    """A Ray actor running a trial or a fold, or a task running a fold model's predictions: Ray names the process
    after the actor's class and method (``ray::ImplicitFunc.train`` for a function trainable, ``ray::_Inner`` for
    a wrapped class) or the task's function (``ray::predict_fold``)."""
    return cmd.startswith("ray::") and ("ImplicitFunc" in cmd or "_Inner" in cmd or "predict_fold" in cmd)


def short_name(cmd: str) -> str:
    """What a person would call the process: ``ray::ImplicitFunc.train``, ``raylet``, ``python search.tune``."""
    words = cmd.split()
    if not words:
        return "?"
    if words[0].startswith("ray::"):
        return words[0]
    exe = os.path.basename(words[0])
    if exe.startswith("python"):
        if "-m" in words[1:-1]:
            return f"python -m {words[words.index('-m') + 1]}"
        script = next((w for w in words[1:] if w.endswith(".py")), "")
        return f"python {os.path.basename(script)}" if script else "python"
    return exe


def shm_used() -> int:
    st = os.statvfs("/dev/shm")
    return (st.f_blocks - st.f_bfree) * st.f_frsize


class Sampler(threading.Thread):
    """Every ``interval`` seconds, the memory of a command's process tree and the object store; and the moment
    the first trial reported (its first checkpoint or result under ``watch``, Tune's storage)."""

    def __init__(self, pid: int, interval: float, t0: float, wall0: float, watch: Path | None):
        super().__init__(daemon=True)
        self.pid, self.interval, self.t0, self.wall0, self.watch = pid, interval, t0, wall0, watch
        self.baseline = shm_used()
        self.samples: list[dict] = []
        self.trials: set[int] = set()
        self.names: Counter = Counter()  # the most processes of each name at once
        self.first_report: tuple[float, str] | None = None  # (seconds from the start, the trial's folder)
        self._done = threading.Event()

    def run(self) -> None:
        while True:
            self.sample()
            if self._done.wait(self.interval):
                return

    def stop(self) -> None:
        self._done.set()
        self.join()

    def sample(self) -> None:
        t = time.monotonic() - self.t0
        driver_rss = driver_private = driver_heap = total = 0
        trials: dict[int, int] = {}
        heaps: dict[int, int] = {}
        names: Counter = Counter()
        for pid in tree(self.pid):
            mem = memory(pid)
            if mem is None:
                continue
            cmd = cmdline(pid)
            names[short_name(cmd)] += 1
            if pid == self.pid:
                driver_rss, driver_private, driver_heap = mem
            elif pid in self.trials or is_trial(cmd):
                self.trials.add(pid)
                trials[pid], heaps[pid] = mem[1], mem[2]
            total += mem[1]
        for name, n in names.items():
            self.names[name] = max(self.names[name], n)
        self.samples.append({"t": round(t, 2), "driver_rss": driver_rss, "driver_private": driver_private,
                             "driver_heap": driver_heap, "trial_private": max(trials.values(), default=0),
                             "trial_heap": max(heaps.values(), default=0), "trial_processes": len(trials),
                             "all_private": total, "processes": sum(names.values()),
                             "object_store": max(shm_used() - self.baseline, 0)})
        if self.watch is not None and self.first_report is None:
            self.first_report = self._reported()

    def _reported(self) -> tuple[float, str] | None:
        """The first trial report since the start, if there is one yet: its checkpoint's time (a trial saves one
        with every report) and the trial's folder."""
        found = []
        for entry in self.watch.glob("*/*/checkpoint_*/*"):  # its files: a resumed trial rewrites them in place
            try:
                mtime = entry.stat().st_mtime
            except OSError:
                continue
            if mtime >= self.wall0:
                found.append((mtime - self.wall0, str(entry.parent.parent)))
        return min(found) if found else None


# ---- one command ---------------------------------------------------------------------------------------------

def run_command(step: str, argv: list[str], run_dir: Path, interval: float, watch: Path | None = None) -> dict:
    """Run ``argv`` from the repository root in a session of its own, sampled, its lines timestamped; returns its
    lines, samples, exit code and wall time (and the first trial report, for a watched Tune storage)."""
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"{step}: {shlex.join(argv)}", file=sys.stderr, flush=True)
    t0, wall0 = time.monotonic(), time.time()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    sampler = Sampler(proc.pid, interval, t0, wall0, watch)
    sampler.start()
    lines: list[tuple[float, str]] = []
    log = open(logs / f"{step}.log", "a")
    log.write(f"# {_now()} {shlex.join(argv)}\n")
    # a reader thread: a process that outlives the driver holding its stdout must not hold up the end
    reader = threading.Thread(target=_read, args=(proc, step, t0, lines, log), daemon=True)
    reader.start()
    try:
        rc = proc.wait()
        end = time.monotonic() - t0
    except BaseException:
        _stop(proc)
        raise
    finally:
        sampler.stop()
        reader.join(timeout=30)
        log.close()
    left = _wait_session(proc.pid, 60)
    _write_samples(sampler.samples, logs / f"{step}-memory.csv")
    return {"rc": rc, "lines": lines, "end": end, "wall0": wall0, "samples": sampler.samples,
            "first_report": sampler.first_report,
            "processes": dict(sorted(sampler.names.items())), "left_running": left, "log": str(logs / f"{step}.log"),
            "memory_csv": str(logs / f"{step}-memory.csv")}


def _read(proc: subprocess.Popen, step: str, t0: float, lines: list, log) -> None:
    """Each line of the command's output, timestamped, into ``lines`` and the log; shown on stderr (a progress
    bar's updates, which text mode turns into lines, every 30 s)."""
    shown = -1e9
    for line in proc.stdout:
        t = time.monotonic() - t0
        line = line.rstrip("\n")
        if not line.strip():
            continue
        lines.append((t, line))
        try:
            log.write(f"{t:9.2f} {line}\n")
            log.flush()
        except ValueError:  # closed: the command ended a while ago and the run moved on
            return
        if PROGRESS.search(line):
            if t - shown < 30:
                continue
            shown = t
        print(f"  [{step} {t:7.1f} s] {line}", file=sys.stderr, flush=True)


def _stop(proc: subprocess.Popen) -> None:
    """Interrupt the command as Ctrl-C would (its run ends KILLED and resumes later), then kill what is left."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    _wait_session(proc.pid, 15)
    for pid in session(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_session(pid: int, seconds: float) -> list[str]:
    """Wait for the processes the command left in its session (Ray's shutting down) to end; the names of those
    still running after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        left = session(pid)
        if not left or time.monotonic() > deadline:
            return sorted(short_name(cmdline(p)) for p in left)
        time.sleep(0.5)


def _write_samples(samples: list[dict], path: Path) -> None:
    if not samples:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(samples[0]))
        w.writeheader()
        w.writerows(samples)


# ---- phases --------------------------------------------------------------------------------------------------

def _first(lines: list[tuple[float, str]], mark: str) -> float | None:
    return next((t for t, line in lines if MARKS[mark].search(line)), None)


def _last(lines: list[tuple[float, str]], mark: str) -> float | None:
    return next((t for t, line in reversed(lines) if MARKS[mark].search(line)), None)


END = "end"


def first_epoch_s(step: str, result: dict) -> float | None:
    """Seconds the first trial's (or fold's) first epoch of this run took, training and validation, as the trial
    reported them (``epoch_time``): from Tune's result.json of the trial that reported first, or from the
    checkpoint of the fold whose epoch line came first (finalize removes its Tune experiment when it ends)."""
    try:
        if step == "tune" and result["first_report"] is not None:
            text = (Path(result["first_report"][1]) / "result.json").read_text()
            new = [r for r in map(json.loads, text.splitlines()) if r.get("timestamp", 0) >= int(result["wall0"])]
            return float(new[0]["epoch_time"]) if new else None
        if step == "finalize":
            out = next((m.group(1) for _, line in result["lines"] if (m := MARKS["final_dir"].search(line))), None)
            fold = next((m for _, line in result["lines"] if (m := MARKS["fold_epoch"].search(line))), None)
            if out is None or fold is None:
                return None
            from maskclf.engine import load_state

            history = load_state(Path(out) / "folds" / f"fold{fold.group(1)}" / "checkpoint")["history"]
            return float(history[int(fold.group(2)) - 1]["epoch_time"])
    except Exception:  # a figure that cannot be read only merges two phases
        return None
    return None


def phase_ends(step: str, result: dict) -> list[tuple[str, object]]:
    """Each phase of ``step`` and the moment it ended (None: its line never came; END: the command's end)."""
    lines = result["lines"]
    if step == "dataset":
        return [("generate", END)]
    epoch = first_epoch_s(step, result)
    if step == "tune":
        report = result["first_report"][0] if result["first_report"] is not None else _first(lines, "trial_done")
        began = report - epoch if report is not None and epoch is not None else None
        return [("start-up", _first(lines, "ray")), ("validation", _first(lines, "dataset")),
                ("face crops", _last(lines, "crops")), ("trial start", began), ("first epoch", report),
                ("trials", END)]
    report = _first(lines, "fold_epoch")
    began = report - epoch if report is not None and epoch is not None else None
    return [("validation", _first(lines, "dataset")), ("face crops", _last(lines, "crops")),
            ("fold start", began), ("first epoch", report), ("folds", _last(lines, "fold_epoch")),
            ("predictions", _last(lines, "predicted")), ("files and model", END)]


def _peaks(samples: list[dict], start: float, end: float) -> dict:
    inside = [s for s in samples if start <= s["t"] <= end]
    if not inside and samples:  # a phase shorter than the interval: the sample nearest its end
        inside = [min(samples, key=lambda s: abs(s["t"] - end))]
    keys = ("driver_rss", "driver_private", "driver_heap", "trial_private", "trial_heap", "all_private",
            "object_store", "trial_processes")
    # a record written before the heap was sampled has no heap: "-" in the table
    return {k: max((s.get(k, -1) for s in inside), default=0) for k in keys} | {"samples": len(inside)}


def phases(step: str, result: dict) -> list[dict]:
    """Wall time and peaks of every phase whose end was seen (a phase whose line never came is counted in the
    next), and of the whole command."""
    out, start = [], 0.0
    for name, t in phase_ends(step, result):
        t = result["end"] if t is END else t
        if t is None or t <= start:
            continue
        out.append({"phase": name, "wall_s": round(t - start, 3), **_peaks(result["samples"], start, t)})
        start = t
    if len(out) > 1:
        out.append({"phase": WHOLE, "wall_s": round(result["end"], 3), **_peaks(result["samples"], 0, result["end"])})
    return out


# ---- the steps -----------------------------------------------------------------------------------------------

def complete(data: Path) -> bool:
    return (data / "train" / "train.csv").is_file() and (data / "eval" / "info.csv").is_file()


def counts(data: Path) -> dict:
    """People and photos of the dataset at ``data``."""
    with open(data / "train" / "train.csv") as f:
        train = sum(1 for _ in f) - 1
    with open(data / "eval" / "info.csv") as f:
        images = sum(1 for _ in f) - 1
    return {"train": train, "eval": images // PHOTOS, "train_images": train * PHOTOS, "eval_images": images}


def competition_space() -> dict:
    """The competition config's search space with its backbones reduced to the one with offline weights."""
    space = yaml.safe_load((ROOT / CONFIG).read_text())["search"]["space"]
    return {**space, "model.backbone": {"choice": [BACKBONE]}}


def overrides(data: Path, run_dir: Path, quick: bool) -> list[str]:
    """What both commands get after ``--config conf/competition.yaml``: its data and crops, CPU-sized trials."""
    return [f"data.root={data}", "data.demo=false", "data.corrections=", f"run.dir={run_dir / 'runs'}",
            "search.address=local", "search.gpus_per_trial=0", "search.cpus_per_trial=1",
            f"search.max_concurrent={1 if quick else 2}", f"search.num_samples={1 if quick else 2}",
            "search.grace_period=1", "train.epochs=1",
            f"train.image_size={32 if quick else 48}", "train.num_workers=0", "train.threads=1",
            f"model.backbone={BACKBONE}", "model.pretrained=true", "model.pretrained_source=offline",
            # YAML, not JSON: PyYAML reads JSON's 1e-05 as a string; in order: a condition names an earlier key
            "search.space=" + yaml.safe_dump(competition_space(), default_flow_style=True, sort_keys=False,
                                             width=10**6).strip(),
            *(["faces.size=64"] if quick else [])]


def storage(run_dir: Path, extra: list[str]) -> Path:
    """Tune's storage (``search.storage_path``, else ``<run.dir>/tune``), where trials' checkpoints appear."""
    given = [x.partition("=")[2] for x in extra if x.startswith("search.storage_path=")]
    return Path(given[-1]).expanduser().absolute() if given and given[-1] else run_dir / "runs" / "tune"


def step_argv(step: str, args: argparse.Namespace, data: Path, run_dir: Path,
              target: Path | None = None) -> list[str]:
    if step == "dataset":
        return [sys.executable, "-m", "maskclf.demo", "--out", str(target), "--people", str(args.people),
                "--eval-people", str(args.eval_people)]
    argv = [sys.executable, "-m", f"search.{step}", "--config", str(CONFIG), *overrides(data, run_dir, args.quick)]
    return argv + (["finalize.folds=0,1"] if step == "finalize" else []) + args.overrides


def run_step(step: str, args: argparse.Namespace, state: dict, data: Path, run_dir: Path, save) -> None:
    """Run one step and keep what it measured in ``state`` (saved on every change)."""
    old = state["steps"].get(step, {})
    attempts = int(old.get("attempts", 0)) + 1
    target = data.with_name(f".{data.name}.partial") if step == "dataset" else None
    if target is not None:
        shutil.rmtree(target, ignore_errors=True)  # an interrupted generation starts over: it cannot continue
        target.parent.mkdir(parents=True, exist_ok=True)
    argv = step_argv(step, args, data, run_dir, target)
    state["steps"][step] = {**old, "status": "running", "attempts": attempts, "command": argv,
                            "started_at": _now()}
    save()
    watch = storage(run_dir, args.overrides) if step == "tune" else None
    try:
        result = run_command(step, argv, run_dir, args.interval, watch)
    except BaseException:
        state["steps"][step]["status"] = "interrupted"
        save()
        raise
    record = {**state["steps"][step], "rc": result["rc"], "log": result["log"], "memory_csv": result["memory_csv"],
              "wall_s": round(result["end"], 2), "processes": result["processes"],
              "left_running": result["left_running"]}
    if result["rc"] != 0:
        state["steps"][step] = {**record, "status": "failed"}
        save()
        said = [line for _, line in result["lines"] if not PROGRESS.search(line)]
        why = f"{STEPS[step]} exited with code {result['rc']} after {result['end']:.0f} s: " \
              f"{said[-1] if said else 'no output'} (its output: {result['log']}); run the same command again to resume"
        raise InputError(why) if result["rc"] == 2 else RunFailed(why)
    if step == "dataset":
        if data.exists():
            data.rmdir()  # empty: a folder with anything in it was refused before
        target.rename(data)
    state["steps"][step] = {**record, "status": "done", "generated": step == "dataset", "finished_at": _now(),
                            "resumed": attempts > 1 and step != "dataset", "phases": phases(step, result),
                            "recorded": []}
    save()


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


# ---- the table -----------------------------------------------------------------------------------------------

def size(n: int | None) -> str:
    if n is None or n < 0:
        return "-"
    return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def rows(step: str, record: dict) -> list[list[str]]:
    """[command, phase, wall, driver RSS, driver private, driver heap, largest trial private, largest trial heap,
    all private, object store]."""
    name = STEPS[step] + (" (resumed)" if record.get("resumed") else "")
    out = []
    for p in record.get("phases", []):
        trial, heap = (p["trial_private"], p.get("trial_heap", -1)) if step != "dataset" else (None, None)
        out.append([name, p["phase"], f"{p['wall_s']:.1f} s", size(p["driver_rss"]), size(p["driver_private"]),
                    size(p.get("driver_heap", -1)), size(trial), size(heap), size(p["all_private"]),
                    size(p["object_store"])])
    return out


def print_table(state: dict) -> None:
    c = state["people"]
    print(f"real scale: {c['train']} + {c['eval']} people ({c['train_images']} + {c['eval_images']} photos), "
          f"data {state['data']}, run dir {state['run_dir']}")
    head = ["command", "phase", "wall", "driver RSS", "driver private", "driver heap", "largest trial private",
            "largest trial heap", "all processes private", "object store"]
    table = [row for step in STEPS for row in rows(step, state["steps"].get(step, {}))]
    widths = [max(len(r[i]) for r in [head, *table]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print(line(head))
    for step in STEPS:
        record = state["steps"].get(step, {})
        if step == "dataset" and record.get("status") == "done" and not record.get("generated"):
            print(f"{STEPS[step]:<{widths[0]}}  reused the dataset at {state['data']}")
        for row in rows(step, record):
            print(line(row))


def record_rows(state: dict, results: Path, command: str) -> None:
    """Each finished step's rows, once per results file."""
    c = state["people"]
    people, where = f"{c['train']} + {c['eval']}", machine()
    for step in STEPS:
        record = state["steps"].get(step, {})
        if record.get("status") != "done" or str(results) in record.get("recorded", []):
            continue
        for row in rows(step, record):
            append_row(SECTION, HEADER, [str(datetime.date.today()), where, people, *row, f"`{command}`"], results)
        record.setdefault("recorded", []).append(str(results))


# ---- main ----------------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="the dataset (default ~/maskclf-data/real-scale-N-M)")
    p.add_argument("--people", type=int, default=None, help="train people (default 2700; --quick: 40)")
    p.add_argument("--eval-people", type=int, default=None, help="eval people (default 1800; --quick: 10)")
    p.add_argument("--quick", action="store_true", help="40 + 10 people, 64-px crops, one 32-px trial")
    p.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")), help="where the rows go")
    p.add_argument("--run-dir", default=None, help="the runs and real_scale.json (default: --data with -run added)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between memory samples")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="passed to search.tune and search.finalize")
    return p


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@cli
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Ctrl-C, and a SIGTERM, stop a step as Ctrl-C stops its command: the command ends its run and resumes later.
    # Installed even where SIGINT was ignored (a background job), so that the commands, which inherit an ignored
    # SIGINT but not a handler, can be interrupted too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    args.people = args.people or (40 if args.quick else 2700)
    args.eval_people = args.eval_people if args.eval_people is not None else (10 if args.quick else 1800)
    bad = [x for x in args.overrides if "=" not in x]
    if bad:
        raise InputError(f"not key=value: {' '.join(bad)}")
    name = f"real-scale-{'quick-' if args.quick else ''}{args.people}-{args.eval_people}"
    data = Path(args.data or Path("~/maskclf-data") / name).expanduser().absolute()
    run_dir = Path(args.run_dir or data.with_name(data.name + "-run")).expanduser().absolute()
    if data.exists() and not complete(data) and any(data.iterdir()):
        raise InputError(f"--data {data} holds no complete dataset (train/train.csv and eval/info.csv): point it at "
                         f"a dataset or at a new folder")
    path = run_dir / STATE
    state = json.loads(path.read_text()) if path.is_file() else {"data": str(data), "run_dir": str(run_dir),
                                                                  "steps": {}}
    if state["data"] != str(data):
        raise InputError(f"--run-dir {run_dir} holds a run on the dataset {state['data']}: give that --data, or "
                         f"another --run-dir")
    state.update(quick=args.quick, overrides=args.overrides)

    def save() -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        tmp.replace(path)

    for step in STEPS:
        record = state["steps"].get(step, {})
        if step == "dataset" and not complete(data):
            run_step(step, args, state, data, run_dir, save)
        elif step == "dataset" and record.get("status") != "done":
            state["steps"][step] = {"status": "done", "generated": False, "finished_at": _now(), "phases": []}
            print(f"{STEPS[step]}: reusing the dataset at {data}", file=sys.stderr)
        elif record.get("status") == "done":
            print(f"{STEPS[step]}: finished {record.get('finished_at', 'before')}, skipped", file=sys.stderr)
        else:
            run_step(step, args, state, data, run_dir, save)
        if step == "dataset":
            state["people"] = counts(data)
        save()
    print_table(state)
    command = "python bench/real_scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    record_rows(state, Path(args.results), command.strip())
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
