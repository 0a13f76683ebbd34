"""Search efficiency on recorded learning curves: many seeds per searcher, replayed through the product's search.

    python bench/search_efficiency.py [--quick] [--seeds 20] [--budgets 8 16 32 64] [--methods NAME ...]
                                      [--parallel 3] [--table bench/curves.jsonl] [--json PATH] [--plot PATH]
                                      [--results PATH] [--config conf/search.yaml] [key=value ...]

Every study is ``search.tune``'s own Tune experiment (OptunaSearch with TPE or random sampling on an
Optuna database, ASHA, the concurrency limit, the epoch-budget stopper) whose trainable replays the
nearest recorded configuration of bench/curves.jsonl (bench/replay.py): the searchers act exactly as in a
live search, and a study costs seconds instead of an hour. A budget of B is B full-trial equivalents
(B x train.epochs epochs over all trials). Each method runs once per seed at the largest budget; the
search's decisions never depend on the budget, so the first B x train.epochs epochs of that study are its
study at budget B (except top-k, whose plan depends on B: its screening study is shared, its selection
is per budget).

Methods (the same ``search.seed`` gives TPE's random start-up trials the random sampler's draws):

- random: Optuna's seeded random sampler, every trial trained ``train.epochs`` (no early stopping);
- tpe-full: TPE (4 random start-up trials), no early stopping;
- ours: the config's search (ASHA and every setting of ``search.*`` in the config, its sampler included);
- asha-before: TPE + ASHA as the demo searched before this benchmark (grace 1, rf 3, 4 start-up
  trials, stopped trials told to Optuna as COMPLETE);
- pruned: asha-before with stopped trials told to Optuna as PRUNED (``search.stopped_trials``);
- hyperband: asha-before with 3 ASHA brackets (``search.brackets``: asynchronous Hyperband);
- startup-2: asha-before with 2 random start-up trials instead of 4;
- startup-16, startup-32, startup-64: asha-before with 16, 32 or 64 random start-up trials (with ASHA a
  start-up trial costs 1-2 epochs);
- random-asha: asha-before with Optuna's seeded random sampler instead of TPE;
- top-k: "train many for one epoch, keep the best" (Egele et al. 2023): half the budget screens
  random configurations for 1 epoch (a random-sampler study with ``train.epochs=1``), the other half
  trains the best of them (by their first-epoch F1) for the remaining epochs, two at a time.

Per method and budget: the fraction of the budget needed to reach random search's final best (the
median over seeds of random search's best after B full trials), median over seeds with a paired
bootstrap 95% interval (seeds resampled together for random and the method), and the final best val F1
(median, interval). Also the oracle bound of bench/search_profile.py on random's draws: an oracle that
knows every configuration's final F1 trains only those that reach the target, one epoch for the rest.

Each finished study is one JSON line under ``<run.dir>/search-efficiency/studies.jsonl`` (keyed by its
settings and the table), so an interrupted benchmark resumes and methods with equal settings share
studies. Writes ``--json`` (one record per method and budget), the PNG and rows in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import replay  # noqa: E402
from _results import append_row, machine  # noqa: E402
from maskclf import config  # noqa: E402
from maskclf.config import Config  # noqa: E402
from search.study.settings import SearchConfig  # noqa: E402
from maskclf.errors import InputError, cli  # noqa: E402
from search.study import settings
from search_profile import oracle_epochs  # noqa: E402

HERE = Path(__file__).resolve().parent
SECTION = "Search efficiency on the recorded learning curves (replayed through the product's search)"
GOAL_BUDGET, GOAL = 32, 1 / 3
BEFORE = {"search.sampler": "tpe", "search.scheduler": "asha", "search.grace_period": 1, "search.reduction_factor": 3,
          "search.n_startup_trials": 4, "search.stopped_trials": "complete", "search.brackets": 1}
METHODS = {  # name -> (label, overrides of the config); "ours" is the config itself
    "random": ("random search, full epochs", {"search.sampler": "random", "search.scheduler": "fifo"}),
    "tpe-full": ("TPE, full epochs", {"search.sampler": "tpe", "search.scheduler": "fifo",
                                      "search.n_startup_trials": 4}),
    "ours": ("ours", {"search.scheduler": "asha"}),
    "asha-before": ("TPE + ASHA as before", BEFORE),
    "pruned": ("stopped trials told to Optuna as pruned", {**BEFORE, "search.stopped_trials": "pruned"}),
    "hyperband": ("Hyperband: 3 ASHA brackets", {**BEFORE, "search.brackets": 3}),
    "startup-2": ("2 random start-up trials", {**BEFORE, "search.n_startup_trials": 2}),
    "top-k": ("1 epoch for many, the best trained on", {"search.sampler": "random", "search.scheduler": "fifo"}),
    "startup-16": ("16 random start-up trials", {**BEFORE, "search.n_startup_trials": 16}),
    "startup-32": ("32 random start-up trials", {**BEFORE, "search.n_startup_trials": 32}),
    "startup-64": ("64 random start-up trials", {**BEFORE, "search.n_startup_trials": 64}),
    "random-asha": ("random search + ASHA", {**BEFORE, "search.sampler": "random"}),
}
SETTINGS = ("sampler", "scheduler", "grace_period", "reduction_factor", "n_startup_trials", "stopped_trials",
            "brackets", "max_concurrent")


def label(method: str, cfg: Config) -> str:
    """The method's name in tables; ASHA methods name their settings."""
    s = config.apply(cfg, METHODS[method][1], where="benchmark").search
    text = METHODS[method][0]
    if s.scheduler == "asha" and method != "top-k":
        startup = f"startup {s.n_startup_trials}, " if s.sampler == "tpe" else ""
        text += (f" ({s.sampler}, grace {s.grace_period}, rf {s.reduction_factor}, {startup}{s.stopped_trials}"
                 + (f", {s.brackets} brackets" if s.brackets > 1 else "") + ")")
    return text


