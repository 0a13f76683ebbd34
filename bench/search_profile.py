"""Why the search benchmark's goal is hard: learning curves, stopping rules and the best any rule can do.

    python bench/search_profile.py [--quick] [--collect 24] [--budgets 32 48 64] [--draws 2000]
                                   [--results PATH] [--config conf/search.yaml] [key=value ...]

bench/search_efficiency.py measures best val F1 against epochs spent; this script explains its
figures from the learning curves themselves. It trains ``--collect`` random configurations of the
search space to the full ``train.epochs`` (study ``curves-r<N>``, through ``search.tune.run``, random
sampler, no early stopping, seed 100; resumed and reused when run again), adds the full-length
trials of the benchmark's random-search studies, and from that pool of curves:

1. ranks: how well val F1 after e epochs orders the trials by their final val F1 (Spearman);
2. replays Ray's ASHA rule (a trial reaching a rung stops when it is below the rung's
   (1 - 1/rf) quantile; the first at a rung goes on) on random draws of these curves, two trials at
   once as in the demo, for several grace periods and reduction factors, and random search's full
   trials the same way: the mean best-so-far curve over ``--draws`` draws, and the epochs it takes to
   reach random search's mean final best, as in bench/search_efficiency.py;
3. bounds every stopping rule under random sampling: an oracle that knows each trial's final F1
   stops, after one epoch, every trial that would end below the target and trains the others to
   the end; the epochs it needs (median over draws) are the least any early stopping can need
   unless the sampler proposes better configurations than random ones.

Prints the tables and appends a row per budget to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_row, machine  # noqa: E402
from maskclf import config  # noqa: E402
from maskclf.config import Config  # noqa: E402
from maskclf.errors import InputError, cli  # noqa: E402
from search import cluster, tune  # noqa: E402
from search_live import _base_config, _start_ray  # noqa: E402

SECTION = "Search profile: what early stopping can gain on the demo's learning curves"
SETTINGS = [(1, 2), (1, 3), (1, 4), (2, 2), (2, 3)]  # (grace period, reduction factor) replayed


def full_curves(cfg: Config, studies: list[str]) -> np.ndarray:
    """val F1 per epoch (trials x train.epochs) of every distinct configuration trained to the end."""
    by_config: dict[str, np.ndarray] = {}
    for study in studies:
        for path in sorted((Path(cluster.storage_path(cfg)) / study).glob("*/result.json")):
            params = path.parent / "params.json"
            if not path.stat().st_size or not params.is_file():
                continue
            f1 = pd.read_json(path, lines=True).sort_values("epoch")["val_f1"].to_numpy()
            if len(f1) >= cfg.train.epochs:  # the same configuration in two studies counts once
                by_config[json.dumps(json.loads(params.read_text()), sort_keys=True)] = f1[:cfg.train.epochs]
    return np.array(list(by_config.values()))


def rank_correlation(curves: np.ndarray) -> list[float]:
    """Spearman correlation of val F1 after each epoch with the final val F1."""
    return [float(spearmanr(curves[:, e], curves[:, -1])[0]) for e in range(curves.shape[1])]


def rungs(grace: int, rf: int, max_t: int) -> list[int]:
    """ASHA's milestones below max_t: grace, grace * rf, grace * rf^2, ..."""
    out, m = [], grace
    while m < max_t:
        out.append(m)
        m *= rf
    return out


def replay(curves: np.ndarray, order: np.ndarray, budget: int, grace: int | None, rf: int,
           concurrent: int = 2) -> tuple[np.ndarray, int]:
    """Best val F1 so far after each of ``budget`` epochs, and the trials started, when the curves in
    ``order`` are trained ``concurrent`` at a time (one epoch each in turn) under ASHA; ``grace=None``:
    no early stopping (every trial trains to the end)."""
    max_t = curves.shape[1]
    recorded = {m: [] for m in (rungs(grace, rf, max_t) if grace else [])}
    log: list[float] = []
    started = 0

    def start() -> list[int]:
        nonlocal started
        started += 1
        return [int(order[(started - 1) % len(order)]), 0]

    running = [start() for _ in range(concurrent)]
    while len(log) < budget:
        for i, trial in enumerate(running):
            if len(log) >= budget:
                break
            trial[1] += 1
            f1 = curves[trial[0], trial[1] - 1]
            log.append(f1)
            stop = trial[1] >= max_t
            if trial[1] in recorded:
                seen = recorded[trial[1]]
                stop |= bool(seen) and f1 < np.nanpercentile(seen, (1 - 1 / rf) * 100)
                seen.append(f1)
            if stop and len(log) < budget:
                running[i] = start()
    return np.maximum.accumulate(np.array(log)), started


def oracle_epochs(curves: np.ndarray, order: np.ndarray, target: float, concurrent: int = 2) -> int:
    """Epochs an all-knowing stopping rule needs to reach ``target`` on the curves in ``order``."""
    final = curves[:, -1]
    if final.max() < target:
        raise ValueError(f"no curve reaches {target:.3f}")
    nxt, spent = concurrent, 0
    running = [[int(order[i % len(order)]), 0] for i in range(concurrent)]
    while True:
        for trial in running:
            trial[1] += 1
            spent += 1
            if curves[trial[0], trial[1] - 1] >= target:
                return spent
            if trial[1] >= curves.shape[1] or final[trial[0]] < target:
                trial[0], trial[1] = int(order[nxt % len(order)]), 0
                nxt += 1


