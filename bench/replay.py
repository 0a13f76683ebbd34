"""Replay recorded learning curves (bench/curves.jsonl) through the product's own search stack.

A study here is ``search.tune``'s own Tune experiment: the Tuner of ``search.cluster.experiment.fit`` with the
search arguments of ``search.tune`` (OptunaSearch on the study's Optuna database with TPE or random
sampling, ASHA, the concurrency limit, the epoch-budget stopper). Only the trainable differs: instead
of training, :func:`replay_trial` looks up the recorded configuration nearest to the trial's parameters
and reports its recorded val macro F1 epoch by epoch, sleeping the recorded epoch time scaled down (so
that two trials in flight interleave their epochs as they would in a real search).

The nearest recorded configuration: the space's choices must match as many as possible, a numeric
parameter counts its distance in its range's (log) scale, the whole range weighing as one choice; ties go
to the earlier point of the table. A point recorded with more than one seed is replayed with the seed
picked by the study's ``search.seed`` and the point, so different benchmark seeds see the seed noise.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from maskclf import config
from maskclf.config import Config

TABLE = Path(__file__).with_name("curves.jsonl")
# a study's Optuna database and Tune folder live in memory where the system has a RAM disk: a replayed study
# is hundreds of trials whose files are thrown away at its end
_SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None


class Table:
    """The recorded curves of one search space: per point, its parameters and one run per recorded seed."""

    def __init__(self, rows: list[dict], space: dict[str, dict], epochs: int, time_scale: float = 0.0):
        self.space, self.epochs, self.time_scale = space, epochs, time_scale
        runs: dict[str, list[dict]] = {}
        params: dict[str, dict] = {}
        for r in rows:
            if len(r["val_f1"]) >= epochs:
                runs.setdefault(r["id"], []).append(r)
                params.setdefault(r["id"], r["params"])
        if not runs:
            raise ValueError(f"no recorded run has {epochs} epochs")
        self.ids = list(runs)
        self.runs = {i: sorted(runs[i], key=lambda r: r["seed"]) for i in self.ids}
        self.params = [params[i] for i in self.ids]
        self._codes = np.array([self.encode(p) for p in self.params])
        self._numeric = np.array([next(k for k in spec if k != "when") != "choice" for spec in space.values()])

    @classmethod
    def load(cls, cfg: Config, path: Path = TABLE, time_scale: float = 0.0) -> "Table":
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        return cls(rows, cfg.search.space, cfg.train.epochs, time_scale)

    def encode(self, params: dict) -> list[float]:
        """One number per space entry: a choice's index, a range's position in [0, 1] (log for log kinds);
        NaN where the entry is absent (a condition that does not hold)."""
        out = []
        for key, spec in self.space.items():
            kind = next(k for k in spec if k != "when")
            v = params.get(key)
            if v is None:
                out.append(math.nan)
            elif kind == "choice":
                out.append(float(spec["choice"].index(v)) if v in spec["choice"] else -1.0)
            else:
                lo, hi = spec[kind]
                if kind.startswith("log"):
                    v, lo, hi = math.log(v), math.log(lo), math.log(hi)
                out.append((float(v) - lo) / (hi - lo))
        return out

    def nearest(self, params: dict) -> int:
        """Index of the recorded point nearest to ``params`` (the first one on ties)."""
        code = np.array(self.encode(params))
        a, b = self._codes, code[None, :]
        both_nan = np.isnan(a) & np.isnan(b)
        one_nan = np.isnan(a) ^ np.isnan(b)
        diff = np.where(self._numeric, np.abs(a - b), (a != b).astype(float))
        diff = np.where(both_nan, 0.0, np.where(one_nan, 1.0, diff))
        return int(np.argmin(diff.sum(axis=1)))

    def run_for(self, params: dict, salt: int) -> dict:
        """The recorded run a trial with ``params`` replays in the study seeded ``salt``."""
        runs = self.runs[self.ids[self.nearest(params)]]
        if len(runs) == 1:
            return runs[0]
        key = json.dumps({"p": params, "s": salt}, sort_keys=True, default=str).encode()
        return runs[int(hashlib.sha1(key).hexdigest(), 16) % len(runs)]

    def final(self) -> np.ndarray:
        """Each point's final val F1 (mean over its seeds)."""
        return np.array([np.mean([r["val_f1"][self.epochs - 1] for r in self.runs[i]]) for i in self.ids])


def replay_trial(params: dict, *, cfg: Config, prep: Table) -> None:
    """The replay trainable: the nearest recorded run's epochs through ``ray.tune.report``."""
    from ray import tune

    run = prep.run_for({k: (v.item() if isinstance(v, np.generic) else v) for k, v in params.items()},
                       cfg.search.seed)
    for e in range(cfg.train.epochs):
        if prep.time_scale:
            time.sleep(run["epoch_time"][e] * prep.time_scale)
        tune.report({"epoch": e + 1, "val_f1": run["val_f1"][e], "val_loss": run["val_loss"][e], "point": run["id"],
                     "seed": run["seed"]})


def _collector():
    from ray.tune import Callback

    class Collect(Callback):
        """Every reported epoch, in the order the driver received them."""

        def __init__(self) -> None:
            self.rows: list[tuple[str, int, float, str, int]] = []

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.rows.append((trial.trial_id, int(result["epoch"]), float(result["val_f1"]), str(result["point"]),
                              int(result["seed"])))

    return Collect()


def run_study(cfg: Config, table: Table, log: Callable[[str], None] = lambda s: None,
              keep: Path | None = None) -> list[tuple]:
    """One study of ``cfg`` (sampler, scheduler, seed, budget, trials) against ``table`` on the connected Ray,
    in a throwaway run dir (``keep``: in that run dir, kept with the study's Optuna database); the epochs
    reported, in order: (trial, epoch, val_f1, point id, seed)."""
    import sys

    import ray.cloudpickle

    from search.cluster import experiment
    from search.study import optuna_study
    from search import tune as tune_mod

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers need not import bench/
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="maskclf-replay-", dir=_SCRATCH))
    try:
        cfg = config.apply(cfg, {"run.dir": str(work), "search.storage_path": ""}, where="replay")
        optuna_study.open_study(optuna_study.storage_url(cfg), cfg.run.study)
        collect = _collector()
        experiment.fit(cfg, cfg.run.study, experiment.trainable(cfg, table, replay_trial), callbacks=[collect],
                       log=log, **tune_mod._search_args(cfg, "p1"))
        return collect.rows
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