def study_config(cfg: Config, method: str, seed: int, budget: int) -> Config:
    """The config of one replayed study at the largest budget."""
    e = cfg.train.epochs
    values = {**METHODS[method][1], "search.seed": seed, "search.reuse_actors": True}
    if method == "top-k":  # the screening: random configurations of one epoch, half the budget
        values.update({"train.epochs": 1, "search.num_samples": budget * e // 2, "search.budget_epochs": 0})
    elif values.get("search.scheduler") == "fifo":
        values.update({"search.num_samples": budget, "search.budget_epochs": 0})
    else:  # every trial trains at least one epoch, so the budget ends the study first
        values.update({"search.num_samples": budget * e, "search.budget_epochs": budget * e})
    study = config.apply(cfg, values, where="benchmark")
    return config.apply(study, {"run.study": f"{method}-s{seed}"})


def study_key(study: Config, table_id: str) -> str:
    """The study's settings and the table, hashed; a setting the study never reads (the start-up trials of a
    random search) is keyed at its default, so the study is shared whatever the config says of it."""
    s = study.search
    key = {k: getattr(s, k) for k in SETTINGS}
    if s.sampler == "random":
        key["n_startup_trials"] = SearchConfig().n_startup_trials
    key.update(seed=s.seed, samples=s.num_samples, budget=s.budget_epochs, epochs=study.train.epochs,
               space=s.space, table=table_id)
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def table_id(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:12]


# ---- running the studies ---------------------------------------------------------------------------------

_TABLE = None


def _worker_init(address: str, table_path: str, cfg: Config, time_scale: float) -> None:
    global _TABLE
    import ray

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    _TABLE = replay.Table.load(cfg, table_path, time_scale)


def _run_one(job: tuple) -> dict:
    key, method, seed, study = job
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    t0 = time.time()
    rows = replay.run_study(study, _TABLE)
    trials = {t: i for i, t in enumerate(dict.fromkeys(r[0] for r in rows))}
    return {"key": key, "method": method, "seed": seed, "wall_s": round(time.time() - t0, 1),
            "log": [[trials[r[0]], r[1], round(r[2], 5), r[3], r[4]] for r in rows]}


def run_studies(cfg: Config, methods: list[str], seeds: int, budget: int, args) -> dict[tuple[str, int], dict]:
    """Run (or load) every study; {(method, seed): record} with the study's ordered epoch log."""
    import ray

    store = config.run_dir(cfg) / "search-efficiency" / "studies.jsonl"
    store.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if store.is_file():
        for line in store.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[r["key"]] = r
    tid = table_id(args.table)
    jobs, out = [], {}
    for seed in range(seeds):
        for m in methods:
            study = study_config(cfg, m, seed, budget)
            key = study_key(study, tid)
            if key in done:
                out[(m, seed)] = done[key]
            elif all(j[0] != key for j in jobs):
                jobs.append((key, m, seed, study))
    waiting = {(m, s): study_key(study_config(cfg, m, s, budget), tid) for m in methods for s in range(seeds)
               if (m, s) not in out}
    print(f"{len(methods)} methods x {seeds} seeds at {budget} full trials: {len(out)} studies recorded in "
          f"{store}, {len(jobs)} to run ({args.parallel} at a time)", flush=True)
    if jobs:
        ray.init(num_cpus=2 * args.parallel, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        address = ray.get_runtime_context().gcs_address
        t0 = time.time()
        try:
            with mp.get_context("spawn").Pool(args.parallel, _worker_init,
                                               (address, str(args.table), cfg, args.time_scale)) as pool:
                for i, r in enumerate(pool.imap_unordered(_run_one, jobs), 1):
                    with store.open("a") as f:
                        f.write(json.dumps(r) + "\n")
                    done[r["key"]] = r
                    left = (time.time() - t0) / i * (len(jobs) - i)
                    best = max(x[2] for x in r["log"])
                    print(f"[{i}/{len(jobs)}] {r['method']} seed {r['seed']}: {len(r['log'])} epochs in "
                          f"{1 + max(x[0] for x in r['log'])} trials, best {best:.3f} ({r['wall_s']:.0f} s; "
                          f"~{left / 60:.0f} min left)", flush=True)
        finally:
            ray.shutdown()
    for ms, key in waiting.items():
        out[ms] = done[key]
    return out


# ---- from study logs to curves ---------------------------------------------------------------------------

def best_curve(log: list, length: int) -> np.ndarray:
    """Best val F1 after 1..length epochs spent; a study that ended before spending ``length`` epochs keeps
    its best to the end (the rest of its budget is left unspent)."""
    best = np.maximum.accumulate(np.array([r[2] for r in log], dtype=float))[:length]
    return np.concatenate([best, np.full(length - len(best), best[-1])])


def top_k_curve(log: list, table: replay.Table, budget: int, epochs: int) -> np.ndarray:
    """The top-k method at ``budget`` full trials: the screening study's first ``budget * epochs // 2``
    one-epoch trials, then the best ``k`` of them trained on, two at a time, with the runs they replayed."""
    n = budget * epochs // 2
    screened = [r for r in log if r[1] == 1][:n]
    k = max(1, (budget * epochs - n) // (epochs - 1))
    runs = {(r["id"], r["seed"]): r for rs in table.runs.values() for r in rs}
    picked = sorted(screened, key=lambda r: -r[2])[:k]
    values = [r[2] for r in screened]
    for a in range(0, len(picked), 2):  # two trials in flight, one epoch each in turn
        pair = [runs[(r[3], r[4])]["val_f1"] for r in picked[a:a + 2]]
        for e in range(1, epochs):
            values += [f1[e] for f1 in pair]
    return best_curve([[0, 0, v] for v in values], budget * epochs)


def curves_for(studies: dict, methods: list[str], seeds: int, budgets: list[int], table: replay.Table,
               epochs: int) -> dict[str, dict[int, np.ndarray]]:
    """{method: {budget: seeds x (budget * epochs) best-so-far curves}}."""
    top = max(budgets) * epochs
    out: dict[str, dict[int, np.ndarray]] = {}
    for m in methods:
        out[m] = {}
        for b in budgets:
            rows = []
            for s in range(seeds):
                log = studies[(m, s)]["log"]
                rows.append(top_k_curve(log, table, b, epochs) if m == "top-k" else best_curve(log, top)[:b * epochs])
            out[m][b] = np.stack(rows)
    return out


def _needed(curves: np.ndarray, target: float, full: np.ndarray | None) -> np.ndarray:
    """Per seed, epochs to reach ``target`` (searching on into ``full``, the longer study, if given); inf: never."""
    src = full if full is not None else curves
    hit = np.nan_to_num(src, nan=-1.0) >= target - 1e-12
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1.0, np.inf)


def summarize(curves: dict, methods: list[str], seeds: int, budgets: list[int], epochs: int,
              draws: int = 2000, seed: int = 0) -> list[dict]:
    """One record per method and budget: the fraction of the budget to reach random's final best and the
    final best, medians over seeds with paired bootstrap 95% intervals."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, seeds, size=(draws, seeds))
    top = max(budgets)
    records = []
    for b in budgets:
        rnd_final = curves["random"][b][:, -1]
        target = float(np.median(rnd_final))
        boot_targets = np.median(rnd_final[idx], axis=1)
        for m in methods:
            c = curves[m][b]
            full = None if m == "top-k" else curves[m][top]
            final = c[:, -1]
            # the targets of the bootstrap draws differ: the epochs needed are found per distinct target
            need = _needed(c, target, full) / (b * epochs)
            boot = np.empty(draws)
            cache: dict[float, np.ndarray] = {}
            for d in range(draws):
                t = float(boot_targets[d])
                if t not in cache:
                    cache[t] = _needed(c, t, full) / (b * epochs)
                boot[d] = np.median(cache[t][idx[d]])
            fb = np.median(final[idx], axis=1)
            with np.errstate(invalid="ignore"):  # a percentile between two "never"s is never
                lo, hi = np.percentile(boot, 2.5), np.percentile(boot, 97.5)
            records.append({
                "method": m, "budget": b, "seeds": seeds, "target": round(target, 4),
                "median_fraction": _num(np.median(need)), "ci_low": _num(lo),
                "ci_high": _num(hi), "reached": int(np.isfinite(need).sum()),
                "final_best_median": round(float(np.median(final)), 4),
                "final_ci_low": round(float(np.percentile(fb, 2.5)), 4),
                "final_ci_high": round(float(np.percentile(fb, 97.5)), 4)})
    return records


def _shown(path: str) -> str:
    """``path`` relative to the project when it lies inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(HERE.parent)) if p.is_relative_to(HERE.parent) else str(p)


def _num(v: float) -> float | None:
    """JSON has no infinity: a fraction never reached is null."""
    return round(float(v), 4) if np.isfinite(v) else None


def oracle(studies: dict, table: replay.Table, seeds: int, budgets: list[int], curves: dict, epochs: int) -> dict:
    """Median fraction of each budget that the oracle stopping rule needs on the runs random search replayed
    (in its order); a seed whose draws never reach the target counts as never."""
    runs = {(r["id"], r["seed"]): r["val_f1"][:epochs] for rs in table.runs.values() for r in rs}
    out = {}
    for b in budgets:
        target = float(np.median(curves["random"][b][:, -1]))
        need = []
        for s in range(seeds):
            drawn = np.array([runs[(r[3], r[4])] for r in studies[("random", s)]["log"] if r[1] == 1])
            reach = drawn[:, -1].max() >= target
            need.append(oracle_epochs(drawn, np.arange(len(drawn)), target) / (b * epochs) if reach else np.inf)
        out[b] = _num(np.median(need))
    return out


# ---- outputs ---------------------------------------------------------------------------------------------

COLORS = {"random": "tab:blue", "tpe-full": "tab:green", "ours": "tab:red", "asha-before": "tab:orange",
          "pruned": "tab:purple", "hyperband": "tab:brown", "startup-2": "tab:pink", "top-k": "tab:gray",
          "startup-16": "tab:olive", "startup-32": "gold", "startup-64": "darkkhaki", "random-asha": "tab:cyan"}


def plot(curves: dict, records: list[dict], labels: dict[str, str], budget: int, epochs: int, path: Path) -> Path:
    """Left: best val F1 so far at ``budget`` (median over seeds, 25-75% band). Right: the fraction of random's
    budget each method needs, per budget, with its bootstrap interval."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 7.5))
    fig.subplots_adjust(bottom=0.3, wspace=0.22)
    ax, bx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    x = np.arange(1, budget * epochs + 1) / epochs
    for m, by in curves.items():
        c = by[budget]
        ax.step(x, np.nanmedian(c, axis=0), where="post", color=COLORS.get(m), lw=2.2 if m == "ours" else 1.2,
                label=f"{labels[m]} (n={len(c)})")
        ax.fill_between(x, np.nanpercentile(c, 25, axis=0), np.nanpercentile(c, 75, axis=0), step="post",
                        color=COLORS.get(m), alpha=0.12, lw=0)
    target = next(r["target"] for r in records if r["budget"] == budget)
    ax.axhline(target, color="tab:blue", ls="--", lw=0.8, label="random's final best (median)")
    ax.axvline(budget * GOAL, color="grey", ls=":", lw=1, label="a third of the budget")
    ax.set(xlabel="full-trial equivalents spent (epochs / train.epochs)", ylabel="best val macro F1 so far",
           title=f"budget {budget}: median over seeds, 25-75% band", xlim=(0, budget),
           ylim=(max(0.0, target - 0.15), None))
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=2, fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    methods = list(curves)
    budgets = sorted({r["budget"] for r in records})
    for j, m in enumerate(methods):
        rs = [r for r in records if r["method"] == m]
        xs = np.arange(len(budgets)) + (j - len(methods) / 2) * 0.08
        med = [r["median_fraction"] if r["median_fraction"] is not None else 2.0 for r in rs]
        lo = [r["ci_low"] if r["ci_low"] is not None else 2.0 for r in rs]
        hi = [r["ci_high"] if r["ci_high"] is not None else 2.0 for r in rs]
        bx.errorbar(xs, med, yerr=[np.subtract(med, lo), np.subtract(hi, med)], fmt="o", ms=4, capsize=2,
                    color=COLORS.get(m), label=labels[m])
    bx.axhline(GOAL, color="grey", ls=":", lw=1)
    bx.set(xticks=range(len(budgets)), xticklabels=[str(b) for b in budgets], ylim=(0, 2.05),
           xlabel="budget (full-trial equivalents)", ylabel="fraction of the budget to reach random's final best",
           title="median over seeds, paired bootstrap 95% interval (2 = not reached)")
    bx.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    return path


def _fmt(v: float | None) -> str:
    return "never" if v is None else f"{v:.2f}"


def _frac(r: dict) -> str:
    return f"{_fmt(r['median_fraction'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"


def report(records: list[dict], labels: dict[str, str], bound: dict[int, float]) -> str:
    lines = [f"{'method':78} {'budget':>6} {'fraction of budget [95% CI]':>28} {'final best [95% CI]':>22} reached"]
    for r in records:
        lines.append(f"{labels[r['method']]:78} {r['budget']:6d} {_frac(r):>28} "
                     f"{r['final_best_median']:.3f} [{r['final_ci_low']:.3f}, {r['final_ci_high']:.3f}] "
                     f"{r['reached']}/{r['seeds']}")
    lines.append("oracle stopping rule on random's draws (median fraction): "
                 + ", ".join(f"budget {b}: {_fmt(f)}" for b, f in bound.items()))
    return "\n".join(lines)


def record(records: list[dict], labels: dict[str, str], bound: dict[int, float], cmd: str, results: Path) -> None:
    header = ["date", "machine", "method", "budget (full trials)", "seeds", "random's final best (median)",
              "fraction of budget to reach it: median [95% CI]", "final best val F1: median [95% CI]",
              "oracle stopping bound", "command"]
    for r in records:
        append_row(SECTION, header, [
            str(datetime.date.today()), machine(), labels[r["method"]], str(r["budget"]), str(r["seeds"]),
            f"{r['target']:.3f}", _frac(r),
            f"{r['final_best_median']:.3f} [{r['final_ci_low']:.3f}, {r['final_ci_high']:.3f}]",
            _fmt(bound[r["budget"]]), f"`{cmd}`"], results)


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/search_efficiency.py", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(config.DEFAULT_CONFIG), help="YAML config: its search.space must be "
                                                                        "the table's (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="2 seeds, budgets 4 and 8, 4 methods: a check that runs")
    p.add_argument("--seeds", type=int, default=None, help="seeds per method (default 20; --quick 2)")
    p.add_argument("--budgets", type=int, nargs="+", default=None, help="full-trial budgets (default 8 16 32 64)")
    p.add_argument("--methods", nargs="+", default=None, choices=list(METHODS), help="default: all")
    p.add_argument("--parallel", type=int, default=3, help="studies replayed at once (default 3)")
    p.add_argument("--time-scale", type=float, default=0.002, help="replayed epoch time / recorded (default 0.002)")
    p.add_argument("--table", default=str(replay.TABLE), help="the learning-curve table (default bench/curves.jsonl)")
    p.add_argument("--json", default=str(HERE / "search_efficiency.json"), help="the summary (one record per "
                                                                                "method and budget)")
    p.add_argument("--plot", default=str(HERE / "search_curve.png"), help="the curves PNG")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"), help="where the rows go")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    cfg = settings.load(args.config, args.overrides)
    seeds = args.seeds or (2 if args.quick else 20)
    budgets = sorted(args.budgets or ([4, 8] if args.quick else [8, 16, 32, 64]))
    methods = args.methods or (["random", "ours", "pruned", "top-k"] if args.quick else list(METHODS))
    methods = ["random", *[m for m in methods if m != "random"]]
    problems = []
    if seeds < 2 or min(budgets) < 2 or args.parallel < 1:
        problems.append("--seeds must be >= 2, every budget >= 2 and --parallel >= 1")
    if not Path(args.table).is_file():
        problems.append(f"--table: file not found: {args.table}")
    if problems:
        raise InputError("; ".join(problems))
    try:
        table = replay.Table.load(cfg, Path(args.table))
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        raise InputError(f"--table {args.table}: not a learning-curve table of this config's space and "
                         f"train.epochs ({e})") from None
    missing = [k for k in cfg.search.space if k not in table.params[0]]
    if missing:
        raise InputError(f"--table {args.table}: recorded without {', '.join(missing)} of search.space "
                         f"(record it with bench/curves.py and the same config)")
    print(f"table {args.table}: {len(table.ids)} configurations, {sum(len(r) for r in table.runs.values())} runs "
          f"of {cfg.train.epochs} epochs", flush=True)
    studies = run_studies(cfg, methods, seeds, max(budgets), args)
    curves = curves_for(studies, methods, seeds, budgets, table, cfg.train.epochs)
    records = summarize(curves, methods, seeds, budgets, cfg.train.epochs)
    labels = {m: label(m, cfg) for m in methods}
    bound = oracle(studies, table, seeds, budgets, curves, cfg.train.epochs)
    print(report(records, labels, bound))
    goal = HERE / "search_efficiency.json"
    Path(args.json).write_text(json.dumps({
        "date": str(datetime.date.today()), "machine": machine(), "table": _shown(args.table), "table_id": table_id(args.table),
        "configurations": len(table.ids), "epochs": cfg.train.epochs, "oracle_fraction": bound,
        "labels": labels, "records": records}, indent=1) + "\n")
    png = plot(curves, records, labels, GOAL_BUDGET if GOAL_BUDGET in budgets else max(budgets), cfg.train.epochs,
               Path(args.plot))
    cmd = ("python bench/search_efficiency.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    record(records, labels, bound, cmd, Path(args.results))
    print(f"summary: {args.json}{' (the committed figures)' if Path(args.json) == goal else ''}; curves: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
