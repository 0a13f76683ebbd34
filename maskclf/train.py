"""``python -m maskclf.train``: train one fold of one configuration, with progress and per-epoch lines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from maskclf import config as config_mod
from maskclf.errors import InputError, cli


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m maskclf.train",
        description="Train one fold of one configuration (validation fold = folds.fold).",
    )
    p.add_argument("--config", default=str(config_mod.DEFAULT_CONFIG), help="YAML config (default: %(default)s)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR (a folder this command wrote)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. train.lr=3e-4")
    return p


def new_dir(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``, ...: an earlier run's results are never overwritten."""
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _line(m: dict) -> str:
    acc = "  ".join(f"{t} {m[f'{t}_acc']:.3f}" for t in ("mask", "gender", "age") if f"{t}_acc" in m)
    ge60 = f"  >=60 F1 {m['f1_ge60']:.3f}" if "f1_ge60" in m else ""
    return (f"epoch {m['epoch']:>3}  train_loss {m['train_loss']:.4f}  val_loss {m['val_loss']:.4f}  "
            f"val_f1 {m['val_f1']:.4f}  {acc}{ge60}  lr {m['lr']:.2e}  {m['images_per_s']:.0f} img/s")


@cli
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.resume:
        out = Path(args.resume)
        if not (out / "checkpoint" / "config.yaml").is_file():
            raise InputError(f"--resume {out}: no checkpoint/config.yaml there")
        cfg = config_mod.load(out / "checkpoint" / "config.yaml", args.overrides)
    else:
        cfg = config_mod.load(args.config, args.overrides)
    from maskclf import dataset, engine  # the pipeline, once the command line and the config are known good

    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    prep = dataset.prepare(cfg, log=log, progress=not args.quiet)
    train, val = prep.fold(cfg)
    if not args.resume:
        out = new_dir(config_mod.run_dir(cfg) / cfg.run.study / "train" / f"fold{cfg.folds.fold}")
    out.mkdir(parents=True, exist_ok=True)
    config_mod.save(cfg, out / "config.yaml")
    what = "" if cfg.model.task == "all" else f" ({cfg.model.task} model)"
    print(f"training {cfg.model.backbone}{what} on fold {cfg.folds.fold}: {len(train)} train / {len(val)} val images"
          f" -> {out}", flush=True)
    result = engine.fit(cfg, train, val, lambda m, _: print(_line(m), flush=True), out_dir=out,
                        resume=out / "checkpoint" if args.resume else None, progress=not args.quiet, log=log)
    if not result.get("history"):
        print("nothing to train: the run already finished its epochs")
        return 0
    best = max(result["history"], key=lambda m: m["val_f1"])
    print(f"final val macro F1 {result['val_f1']:.4f} (best {best['val_f1']:.4f} at epoch {best['epoch']}); "
          f"checkpoint and config in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
