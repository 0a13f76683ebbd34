"""Orchestration at scale: the search driver against a simulated multi-node GPU cluster.

    python bench/scale.py [--quick] [--compare] [--gpus 8,16,32,64] [--trials-per-gpu 8] [--epoch-s 1]
                          [--new-processes] [--results PATH] [--plot PATH] [--config conf/search.yaml] [key=value ...]

The cluster is a local multi-node Ray (``ray.cluster_utils.Cluster``): a head and one node per
8 logical GPUs. The driver is search.tune's own (``search.tune.search``: OptunaSearch TPE + ASHA +
the concurrency limit, with the MlflowTrials and LiveTable callbacks on a SQLite store, and the
study's wrap-up: trials table, best config, plots, the closed search run). Trials are a stand-in that sleeps ``--epoch-s`` per
epoch and reports a per-epoch F1 curve shaped by its parameters, so only orchestration is timed.
Unlike ``search.tune.run`` it hands trials no prepared crops: unpickling them imports torch
(0.5 GB and 5 s per trial process here), which 64 trial processes on a 2-core machine cannot afford.
Trial processes are reused (``search.reuse_actors=true``) unless ``--new-processes``: starting a
process per trial costs 20 s of waiting on 2 busy cores, which would hide the driver's own limits.

Epochs of 1 s stand for epochs of 1 minute at 60 times the rate: G simulated GPUs send the
driver as many results a second as 60 G GPUs with 1-minute epochs. The 1-minute figure printed
per case comes from the driver's measured time per result (see ``gpus_at_90``).

Measured per case: busy GPU-seconds / available GPU-seconds, the driver's time per trial
decision (searcher + scheduler + callbacks) and how it grows with finished trials, MLflow
throughput, the driver's CPU time per result and its memory. ``--compare`` runs every case
before (``search.log_in_background=false``) and after (``true``, the default). Rows go to
bench/RESULTS.md, the plot to bench/scale.png.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

from maskclf import config
from maskclf.errors import cli
from search.study import settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_row, machine  # noqa: E402
from _scale_probes import Memory, Probe, end_of_experiment, instrument  # noqa: E402
from _scale_probes import recorder as recorder_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "runs" / "bench-scale"
GPUS_PER_NODE = 8
# the smoke dataset: the stand-in never reads it, and the driver only summarises it
DATA = {"data.demo_people": 60, "data.demo_eval_people": 10, "faces.size": 48, "train.image_size": 32}
VARIANTS = {"before": {"search.log_in_background": False}, "after": {"search.log_in_background": True}}

# How the stand-in's curves depend on the demo space: backbone ceilings, the best lr per optimizer.
_CEILING = {"efficientnet_b0": 0.80, "resnet10t": 0.74, "mobilenetv3_small_100": 0.70}
_BEST_LR = {"adamw": 1e-3, "sgd": 1e-2}
_BONUS = {"multitask": 0.02, "weighted": 0.01, "focal": 0.015, "light": 0.01, "strong": 0.005, "cosine": 0.01}


def curve(params: dict, epoch: int, rng: random.Random) -> float:
    """A val macro F1 that saturates with epochs; its ceiling and speed depend on the parameters."""
    lr, opt = params.get("train.lr", 1e-3), params.get("train.optimizer", "adamw")
    miss = math.log10(lr / _BEST_LR.get(opt, 1e-3))
    ceiling = _CEILING.get(params.get("model.backbone"), 0.72) - 0.08 * miss ** 2
    ceiling += sum(_BONUS.get(v, 0.0) for v in params.values() if isinstance(v, str))
    tau = min(6.0, max(0.5, 1.5 * 10 ** (-0.3 * miss)))  # a low lr learns slowly
    chance = 1 / 18
    return max(0.0, chance + (max(ceiling, chance) - chance) * (1 - math.exp(-epoch / tau)) + rng.gauss(0, 0.01))


def stand_in(epoch_s: float) -> Callable:
    """A trainable with ``search.tune.train_trial``'s signature that sleeps instead of training."""
    def train_stand_in(params: dict, *, cfg, prep, after_report=None) -> None:
        from ray import tune

        rng = random.Random(repr(sorted(params.items())))
        work = Path(tempfile.mkdtemp(prefix="maskclf-standin-"))
        try:
            for epoch in range(1, cfg.train.epochs + 1):
                start = time.time()
                time.sleep(epoch_s)
                end = time.time()
                f1 = curve(params, epoch, rng)
                m = {"epoch": epoch, "val_f1": f1, "val_acc": min(1.0, f1 + 0.1), "val_loss": 3.0 * (1 - f1),
                     "train_loss": 2.8 * (1 - f1) * 0.9, "mask_acc": min(1.0, 0.5 + f1 / 2),
                     "gender_acc": min(1.0, 0.6 + f1 / 3), "age_acc": min(1.0, 0.4 + f1 / 2),
                     "f1_lt30": f1 + 0.05, "f1_30_59": f1, "f1_ge60": f1 / 2, "lr": params.get("train.lr", 1e-3),
                     "epoch_time": end - start, "images_per_s": 15000 / epoch_s, "busy_from": start, "busy_to": end}
                (work / "state.txt").write_text(f"{epoch}\n")  # a checkpoint per epoch, as the real trainable
                tune.report(m, checkpoint=tune.Checkpoint.from_directory(str(work)))
                if after_report is not None:
                    after_report(m)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return train_stand_in


