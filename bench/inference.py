"""Inference images/s: the five-fold ensemble vs one fold model, batch 1 vs 64, from JPEGs vs from crops.

    python bench/inference.py [--quick] [--images N] [--results PATH] [--config conf/search.yaml] [key=value ...]

Both paths are the product's own. "from JPEGs" calls the registered model's ``predict``
(``search.tracking.registry.EnsembleModel``, loaded from fold checkpoints as MLflow loads it): decode each
file, MTCNN face crop with the folds' crop settings, then soft voting. "from crops" starts from the
cached uint8 face crops, as finalize scores the eval set (``maskclf.predict.predict_crops``). Both
use flip TTA when ``finalize.tta`` is on (the default, as in finalize and the registered model), so
each model scores every image twice. "batch 1" is one call per image, "batch 64" one call per 64.

Speed does not depend on the weights, so the fold models are trained by ``engine.fit`` for one
epoch on at most 256 of their fold's training images: real checkpoints written the way finalize
writes them (``<fold>/checkpoint``), in minutes instead of a full finalize. Torch uses
``train.threads`` CPU threads (1 in the demo and smoke configs). Prints the figures and appends
one row per model set to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from maskclf import config, dataset, engine, inputs, predict
from maskclf.errors import cli
from search.study import settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_row, machine  # noqa: E402

BATCHES = (1, 64)
_FIT_IMAGES = 256  # per fold model: enough for a real epoch, and the weights do not change the speed


def train_folds(cfg: config.Config, prep: dataset.Prepared, out: Path) -> list[Path]:
    """One checkpoint per fold (``out/fold<k>/checkpoint``), each trained one epoch by ``engine.fit``."""
    one = config.apply(cfg, {"train.epochs": 1})
    ckpts = []
    for k in range(cfg.folds.n):
        train, val = prep.fold(one, k)
        train = engine.Samples(train.images[:_FIT_IMAGES], train.labels[:_FIT_IMAGES])
        val = engine.Samples(val.images[:_FIT_IMAGES], val.labels[:_FIT_IMAGES])
        engine.fit(one, train, val, out_dir=out / f"fold{k}", log=lambda s: None)
        ckpts.append(out / f"fold{k}" / "checkpoint")
    return ckpts


def ensemble(ckpts: Sequence[Path], cfg: config.Config):
    """The registered model's class, loaded from ``ckpts`` the way ``mlflow.pyfunc.load_model`` loads it."""
    from mlflow.pyfunc import PythonModelContext

    from search.tracking.registry import EnsembleModel

    model = EnsembleModel()
    artifacts = {f"fold{k}": str(c) for k, c in enumerate(ckpts)}
    # it reads JPEG files, as an offline Python caller does
    model.load_context(PythonModelContext(artifacts, {"device": cfg.train.device, "tta": cfg.finalize.tta,
                                                      "paths": True}))
    return model


def _rate(fn: Callable[[Sequence], object], items: Sequence, batch: int) -> float:
    """Images/s of ``fn`` called on consecutive chunks of ``batch`` items."""
    t0 = time.perf_counter()
    for s in range(0, len(items), batch):
        fn(items[s : s + batch])
    return len(items) / (time.perf_counter() - t0)


def measure(model, paths: list[str], crops: np.ndarray) -> dict[tuple[str, int], float]:
    """Images/s from JPEG paths and from crops at each batch size, after one untimed call of each."""
    from_jpegs = lambda chunk: model.predict(None, list(chunk))  # noqa: E731
    from_crops = lambda chunk: predict.predict_crops(model.members, chunk, tta=model.tta,  # noqa: E731
                                                     batch_size=len(chunk), device=model.device)
    from_jpegs(paths[:1])
    from_crops(crops[:1])
    return {(what, b): _rate(fn, items, b) for what, fn, items in (("jpegs", from_jpegs, paths),
                                                                  ("crops", from_crops, crops))
            for b in BATCHES}


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(config.DEFAULT_CONFIG))
    p.add_argument("--quick", action="store_true", help="64 eval images")
    p.add_argument("--images", type=int, default=256, help="eval images to predict (default 256)")
    p.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")), help="where the rows go")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = settings.load(args.config, args.overrides)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    prep = dataset.prepare(cfg, need_eval=True, log=lambda s: print(s, file=sys.stderr), progress=False)
    n = min(64 if args.quick else args.images, len(prep.eval))
    paths, crops = prep.eval["path"].iloc[:n].tolist(), np.asarray(prep.eval_crops.images[:n])
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        ckpts = train_folds(cfg, prep, Path(tmp))
        sets = {f"ensemble of {len(ckpts)}": ckpts, "single model": ckpts[:1]}
        rates = {name: measure(ensemble(c, cfg), paths, crops) for name, c in sets.items()}
    device = str(inputs.resolve_device(cfg.train.device))
    print(f"{n} eval images, {cfg.model.backbone} at {cfg.train.image_size}px, flip TTA "
          f"{'on' if cfg.finalize.tta else 'off'}, {device}, {torch.get_num_threads()} thread(s); images/s:")
    if n < max(BATCHES):
        print(f"  (only {n} images: batch {max(BATCHES)} is one call of {n})")
    print(f"  {'':18}{'JPEG+crop b1':>14}{'JPEG+crop b64':>15}{'crops b1':>10}{'crops b64':>11}")
    cmd = "python bench/inference.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for name, r in rates.items():
        cells = [r[("jpegs", 1)], r[("jpegs", 64)], r[("crops", 1)], r[("crops", 64)]]
        print(f"  {name:18}{cells[0]:14.1f}{cells[1]:15.1f}{cells[2]:10.1f}{cells[3]:11.1f}")
        append_row("Inference: images/s, fold ensemble vs single model, from JPEGs (MTCNN crop) vs from crops",
                   ["date", "machine", "models", "images", "model / TTA", "JPEG+crop b1", "JPEG+crop b64",
                    "crops b1", "crops b64", "command"],
                   [str(datetime.date.today()), machine(), name, str(n),
                    f"{cfg.model.backbone} {cfg.train.image_size}px / {'flip' if cfg.finalize.tta else 'off'}",
                    *(f"{c:.1f}/s" for c in cells), f"`{cmd.strip()}`"], args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
