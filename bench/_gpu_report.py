"""For bench/gpu_check.sh: images/s and loader wait per trial (the trials' result.json) and GPU use (an
nvidia-smi log).

    python bench/_gpu_report.py --trials DIR --gpu-log FILE --seconds S --command CMD [--results PATH]

``--trials`` is Tune's storage folder (or one experiment's folder); every ``result.json`` under it is
one trial, named by its study (the experiment folder below ``--trials``). ``--gpu-log`` is the output of
``nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv -l 1``. GPU figures
are over each trial's own time, from its start to its last report (the demo data and Ray's start-up count
only in the wall time). Prints the figures and appends one row per trial to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import sys
from pathlib import Path

from _results import append_row, machine


def read_trials(folder: Path) -> list[dict]:
    """Per trial (in the order they started): its study, parameters, epochs, mean images/s and loader wait
    (the share of training time spent waiting for batches) over the steady epochs, and [start, end] in Unix
    seconds."""
    trials = []
    for f in sorted(Path(folder).rglob("result.json")):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if not rows:
            continue
        # the first epoch pays CUDA/cuDNN warm-up and the loader workers' start; later epochs show the steady rate
        steady = rows[1:] or rows
        waits = [r["loader_wait"] for r in steady if "loader_wait" in r]
        parts = f.relative_to(folder).parts
        trials.append({"study": parts[0] if len(parts) > 2 else Path(folder).name,
                       "config": rows[0].get("config", {}), "epochs": rows[-1]["epoch"],
                       "images_per_s": sum(r["images_per_s"] for r in steady) / len(steady),
                       "loader_wait": sum(waits) / len(waits) if waits else None,
                       "start": rows[0]["timestamp"] - rows[0]["time_this_iter_s"], "end": rows[-1]["timestamp"]})
    return sorted(trials, key=lambda t: t["start"])


def read_gpu_log(path: Path) -> list[tuple[float, str, float, float]]:
    """(Unix time, GPU index, utilisation %, memory MiB) per sample; unreadable lines are skipped."""
    samples = []
    with open(path, newline="") as f:
        for row in csv.reader(f, skipinitialspace=True):
            if len(row) != 4 or row[0].startswith("timestamp"):
                continue
            try:
                t = datetime.datetime.strptime(row[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
                samples.append((t, row[1], float(row[2].split()[0]), float(row[3].split()[0])))
            except ValueError:  # "[N/A]" or a line cut short when the logger was stopped
                continue
    return samples


def gpu_use(samples: list[tuple[float, str, float, float]], start: float, end: float) -> dict[str, tuple]:
    """Per GPU index: (mean %, max %, max MiB) over the samples within [start, end]."""
    out = {}
    for gpu in sorted({s[1] for s in samples}):
        inside = [s for s in samples if s[1] == gpu and start <= s[0] <= end]
        if inside:
            util = [s[2] for s in inside]
            out[gpu] = (sum(util) / len(util), max(util), max(s[3] for s in inside))
    return out


def _trial_name(t: dict) -> str:
    c = t["config"]
    return " · ".join([t["study"], *(str(c[k]) for k in ("model.backbone", "train.optimizer") if k in c)])


def _wait(t: dict) -> str:
    return "-" if t["loader_wait"] is None else f"{t['loader_wait']:.0%}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", required=True, help="Tune experiment folder")
    p.add_argument("--gpu-log", required=True, help="nvidia-smi CSV log")
    p.add_argument("--seconds", type=float, required=True, help="wall time of the search command")
    p.add_argument("--command", required=True, help="the command that was run, for the row")
    p.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")), help="where the row goes")
    args = p.parse_args(argv)
    trials = read_trials(Path(args.trials))
    if not trials:
        print(f"bench/_gpu_report.py: no trial results (result.json) under {args.trials}", file=sys.stderr)
        return 2
    samples = read_gpu_log(Path(args.gpu_log))
    cells = []
    print(f"{len(trials)} trials in {args.seconds:.0f} s (the search commands)")
    for t in trials:  # GPU use over each trial's own time
        use = gpu_use(samples, t["start"], t["end"])
        util = ", ".join(f"GPU {g} {m:.0f}% / {x:.0f}%" for g, (m, x, _) in use.items()) or "no GPU samples"
        memory = ", ".join(f"GPU {g} {mem:.0f} MiB" for g, (_, _, mem) in use.items()) or "-"
        print(f"  {_trial_name(t):40} {t['images_per_s']:8,.0f} images/s, waiting for the loader {_wait(t):>4} of the "
              f"time, utilisation mean / max {util}, memory max {memory}  ({t['epochs']} epochs)")
        cells.append([_trial_name(t), f"{t['images_per_s']:,.0f}", _wait(t), util, memory, str(t["epochs"])])
    for cell in cells:
        append_row("GPU check: a realistic trial on CUDA, training images/s, loader wait and GPU utilisation",
                   ["date", "machine", "trial", "images/s", "waiting for the loader", "GPU util mean / max",
                    "GPU memory max", "epochs", "searches' wall", "command"],
                   [str(datetime.date.today()), machine(), *cell, f"{args.seconds:.0f} s", f"`{args.command}`"],
                   args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
