"""Search overhead: one fixed configuration trained by ``engine.fit`` vs as a Ray Tune trial logged to MLflow.

    python bench/overhead.py [--quick] [--epochs N] [--results PATH] [--config conf/search.yaml] [key=value ...]

The configuration is the config's own (its defaults for every searched key), run for N epochs
(default ``train.epochs``). The search runs it as a study of one trial: ``search.num_samples=1``
and a one-point space (``train.optimizer`` fixed to its value; an empty ``search.space`` is
refused by ``search.study.space.validate``), so the trial trains exactly the configuration that ``fit``
trains, on the same fold, device and ``train.threads``.

Two ratios, search / plain:

- per trial (the goal: at most 1.10): the trial's own time, Tune's ``time_total_s`` (from the
  trainable's start in its worker to its last report, so worker-side imports, per-epoch
  ``tune.report`` and checkpoint copies are in it), against ``prep.fold`` + ``engine.fit`` in this
  process. This is what a search pays per configuration; Ray's start-up is paid once per search.
  The epochs alone (sum of ``epoch_time``) are shown too, to tell set-up from per-epoch costs.
- whole command: wall time of ``python -m search.tune`` (imports, data check and crop-cache hit,
  a fresh local Ray, MLflow, plots, best config) against ``python -m maskclf.train`` (imports,
  data check and crop-cache hit, fit).

The crop cache is built before any timing (neither side pays for detection). With no
``search.address`` given, the search starts its own local Ray (``search.address=local``) even if
one runs on this node, so start-up is always in the whole-command figure. Every output goes to a
temporary run dir. Prints the figures and appends them to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from maskclf import config, dataset, engine
from maskclf.errors import cli
from search.study import settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_row, machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STUDY = "overhead"


def fixed_config(cfg: config.Config, epochs: int) -> config.Config:
    """``cfg`` for N epochs as a one-trial study, with absolute data and cache paths."""
    values = {"train.epochs": epochs, "search.num_samples": 1, "search.max_concurrent": 1,
              "search.grace_period": min(cfg.search.grace_period, epochs), "run.study": STUDY,
              "search.space": {"train.optimizer": {"choice": [cfg.train.optimizer]}},
              "data.root": str(Path(cfg.data.root).expanduser().resolve()),
              "faces.cache_dir": str(config.cache_dir(cfg).resolve())}
    if not cfg.search.address and not os.environ.get("RAY_ADDRESS"):
        values["search.address"] = "local"
    if cfg.search.gpus_per_trial == 0:  # what the trainable does: a CPU trial trains on the CPU
        values["train.device"] = "cpu"
    return config.apply(cfg, values)


def time_fit(cfg: config.Config, prep: dataset.Prepared, out: Path) -> tuple[float, float]:
    """(wall seconds of ``prep.fold`` + ``engine.fit``, sum of its epochs' ``epoch_time``)."""
    t0 = time.perf_counter()
    train, val = prep.fold(cfg)
    result = engine.fit(cfg, train, val, out_dir=out, log=lambda s: None)
    return time.perf_counter() - t0, sum(m["epoch_time"] for m in result["history"])


def time_command(args: list[str]) -> float:
    """Wall seconds of ``python args...`` run from the repository root; raises if it fails."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"python {' '.join(args)} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    return time.perf_counter() - t0


def trial_times(cfg: config.Config) -> tuple[float, float]:
    """(Tune's ``time_total_s``, sum of ``epoch_time``) of the study's one trial, from its result.json."""
    from search import cluster

    files = sorted((Path(cluster.storage_path(cfg)) / cfg.run.study).glob("*/result.json"))
    if len(files) != 1:
        raise RuntimeError(f"expected one trial's result.json under {cluster.storage_path(cfg)}, found {len(files)}")
    results = [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()]
    return results[-1]["time_total_s"], sum(r["epoch_time"] for r in results)


def _ratio(plain: float, search: float) -> str:
    return f"{search / plain:.3f}"


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(config.DEFAULT_CONFIG))
    p.add_argument("--quick", action="store_true", help="2 epochs")
    p.add_argument("--epochs", type=int, default=0, help="epochs of both runs (default: train.epochs)")
    p.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")), help="where the row goes")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    base = settings.load(args.config, args.overrides)
    cfg = fixed_config(base, 2 if args.quick else args.epochs or base.train.epochs)
    prep = dataset.prepare(cfg, log=lambda s: print(s, file=sys.stderr), progress=False)  # crop cache, untimed
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        tmp = Path(tmp)
        cfg_file = config.save(config.apply(cfg, {"run.dir": str(tmp / "runs")}), tmp / "overhead.yaml")
        fit_s, fit_epochs = time_fit(cfg, prep, tmp / "fit")
        train_cmd = time_command(["-m", "maskclf.train", "--config", str(cfg_file), "--quiet",
                                  f"run.dir={tmp / 'train'}"])
        tune_cmd = time_command(["-m", "search.tune", "--config", str(cfg_file), f"run.dir={tmp / 'tune'}"])
        trial_s, trial_epochs = trial_times(config.apply(cfg, {"run.dir": str(tmp / "tune")}))
    n = cfg.train.epochs
    print(f"{cfg.model.backbone} at {cfg.train.image_size}px, {n} epochs, fold {cfg.folds.fold}, "
          f"device {cfg.train.device}, {cfg.train.threads or 'default'} thread(s)")
    print(f"  per trial:     fit {fit_s:7.1f} s   trial {trial_s:7.1f} s   ratio {trial_s / fit_s:.3f}  (goal <= 1.10)")
    print(f"  epochs alone:  fit {fit_epochs:7.1f} s   trial {trial_epochs:7.1f} s   ratio {trial_epochs / fit_epochs:.3f}")
    print(f"  whole command: train {train_cmd:5.1f} s   tune {tune_cmd:7.1f} s   ratio {tune_cmd / train_cmd:.3f}")
    cmd = "python bench/overhead.py " + " ".join(argv if argv is not None else sys.argv[1:])
    append_row("Overhead: the same configuration by engine.fit vs as a Ray Tune trial with MLflow",
               ["date", "machine", "config", "fit", "trial", "per-trial ratio", "epochs-only ratio",
                "maskclf.train", "search.tune", "whole-command ratio", "command"],
               [str(datetime.date.today()), machine(), f"{cfg.model.backbone} {cfg.train.image_size}px {n} ep",
                f"{fit_s:.1f} s", f"{trial_s:.1f} s", _ratio(fit_s, trial_s), _ratio(fit_epochs, trial_epochs),
                f"{train_cmd:.1f} s", f"{tune_cmd:.1f} s", _ratio(train_cmd, tune_cmd), f"`{cmd.strip()}`"],
               args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
