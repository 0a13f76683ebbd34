"""Warm start against a cold start: new studies of the demo search, with and without the trials of an
earlier study to start from.

    python bench/warm_start.py [--quick] [--seeds 1 2] [--results PATH] [--config conf/search.yaml] [key=value ...]

The source is the config's own study (``run.study``, "demo" for conf/search.yaml): run, or reused when it
has finished, through ``search.tune.run``. For each seed, two new studies of ``search.num_samples``
trials with ``search.seed`` = that seed: ``cold-s<seed>`` from nothing (TPE's random start-up trials
first), ``warm-s<seed>`` with ``search.warm_start`` = the source, so TPE models the source's finished
trials from its first trial on. Figures are over each new study's own trials (the taken-over trials
are not counted): the best val macro F1, the median of its trials' best, and the trial (in start order)
that first reached the cold studies' median best. Every study keeps its name, so running the command
again resumes an interrupted benchmark and reuses finished studies.

Prints the table and appends a row per kind (cold, warm) to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._results import RESULTS, append_row, machine  # noqa: E402
from maskclf import config  # noqa: E402
from maskclf.errors import cli  # noqa: E402
from search import tune  # noqa: E402
from search.cluster.experiment import study_dir  # noqa: E402
from search.study import settings

SECTION = "Warm start: new studies of the demo search with and without an earlier study's trials"
SMOKE = Path(__file__).resolve().parent.parent / "conf" / "smoke.yaml"


def _trials(cfg: config.Config) -> pd.DataFrame:
    """The study's own trials in start order, from its trials table and Tune's record of the order."""
    table = pd.read_csv(study_dir(cfg) / "trials.csv", dtype={"trial": str})
    order = [p.name for p in sorted((Path(config.run_dir(cfg)) / "tune").glob(f"{cfg.run.study}*"))]
    rank = {}
    for exp in order:
        for trial_dir in sorted((Path(config.run_dir(cfg)) / "tune" / exp).glob("train_trial_*")):
            key, n = trial_dir.name.split("_")[2], int(trial_dir.name.split("_")[3])
            rank[key] = (order.index(exp), n)
    return table.assign(order=table["trial"].map(rank)).sort_values("order").reset_index(drop=True)


def run_all(cfg: config.Config, seeds: list[int]) -> dict[str, list[pd.DataFrame]]:
    log = lambda s: print(s, flush=True)  # noqa: E731
    print(f"== source study '{cfg.run.study}'", flush=True)
    tune.run(cfg, log=log)
    out: dict[str, list[pd.DataFrame]] = {"cold": [], "warm": []}
    for seed in seeds:
        for kind in ("cold", "warm"):
            values = {"run.study": f"{kind}-s{seed}", "search.seed": seed}
            if kind == "warm":
                values["search.warm_start"] = cfg.run.study
            study = config.apply(cfg, values, where="benchmark")
            print(f"== {study.run.study}", flush=True)
            tune.run(study, log=log)
            out[kind].append(_trials(study))
    return out


def summary(studies: dict[str, list[pd.DataFrame]]) -> dict[str, dict]:
    target = statistics.median(float(t["best_val_f1"].max()) for t in studies["cold"])
    res = {}
    for kind, tables in studies.items():
        bests = [float(t["best_val_f1"].max()) for t in tables]
        reach = []
        for t in tables:
            hit = [i + 1 for i, v in enumerate(t["best_val_f1"]) if v >= target]
            reach.append(hit[0] if hit else None)
        res[kind] = {"bests": bests, "best_mean": statistics.mean(bests),
                     "median_trial": statistics.mean(float(t["best_val_f1"].median()) for t in tables),
                     "reach": reach, "epochs": statistics.mean(float(t["epochs"].sum()) for t in tables)}
    res["target"] = target
    return res


def _report(res: dict, n: int) -> str:
    lines = [f"target: the cold studies' median best val F1, {res['target']:.3f}",
             f"{'kind':6} {'best val F1 per seed':>24} {'mean':>6} {'median trial':>13} {'trial reaching target':>22}"]
    for kind in ("cold", "warm"):
        r = res[kind]
        reach = ", ".join("-" if x is None else str(x) for x in r["reach"])
        lines.append(f"{kind:6} {', '.join(f'{b:.3f}' for b in r['bests']):>24} {r['best_mean']:6.3f} "
                     f"{r['median_trial']:13.3f} {reach + f' (of {n})':>22}")
    return "\n".join(lines)


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/warm_start.py", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None, help="YAML config (default conf/search.yaml; --quick: conf/smoke.yaml)")
    p.add_argument("--quick", action="store_true", help="smoke config, one seed, 2-epoch trials")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds of the new studies (default 1 2)")
    p.add_argument("--results", default=str(RESULTS), help="results file (default bench/RESULTS.md)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    overrides = (["train.epochs=2", "search.grace_period=1"] if args.quick else []) + args.overrides
    cfg = settings.load(args.config or (SMOKE if args.quick else config.DEFAULT_CONFIG), overrides)
    seeds = args.seeds or ([1] if args.quick else [1, 2])
    import ray

    if not (cfg.search.address or os.environ.get("RAY_ADDRESS")):
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    res = summary(run_all(cfg, seeds))
    n = cfg.search.num_samples
    print(_report(res, n), flush=True)
    cmd = "python bench/warm_start.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = ["date", "machine", "studies", "seeds", "trials each", "best val F1 per seed", "mean best",
              "median trial (mean)", "trial first reaching the cold median best", "epochs trained (mean)", "command"]
    for kind in ("cold", "warm"):
        r = res[kind]
        what = "cold: no warm start" if kind == "cold" else f"warm: warm_start={cfg.run.study}"
        append_row(SECTION, header, [str(datetime.date.today()), machine(), what, " ".join(map(str, seeds)), str(n),
                                     ", ".join(f"{b:.3f}" for b in r["bests"]), f"{r['best_mean']:.3f}",
                                     f"{r['median_trial']:.3f}",
                                     ", ".join("-" if x is None else str(x) for x in r["reach"]) +
                                     f" (target {res['target']:.3f})", f"{r['epochs']:.0f}", f"`{cmd.strip()}`"],
                   args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
