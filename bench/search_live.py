"""Live search efficiency: real searches at an equal compute budget, the config's search with ASHA (ours)
against searches without early stopping.

    python bench/search_live.py [--quick] [--seeds 3] [--budget 32] [--methods ours random tpe-full]
                                [--results PATH] [--plot PATH] [--config conf/search.yaml] [key=value ...]

bench/search_efficiency.py measures the searchers with many seeds on recorded learning curves; this script
trains for real, so it confirms a few of those figures on the live demo (say, ours with its old and its new
settings: ``--methods ours`` once with each, at the same seeds and budget). Three methods, each run once per
seed through ``search.tune.run`` (the product's own path):

- ours: the config's sampler (TPE by default) with ASHA, many trials, stopped by ``search.budget_epochs``;
- random: Optuna's seeded random sampler, every trial trained for ``train.epochs`` (fifo);
- tpe-full: TPE without early stopping (fifo), to separate the sampler from the early stopping.

The budget is counted in epochs trained over all trials, so the figures do not depend on how
busy the machine is. random and tpe-full run ``budget // train.epochs`` full trials. Each study's
per-epoch results (the trials' ``result.json`` under the Tune storage path) are put in the order
they were reported, which gives the best validation macro F1 reached after each epoch spent.
The seeds pair the methods: TPE's first ``search.n_startup_trials`` trials are drawn by the same
seeded random sampler as random search's, so for one seed all three start from the same configs
and differ in what they do next (TPE's model, ASHA's stopping).

Default budget: 32 epochs, 6 full 5-epoch trials of the fine-tuning demo for random and tpe-full. A
demo epoch costs about 35 s per trial with 2 trials at once on 2 cores, so a 32-epoch study takes about
10 minutes on a quiet 2-core machine and the 9 studies of the default run an hour and a half: the
many-seed comparison belongs to bench/search_efficiency.py, this one to a few confirming studies.

Prints the table, appends a row per method to bench/RESULTS.md with a paragraph on the goal
(ours reaches random search's final best, mean over seeds, within a third of the budget), and
draws the curves (mean over seeds, min-max band) to bench/search_live.png. Every study keeps its
name (``<method>-b<budget>-s<seed>``), so running the same command again resumes an interrupted
benchmark and reuses the studies already finished.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_row, machine  # noqa: E402
from maskclf import config  # noqa: E402
from maskclf.config import Config  # noqa: E402
from maskclf.errors import InputError, cli  # noqa: E402
from search import cluster, tune  # noqa: E402
from search.study import settings

SMOKE = config.CONF_DIR / "smoke.yaml"
SECTION = "Search: best val F1 against epochs spent, TPE + ASHA vs searches without early stopping"
GOAL = 1 / 3  # ours must reach random's final best within this fraction of the budget
METHODS = {  # name -> (label, overrides)
    "ours": ("ours: ASHA", {"search.scheduler": "asha"}),
    "random": ("random search, full epochs", {"search.sampler": "random", "search.scheduler": "fifo"}),
    "tpe-full": ("TPE, full epochs", {"search.sampler": "tpe", "search.scheduler": "fifo"}),
}


def label(method: str, cfg: Config) -> str:
    """The method's name in tables; ours names its search settings, the ones that change its figures."""
    s = cfg.search
    if method != "ours":
        return METHODS[method][0]
    return (f"{METHODS[method][0]} ({s.sampler}, grace {s.grace_period}, rf {s.reduction_factor}, "
            f"startup {s.n_startup_trials}, {s.stopped_trials}"
            + (f", {s.brackets} brackets" if s.brackets > 1 else "") + ")")


