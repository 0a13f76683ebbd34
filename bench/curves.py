"""Record a learning-curve table of the demo's search space: every configuration of a discretised space
trained to the full epoch budget on fold 0, its per-epoch val macro F1 kept, so that searchers can be
replayed against the table at almost no cost (as tabular benchmarks such as LCBench do).

    python bench/curves.py [--quick] [--configs 200] [--second-seed 40] [--workers 2] [--out PATH]
                           [--config conf/search.yaml] [key=value ...]

The space is ``search.space`` of the config made discrete: a choice keeps its values, a (log)uniform range
becomes ``--grid`` points (log-spaced for loguniform, rounded to two significant digits), an integer range
its integers (at most ``--grid`` of them). When the product is larger than ``--configs``, that many distinct
points are drawn from it (seed 0) in a fixed order. Each point is trained by ``maskclf.engine.fit`` with
``train.seed`` 0 for ``train.epochs`` epochs, one process per worker with one torch thread each; the first
``--second-seed`` points are trained again with ``train.seed`` 1, so the noise between seeds is known.

Each finished run is one JSON line of ``--out`` (default bench/curves.jsonl): ``id`` (the point's hash),
``params``, ``seed``, ``val_f1``, ``val_loss``, ``f1_ge60`` and ``epoch_time`` per epoch, and ``machine``.
Running the command again skips the runs the file holds, so an interrupted recording resumes; ``--configs``
may be raised later to add points (the first N points of the draw are the same for any larger N).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import itertools
import json
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._results import machine  # noqa: E402
from maskclf import config  # noqa: E402
from maskclf.errors import InputError, cli  # noqa: E402
from search.study import settings

OUT = Path(__file__).with_name("curves.jsonl")
SMOKE = Path(__file__).resolve().parent.parent / "conf" / "smoke.yaml"


def _round(v: float) -> float:
    return float(f"{v:.2g}")


def grid(spec: dict, points: int) -> list:
    """The values one space entry takes in the table."""
    kind = next(k for k in spec if k != "when")
    args = spec[kind]
    if kind == "choice":
        return list(args)
    lo, hi = args
    if kind in ("int", "logint"):
        values = list(range(int(lo), int(hi) + 1))
        if len(values) <= points:
            return values
        pick = np.geomspace(lo, hi, points) if kind == "logint" else np.linspace(lo, hi, points)
        return sorted({int(round(v)) for v in pick})
    pick = np.geomspace(lo, hi, points) if kind == "loguniform" else np.linspace(lo, hi, points)
    return [_round(v) for v in pick]


def point_id(params: dict) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def points(space: dict[str, dict], n: int, per_range: int, seed: int = 0) -> list[dict]:
    """``n`` distinct points of the discretised space (all of it when smaller), in a fixed order. A conditional
    entry (``when``) is left out of the points where its condition does not hold."""
    axes = [grid(spec, per_range) for spec in space.values()]
    sizes = [len(v) for v in axes]
    total = math.prod(sizes)
    rng = np.random.default_rng(seed)
    # the same order whatever n is: a permutation of the whole product (drawn with repeats when it is huge)
    flat = rng.permutation(total) if total <= 10**7 else (rng.integers(total) for _ in itertools.count())
    order = (tuple(v[k] for v, k in zip(axes, np.unravel_index(int(i), sizes))) for i in flat)
    out, seen = [], set()
    for values in order:
        chosen = {}
        for (key, spec), v in zip(space.items(), values):
            cond = spec.get("when") or {}
            if all(chosen.get(k) in (c if isinstance(c, list) else [c]) for k, c in cond.items()):
                chosen[key] = v.item() if isinstance(v, np.generic) else v
        pid = point_id(chosen)
        if pid not in seen:
            seen.add(pid)
            out.append(chosen)
        if len(out) >= n:
            break
    return out


_PREP = None


def _train(job: tuple) -> dict:
    """One point trained to the full budget in this worker (crops prepared once per worker)."""
    global _PREP
    cfg, params, seed = job
    import shutil

    import torch

    from maskclf import dataset, engine

    torch.set_num_threads(1)
    if _PREP is None:
        _PREP = dataset.prepare(cfg, log=lambda s: None, progress=False)
    run = config.apply(cfg, {**params, "train.seed": seed, "train.device": "cpu", "train.threads": 1})
    train, val = _PREP.fold(run)
    work = Path(cfg.run.dir) / "curves-work" / f"{point_id(params)}-s{seed}"
    t0 = time.time()
    r = engine.fit(run, train, val, out_dir=work, log=lambda s: None)
    shutil.rmtree(work, ignore_errors=True)
    h = r["history"]
    return {"id": point_id(params), "params": params, "seed": seed, "epochs": len(h),
            **{k: [round(float(m.get(k, float("nan"))), 5) for m in h] for k in ("val_f1", "val_loss", "f1_ge60")},
            "epoch_time": [round(m["epoch_time"], 2) for m in h], "wall_s": round(time.time() - t0, 1)}


def record(cfg: config.Config, args) -> int:
    pts = points(cfg.search.space, args.configs, args.grid)
    jobs = [(p, 0) for p in pts] + [(p, 1) for p in pts[:args.second_seed]]
    out = Path(args.out)
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.is_file() else []
    done = {(r["id"], r["seed"]) for r in rows}
    todo = [(cfg, p, s) for p, s in jobs if (point_id(p), s) not in done]
    print(f"{len(jobs)} runs planned ({len(pts)} points, {min(args.second_seed, len(pts))} with a second seed), "
          f"{len(jobs) - len(todo)} recorded in {out}, {len(todo)} to train with {args.workers} worker(s)", flush=True)
    if not todo:
        return 0
    from maskclf import dataset

    dataset.prepare(cfg, log=lambda s: print(s, flush=True))  # the crop cache, once, before the workers read it
    where, t0 = machine(), time.time()
    with mp.get_context("spawn").Pool(args.workers) as pool:
        for i, r in enumerate(pool.imap_unordered(_train, todo), 1):
            r.update(machine=where, date=str(datetime.date.today()))
            with out.open("a") as f:
                f.write(json.dumps(r) + "\n")
            left = (time.time() - t0) / i * (len(todo) - i)
            print(f"[{i}/{len(todo)}] {r['id']} seed {r['seed']}: val_f1 "
                  f"{' '.join(f'{v:.3f}' for v in r['val_f1'])} ({r['wall_s']:.0f} s; ~{left / 60:.0f} min left)",
                  flush=True)
    return 0


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/curves.py", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None, help="YAML config (default conf/search.yaml; --quick: conf/smoke.yaml)")
    p.add_argument("--quick", action="store_true", help="the smoke config: 4 points of 2 epochs, one with a second seed")
    p.add_argument("--configs", type=int, default=None, help="points of the space to record (default 200)")
    p.add_argument("--second-seed", type=int, default=None, help="of those, how many to train with a second seed "
                                                                 "(default 40)")
    p.add_argument("--grid", type=int, default=4, help="values of each numeric range (default 4)")
    p.add_argument("--workers", type=int, default=2, help="training processes (default 2: one per core)")
    p.add_argument("--out", default=str(OUT), help="the table, one JSON line per run (default bench/curves.jsonl)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    overrides = (["train.epochs=2"] if args.quick else []) + args.overrides
    cfg = settings.load(args.config or (SMOKE if args.quick else config.DEFAULT_CONFIG), overrides)
    args.configs = args.configs or (4 if args.quick else 200)
    args.second_seed = args.second_seed if args.second_seed is not None else (1 if args.quick else 40)
    if args.configs < 1 or args.second_seed < 0 or args.workers < 1 or args.grid < 2:
        raise InputError("--configs and --workers must be >= 1, --second-seed >= 0 and --grid >= 2")
    return record(cfg, args)


if __name__ == "__main__":
    sys.exit(main())