def _reached(mean_curve: np.ndarray, target: float) -> int | None:
    hit = np.flatnonzero(mean_curve >= target - 1e-12)
    return int(hit[0]) + 1 if len(hit) else None


def profile(curves: np.ndarray, budget: int, draws: int, seed: int = 0) -> dict:
    """Random search's target and, per stopping rule, the epochs its mean curve needs to reach it."""
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(len(curves)) for _ in range(draws)]
    rand = np.stack([replay(curves, o, budget, None, 2)[0] for o in orders])
    target = float(rand[:, -1].mean())
    out = {"budget": budget, "target": target, "random": _reached(rand.mean(0), target), "asha": {}}
    for grace, rf in SETTINGS:
        runs = [replay(curves, o, budget, grace, rf) for o in orders]
        mean = np.stack([c for c, _ in runs]).mean(0)
        out["asha"][(grace, rf)] = {"epochs": _reached(mean, target), "final": float(mean[-1]),
                                    "at_third": float(mean[budget // 3 - 1]),
                                    "trials": float(np.mean([n for _, n in runs]))}
    need = np.array([oracle_epochs(curves, o, target) for o in orders])
    out["oracle"] = {"median": float(np.median(need)), "p_third": float(np.mean(need <= budget / 3))}
    return out


def _frac(epochs: int | None, budget: int) -> str:
    return f"{epochs} ({epochs / budget:.2f})" if epochs is not None else f"> {budget}"


def collect(cfg: Config, n: int) -> str:
    """Train ``n`` random configurations to the end (resumed if interrupted); the study's name."""
    name = f"curves-r{n}"
    study = config.apply(cfg, {"run.study": name, "search.sampler": "random", "search.scheduler": "fifo",
                               "search.num_samples": n, "search.seed": 100, "search.budget_epochs": 0},
                         where="benchmark")
    print(f"== {name}: {n} random configurations x {cfg.train.epochs} epochs", flush=True)
    tune.run(study, log=lambda s: print(s, flush=True))
    return name


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="YAML config (default conf/search.yaml; --quick: conf/smoke.yaml)")
    p.add_argument("--quick", action="store_true", help="smoke config, 4 configurations, 200 draws")
    p.add_argument("--collect", type=int, default=None, help="random configurations to train (default 24)")
    p.add_argument("--budgets", type=int, nargs="+", default=None, help="epochs per study (default 32 48 64)")
    p.add_argument("--draws", type=int, default=None, help="random orders replayed (default 2000)")
    p.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")), help="where the rows go")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    cfg = _base_config(args)
    n = args.collect or (4 if args.quick else 24)
    draws = args.draws or (200 if args.quick else 2000)
    budgets = args.budgets or ([2 * cfg.train.epochs] if args.quick else [32, 48, 64])
    if n < 2 or min(budgets) < cfg.train.epochs:
        raise InputError(f"--collect must be >= 2 and every budget >= train.epochs ({cfg.train.epochs}); "
                         f"got {n} and {budgets}")
    _start_ray(cfg)
    studies = [collect(cfg, n)]
    studies += sorted(d.name for d in Path(cluster.storage_path(cfg)).glob("random-b*") if d.is_dir())
    curves = full_curves(cfg, studies)
    if len(curves) < 2:
        print(f"error: fewer than 2 full-length trials in {', '.join(studies)}", file=sys.stderr)
        return 1
    rho = rank_correlation(curves)
    print(f"{len(curves)} configurations trained {cfg.train.epochs} epochs (studies: {', '.join(studies)}); "
          f"final val F1 quartiles {np.round(np.quantile(curves[:, -1], [0, .25, .5, .75, 1]), 3).tolist()}")
    print("Spearman of val F1 after e epochs with the final one: "
          + ", ".join(f"e{e + 1} {r:.2f}" for e, r in enumerate(rho)))
    cmd = "python bench/search_profile.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = ["date", "machine", "curves", "budget (epochs)", "random's final best",
              *[f"ASHA g{g} rf{r}" for g, r in SETTINGS], "oracle stopping (median)",
              "oracle ≤ 1/3 of budget", "Spearman e1 / e2 / e3 with final", "command"]
    for budget in budgets:
        res = profile(curves, budget, draws)
        print(f"budget {budget}: random search's final best {res['target']:.3f} (reached after "
              f"{_frac(res['random'], budget)}); epochs for the mean curve to reach it (fraction of budget):")
        for (g, r), a in res["asha"].items():
            print(f"  ASHA grace {g} rf {r}: {_frac(a['epochs'], budget):>12}  trials {a['trials']:.1f}  "
                  f"best at a third {a['at_third']:.3f}  final {a['final']:.3f}")
        o = res["oracle"]
        print(f"  oracle stopping: median {o['median']:.0f} ({o['median'] / budget:.2f}); "
              f"within a third of the budget in {o['p_third']:.0%} of draws")
        append_row(SECTION, header, [
            str(datetime.date.today()), machine(), str(len(curves)), str(budget), f"{res['target']:.3f}",
            *[_frac(a["epochs"], budget) for a in res["asha"].values()],
            f"{o['median']:.0f} ({o['median'] / budget:.2f})", f"{o['p_third']:.0%} of draws",
            " / ".join(f"{r:.2f}" for r in rho[:3]), f"`{cmd.strip()}`"], args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