def study_name(method: str, cfg: Config, budget: int, seed: int) -> str:
    """``<method>-b<budget>-s<seed>``; ours also names its search settings (``ours-tpe-g1r3n4c1-...``: sampler,
    grace, reduction factor, start-up trials, stopped trials told as c(omplete) or p(runed), brackets), so a run
    with other settings is a study of its own and never resumes one with different settings."""
    s = cfg.search
    tag = (f"-{s.sampler}-g{s.grace_period}r{s.reduction_factor}n{s.n_startup_trials}{s.stopped_trials[0]}"
           f"{s.brackets}" if method == "ours" else "")
    return f"{method}{tag}-b{budget}-s{seed}"


def study_overrides(method: str, cfg: Config, budget: int, seed: int) -> dict:
    """The config of one study: the method's sampler and scheduler, the seed and the budget."""
    values = {**METHODS[method][1], "search.seed": seed, "run.study": study_name(method, cfg, budget, seed)}
    if method == "ours":  # every trial trains at least one epoch, so the budget ends the study first
        values.update({"search.num_samples": budget, "search.budget_epochs": budget})
    else:
        values.update({"search.num_samples": budget // cfg.train.epochs, "search.budget_epochs": 0})
    return values


def epoch_log(cfg: Config) -> pd.DataFrame:
    """Every epoch the study's trials reported (``trial``, ``epoch``, ``val_f1``), in report order."""
    exp = Path(cluster.storage_path(cfg)) / cfg.run.study
    frames = []
    for i, path in enumerate(sorted(exp.glob("*/result.json"))):
        if path.stat().st_size:
            df = pd.read_json(path, lines=True)
            frames.append(df.assign(trial=path.parent.name, start=i)[["trial", "start", "timestamp", "epoch",
                                                                        "val_f1"]])
    if not frames:
        raise RuntimeError(f"study '{cfg.run.study}' has no results under {exp}")
    log = pd.concat(frames, ignore_index=True)
    return log.sort_values(["timestamp", "start", "epoch"], kind="stable").reset_index(drop=True)


def best_so_far(log: pd.DataFrame, budget: int) -> np.ndarray:
    """Best val F1 after 1..budget epochs spent (the last value carried on past the study's end)."""
    best = log["val_f1"].cummax().to_numpy()[:budget]
    return np.concatenate([best, np.full(budget - len(best), best[-1])])


def _reached(curve: np.ndarray, target: float) -> int | None:
    """Epochs spent when ``curve`` first reaches ``target`` (None if never)."""
    hit = np.flatnonzero(curve >= target - 1e-12)
    return int(hit[0]) + 1 if len(hit) else None


def summarize(curves: dict[str, np.ndarray], trials: dict[str, list[int]],
              labels: dict[str, str] | None = None) -> dict[str, dict]:
    """Per method: final best (mean, std over seeds) and epochs to reach random's final best (None: never,
    or random search not run)."""
    target = curves["random"][:, -1].mean() if "random" in curves else np.inf
    out = {}
    for m, c in curves.items():
        final = c[:, -1]
        out[m] = {"label": (labels or {}).get(m, METHODS[m][0]), "final_mean": float(final.mean()),
                  "final_std": float(final.std(ddof=1)) if len(c) > 1 else 0.0,
                  "epochs_to_target": _reached(c.mean(axis=0), target),
                  "per_seed": [_reached(s, target) for s in c], "trials": float(np.mean(trials[m])),
                  "target": "random" in curves}
    return out


def plot(curves: dict[str, np.ndarray], budget: int, path: Path) -> Path:
    """Best val F1 so far against epochs spent: mean over seeds, min-max band."""
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    x = np.arange(1, budget + 1)
    colors = {"ours": "tab:red", "random": "tab:blue", "tpe-full": "tab:green"}
    for m, c in curves.items():
        color = colors[m]
        ax.step(x, c.mean(axis=0), where="post", color=color, label=f"{METHODS[m][0]} (n={len(c)})",
                lw=2 if m == "ours" else 1.2, zorder=3 if m == "ours" else 2)
        ax.fill_between(x, c.min(axis=0), c.max(axis=0), step="post", color=color, alpha=0.15, lw=0)
    if "random" in curves:
        ax.axhline(curves["random"][:, -1].mean(), color="tab:blue", ls="--", lw=0.8, label="random's final best")
    ax.axvline(budget * GOAL, color="grey", ls=":", lw=1, label="a third of the budget")
    ax.set(xlabel="epochs spent (all trials, in report order)", ylabel="best val macro F1 so far",
           title=f"search efficiency at an equal budget ({budget} epochs)", xlim=(1, budget))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _fmt_need(need: int | None, budget: int, target: bool = True) -> tuple[str, str]:
    if not target:  # random search was not run: no target to reach
        return "-", "-"
    if need is None:
        return f"not reached in {budget}", "> 1"
    return str(need), f"{need / budget:.2f}"


def verdict(summary: dict[str, dict], budget: int, seeds: int, png: str) -> str:
    """The paragraph on the goal, from the figures of this run."""
    ours, rnd = summary["ours"], summary["random"]
    per_seed = ", ".join("-" if n is None else str(n) for n in ours["per_seed"])
    need = ours["epochs_to_target"]
    met = need is not None and need <= budget * GOAL
    reach = (f"ours reached it after {need} of {budget} epochs ({need / budget:.2f} of the budget)"
             if need is not None else f"ours did not reach it within the {budget} epochs")
    return (f"Goal: ours (the config's search with ASHA) reaches random search's final best (mean over seeds) "
            f"with at most a third of the budget. Latest run ({datetime.date.today()}, {budget} epochs, "
            f"{seeds} seed(s)): "
            f"**{'met' if met else 'not met'}**. Random search's final best is {rnd['final_mean']:.3f}; "
            f"{reach}, on the mean curve (per seed: {per_seed}); random search itself got there after "
            f"{_fmt_need(rnd['epochs_to_target'], budget)[0]} epochs. In the same budget ours trained "
            f"{ours['trials']:.1f} trials on average against {rnd['trials']:.0f} full-length random ones, because "
            f"ASHA stops most trials at its first rungs; its final best is {ours['final_mean']:.3f} "
            f"± {ours['final_std']:.3f}. The seeds are paired: for one seed, TPE's random startup trials are "
            f"random search's first trials, so ours starts from random's configs and differs by ASHA's stopping "
            f"and TPE's later picks. Curves: {png} (mean over seeds, min–max band).")


def write_paragraph(results: Path, text: str) -> None:
    """Put ``text`` between this benchmark's section title and its table (replacing the previous one)."""
    lines = Path(results).read_text().rstrip("\n").split("\n")
    i = lines.index(f"## {SECTION}") + 1
    j = next(k for k in range(i, len(lines)) if lines[k].startswith("|"))
    lines[i:j] = ["", text, ""]
    Path(results).write_text("\n".join(lines) + "\n")


def record(summary: dict[str, dict], budget: int, seeds: int, cmd: str, results: Path, png: str) -> None:
    header = ["date", "machine", "method", "budget (epochs)", "seeds", "trials (mean)", "final best val F1",
              "epochs to random's final best", "fraction of budget", "command"]
    for r in summary.values():
        need, frac = _fmt_need(r["epochs_to_target"], budget, r["target"])
        append_row(SECTION, header, [str(datetime.date.today()), machine(), r["label"], str(budget), str(seeds),
                                     f"{r['trials']:.1f}", f"{r['final_mean']:.3f} ± {r['final_std']:.3f}", need,
                                     frac, f"`{cmd}`"], results)
    if "random" in summary:
        write_paragraph(results, verdict(summary, budget, seeds, png))


def _base_config(args: argparse.Namespace) -> Config:
    cfg = settings.load(args.config or (SMOKE if args.quick else config.DEFAULT_CONFIG), args.overrides)
    # every study of the benchmark shares one run dir, and the crop cache of the config's run dir
    out = config.run_dir(cfg) / "bench-search"
    return config.apply(cfg, {"run.dir": str(out), "faces.cache_dir": str(config.cache_dir(cfg))})


def _start_ray(cfg: Config) -> None:
    """A Ray of this process's own, unless a cluster is named: another Ray on this node is not ours to load."""
    import ray

    if not (cfg.search.address or os.environ.get("RAY_ADDRESS")) and not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, log_to_driver=False)


def run_all(cfg: Config, budget: int, seeds: int, methods: list[str] | None = None
            ) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
    """Run (or resume) every study; each method's best-so-far curves (seeds x budget) and trial counts."""
    methods = methods or list(METHODS)
    curves: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    trials: dict[str, list[int]] = {m: [] for m in methods}
    for seed in range(seeds):
        for method in methods:
            study = config.apply(cfg, study_overrides(method, cfg, budget, seed), where="benchmark")
            print(f"== {study.run.study}: {METHODS[method][0]}, seed {seed}", flush=True)
            tune.run(study, log=lambda s: print(s, flush=True))
            log = epoch_log(study)
            expected = budget if method == "ours" else study.search.num_samples * study.train.epochs
            if len(log) < expected:
                raise RuntimeError(f"study '{study.run.study}' stopped after {len(log)} of {expected} epochs "
                                   f"(interrupted, or trials failed); run the same command again to resume it")
            curves[method].append(best_so_far(log, budget))
            trials[method].append(log["trial"].nunique())
            print(f"== {study.run.study}: {len(log)} epochs in {trials[method][-1]} trials, "
                  f"best val F1 {log['val_f1'].max():.3f}", flush=True)
    return {m: np.stack(c) for m, c in curves.items()}, trials


def _report(summary: dict[str, dict], budget: int) -> str:
    lines = [f"{'method':28} {'trials':>6} {'final best val F1':>18} {'epochs to random final':>23} {'fraction':>8}"]
    for r in summary.values():
        need, frac = _fmt_need(r["epochs_to_target"], budget, r["target"])
        lines.append(f"{r['label']:28} {r['trials']:6.1f} {r['final_mean']:11.3f} ± {r['final_std']:.3f} "
                     f"{need:>23} {frac:>8}")
    return "\n".join(lines)


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="YAML config (default conf/search.yaml; --quick: conf/smoke.yaml)")
    p.add_argument("--quick", action="store_true", help="smoke config, 1 seed, a budget of 2 full trials")
    p.add_argument("--seeds", type=int, default=None, help="seeds per method (default 3; --quick: 1)")
    p.add_argument("--budget", type=int, default=None, help="epochs per study (default 32; --quick: 2 trials)")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                   help="default: all three (the goal's verdict needs random)")
    p.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")), help="where the rows go")
    p.add_argument("--plot", default=None, help="the curve PNG (default: search_live.png next to --results)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    cfg = _base_config(args)
    seeds = args.seeds or (1 if args.quick else 3)
    budget = args.budget or (2 * cfg.train.epochs if args.quick else 32)
    if budget < cfg.train.epochs or seeds < 1:
        raise InputError(f"--budget must be >= train.epochs ({cfg.train.epochs}) and --seeds >= 1, "
                         f"got {budget} and {seeds}")
    _start_ray(cfg)
    try:
        curves, trials = run_all(cfg, budget, seeds, args.methods)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary = summarize(curves, trials, {m: label(m, cfg) for m in args.methods})
    print(_report(summary, budget))
    png = plot(curves, budget, Path(args.plot) if args.plot else Path(args.results).with_name("search_live.png"))
    cmd = "python bench/search_live.py " + " ".join(argv if argv is not None else sys.argv[1:])
    record(summary, budget, seeds, cmd.strip(), Path(args.results), png.name)
    if "random" in summary:
        print(verdict(summary, budget, seeds, png.name))
    print(f"curves: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