@contextlib.contextmanager
def simulated_cluster(gpus: int):
    """A head (1 CPU, no GPU) and ``gpus / 8`` nodes of 8 logical GPUs and 8 CPUs, all on this machine."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
    try:
        for _ in range(max(1, gpus // GPUS_PER_NODE)):
            cluster.add_node(num_cpus=GPUS_PER_NODE, num_gpus=GPUS_PER_NODE, object_store_memory=80 * 1024 ** 2)
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()


def search(cfg, trainable: Callable, extra_callbacks: list, log: Callable[[str], None]) -> float:
    """``search.tune.search`` on ``trainable`` (no data preparation); returns the wrap-up seconds: from the
    end of the Tune experiment (the last callback's ``on_experiment_end``) to the study's end."""
    from search import cluster
    from search import tune as tune_mod

    cluster.connect(cfg, log)
    cluster.check_resources(cfg, log=log)
    cluster.check_storage(cfg)
    ended = end_of_experiment()
    tune_mod.search(cfg, None, trainable=trainable, callbacks=[*extra_callbacks, ended], log=log)
    return time.perf_counter() - ended.at


def busy_fraction(busy: list[tuple[str, int, float, float]], gpus: int, start: float, end: float) -> float:
    """Busy GPU-seconds inside [start, end] over the GPU-seconds available there."""
    if end <= start:
        return math.nan
    inside = sum(max(0.0, min(b, end) - max(a, start)) for _, _, a, b in busy)
    return inside / (gpus * (end - start))


def _growth(probe: Probe, groups: tuple[str, ...], trials: int, bins: int = 8) -> list[tuple[int, float]]:
    """Decision ms per trial, by the number of trials finished when the calls were made."""
    edges = [round(trials * i / bins) for i in range(bins + 1)]
    out = []
    for lo, hi in zip(edges, edges[1:]):
        spent = sum(s for g in groups for n, s in probe.calls[g] if lo <= n < hi)
        out.append(((lo + hi) // 2, 1000 * spent / max(1, hi - lo)))
    return out


DECISION = ("searcher", "scheduler", "mlflow", "progress")  # the driver's calls per trial and per result
LOOP = (*DECISION, "state")  # and Tune's experiment snapshots: all of it runs in Tune's one event loop


def _by_call(calls: list[tuple[int, float]], bins: int = 8) -> tuple[float, float]:
    """Mean ms of the first and the last eighth of the calls (for the searcher: the history grows with each)."""
    ms = [1000 * s for _, s in calls]
    k = max(1, len(ms) // bins)
    return (statistics.fmean(ms[:k]), statistics.fmean(ms[-k:])) if ms else (math.nan, math.nan)


def run_case(base, gpus: int, trials: int, epoch_s: float, variant: str, reuse: bool, work: Path,
             log: Callable[[str], None]) -> dict:
    """One search of ``trials`` trials on ``gpus`` simulated GPUs; its figures."""
    name = f"g{gpus}-n{trials}-{variant}"
    case_dir = work / "cases" / name
    shutil.rmtree(case_dir, ignore_errors=True)
    case_dir.mkdir(parents=True)
    probe = Probe()
    recorder = recorder_for(probe)
    with simulated_cluster(gpus) as address:
        cfg = config.apply(base, {**VARIANTS[variant], "run.dir": str(case_dir), "run.study": name,
                                  "search.address": address, "search.storage_path": str(case_dir / "tune"),
                                  "search.num_samples": trials, "search.max_concurrent": gpus,
                                  "search.gpus_per_trial": 1, "search.cpus_per_trial": 1,
                                  "search.reuse_actors": reuse})
        instrument(probe)
        try:
            with Memory() as mem, open(case_dir / "driver.log", "w") as out, contextlib.redirect_stdout(out):
                wrapup = search(cfg, stand_in(epoch_s), [recorder], log=lambda s: print(s, flush=True))
        finally:
            probe.restore()
    t0, t1, results = recorder.fit_start, recorder.fit_end, len(recorder.busy)
    last_start = max(recorder.started.values())
    first_epoch = defaultdict(lambda: math.inf)
    for trial, _, a, _ in recorder.busy:
        first_epoch[trial] = min(first_epoch[trial], a)
    waits = sorted(first_epoch[t] - s for t, s in probe.added.items() if t in first_epoch)
    decision = sum(probe.total(g) for g in DECISION)
    growth = _growth(probe, LOOP, trials)
    suggest = _by_call(probe.calls["suggest"])
    row = {
        "case": name, "gpus": gpus, "nodes": max(1, gpus // GPUS_PER_NODE), "trials": trials, "epoch_s": epoch_s,
        "variant": variant, "reuse": reuse, "wall_s": t1 - t0, "wrapup_s": wrapup, "results": results,
        "epochs_per_trial": results / trials,
        "busy_steady": busy_fraction(recorder.busy, gpus, t0, last_start),
        "busy_all": busy_fraction(recorder.busy, gpus, t0, t1),
        "driver_cpu_ms_per_result": 1000 * (recorder.cpu_end - recorder.cpu_start) / max(1, results),
        "driver_cpu_share": (recorder.cpu_end - recorder.cpu_start) / (t1 - t0),
        "decision_ms_per_trial": 1000 * decision / trials,
        "loop_ms_first": growth[0][1], "loop_ms_last": growth[-1][1],
        "suggest_ms_first": suggest[0], "suggest_ms_last": suggest[1],
        "mlflow_results_per_s": results / max(1e-9, probe.total("mlflow.metrics")),
        "mlflow_ms_per_trial": 1000 * probe.total("mlflow") / trials,
        "state_s": probe.total("state"), "start_wait_s": statistics.median(waits) if waits else math.nan,
        "load": statistics.fmean(mem.loads) if mem.loads else os.getloadavg()[0],
        "driver_peak_mb": mem.peak_mb, "driver_growth_mb": mem.peak_mb - recorder.mb_start, "growth": growth,
        "by_group_ms_per_trial": {g: 1000 * probe.total(g) / trials for g in sorted(probe.calls)},
    }
    row["driver_ms_per_result"] = 1000 * (decision + probe.total("state")) / max(1, results)
    return row


def gpus_at_90(row: dict, epoch_s: float = 60.0) -> float:
    """Cluster size at which one driver, busy ``driver_ms_per_result`` per result, keeps GPUs 90% busy.

    G GPUs with epochs of E seconds send G/E results a second; a driver that needs d seconds a
    result serves at most 1/d, so busy = min(1, E / (G d)), and 90% busy is G = E / (0.9 d).
    d is the loop's time (decisions and snapshots) per finished trial in the last eighth of the
    run (the largest history), over the epochs a trial trains on average."""
    return epoch_s / (0.9 * row["loop_ms_last"] / row["epochs_per_trial"] / 1000)


def _print(row: dict) -> None:
    g = row["by_group_ms_per_trial"]
    print(f"{row['case']}: {row['wall_s']:.0f} s, {row['results']} results "
          f"({row['epochs_per_trial']:.1f} epochs/trial), "
          f"busy {100 * row['busy_steady']:.0f}% while trials were starting, {100 * row['busy_all']:.0f}% overall "
          f"(mean load {row['load']:.0f})")
    print(f"  driver per trial: decisions {row['decision_ms_per_trial']:.0f} ms; Tune's loop incl. snapshots "
          f"{row['loop_ms_first']:.0f} ms in the first eighth -> {row['loop_ms_last']:.0f} ms in the last ("
          + ", ".join(f"{k} {v:.0f}" for k, v in g.items()) + " ms)")
    print(f"  TPE suggest {row['suggest_ms_first']:.0f} -> {row['suggest_ms_last']:.0f} ms per trial; MLflow "
          f"{row['mlflow_results_per_s']:.0f} results/s; driver CPU {row['driver_cpu_ms_per_result']:.0f} ms/result "
          f"({100 * row['driver_cpu_share']:.0f}% of a core); peak RSS {row['driver_peak_mb']:.0f} MB "
          f"(+{row['driver_growth_mb']:.0f} MB during the search); median start wait {row['start_wait_s']:.1f} s; "
          f"wrap-up {row['wrapup_s']:.0f} s")
    print(f"  -> one driver keeps 90% busy up to ~{gpus_at_90(row):.0f} GPUs with 1-minute epochs "
          f"(driver-bound, at this history size)", flush=True)


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        vr = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["gpus"])
        a.plot([r["gpus"] for r in vr], [100 * r["busy_steady"] for r in vr], "o-", label=f"{variant}")
        for r in vr:
            xs, ys = zip(*r["growth"])
            b.plot(xs, ys, "o-" if variant == "after" else "s--", ms=3,
                   label=f"{variant}, {r['gpus']} GPUs / {r['trials']} trials")
    a.axhline(90, color="grey", lw=0.8, ls=":")
    a.set(xlabel="simulated GPUs", ylabel="GPU busy while trials start (%)", ylim=(0, 105), xscale="log", xticks=[])
    a.minorticks_off()
    a.set_xticks(sorted({r["gpus"] for r in rows}), labels=[str(g) for g in sorted({r["gpus"] for r in rows})])
    a.set_title(f"busy fraction, {rows[0]['epoch_s']:g} s epochs")
    a.legend()
    b.set(xlabel="trials finished", ylabel="driver loop time per trial (ms)",
          title="searcher + scheduler + MLflow + progress + Tune snapshots")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _record(row: dict, results: Path, command: str) -> None:
    append_row("Scale: one search driver against a simulated GPU cluster",
               ["date", "machine (load)", "GPUs (nodes)", "trials", "epoch", "driver", "trial processes",
                "busy while starting / overall",
                "epochs/trial", "decisions ms/trial", "loop ms/trial first → last", "TPE suggest ms first → last",
                "MLflow results/s",
                "driver CPU ms/result", "driver peak RSS", "start wait", "90% busy at 1-min epochs", "command"],
               [str(datetime.date.today()), f"{machine()} (load {row['load']:.0f})", f"{row['gpus']} ({row['nodes']})",
                str(row["trials"]), f"{row['epoch_s']:g} s", row["variant"],
                "reused" if row["reuse"] else "new",
                f"{100 * row['busy_steady']:.0f}% / {100 * row['busy_all']:.0f}%", f"{row['epochs_per_trial']:.1f}",
                f"{row['decision_ms_per_trial']:.0f}", f"{row['loop_ms_first']:.0f} → {row['loop_ms_last']:.0f}",
                f"{row['suggest_ms_first']:.0f} → {row['suggest_ms_last']:.0f}", f"{row['mlflow_results_per_s']:.0f}",
                f"{row['driver_cpu_ms_per_result']:.0f}", f"{row['driver_peak_mb']:.0f} MB",
                f"{row['start_wait_s']:.1f} s", f"~{gpus_at_90(row):,.0f} GPUs", f"`{command}`"], results)


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "conf" / "search.yaml"), help="the space and ASHA settings")
    p.add_argument("--quick", action="store_true", help="16 GPUs on 2 nodes, 2 trials per GPU, 1 s epochs")
    p.add_argument("--compare", action="store_true", help="every case before and after the driver fix")
    p.add_argument("--gpus", default="8,16,32,64", help="simulated cluster sizes, multiples of 8")
    p.add_argument("--trials-per-gpu", type=int, default=8,
                   help="trials = this x GPUs (64 GPUs: 512; 16 gives 1,024, and the before driver 3x the time)")
    p.add_argument("--epoch-s", type=float, default=1.0, help="seconds a simulated epoch sleeps")
    p.add_argument("--new-processes", action="store_true",
                   help="a new process per trial (search.reuse_actors=false), as search.tune's default")
    p.add_argument("--driver", choices=sorted(VARIANTS), default="after", help="without --compare: which driver")
    p.add_argument("--dir", default=str(BENCH_DIR), help="the studies, their MLflow stores and the demo data")
    p.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    p.add_argument("--plot", default=str(Path(__file__).with_name("scale.png")))
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. data.root=PATH")
    args = p.parse_args(argv)
    if args.quick:
        args.gpus, args.trials_per_gpu, args.epoch_s = "16", 2, 1.0
    gpus = [int(g) for g in args.gpus.split(",")]
    work = Path(args.dir)
    defaults = {"data.root": str(work / "data"), "faces.cache_dir": str(work / "cache"), **DATA}
    base = settings.load(args.config, [f"{k}={v}" for k, v in defaults.items()] + args.overrides)
    from maskclf import dataset

    dataset.ensure_demo(base, log=lambda s: print(s, file=sys.stderr))
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    load = "load {:.1f}".format(os.getloadavg()[0])
    command = "python bench/scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    variants = list(VARIANTS) if args.compare else [args.driver]
    print(f"{machine()}, {load} at start; epochs of {args.epoch_s:g} s, up to {base.train.epochs} per trial",
          flush=True)
    rows = []
    for g in gpus:
        for variant in variants:
            row = run_case(base, g, g * args.trials_per_gpu, args.epoch_s, variant, not args.new_processes,
                           Path(args.dir), log=print)
            _print(row)
            _record(row, Path(args.results), command.strip())
            (work / "cases" / row["case"] / "figures.json").write_text(json.dumps(row, indent=1))
            rows.append(row)
            plot(rows, Path(args.plot))  # after every case: an interrupted sweep still leaves its plot
    print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
