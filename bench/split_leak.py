"""How much an image-level split inflates validation F1 against the person-level split.

    python bench/split_leak.py [--config runs/demo/best_config.yaml] [key=value ...]

Trains the same configuration twice on the same data: validating on fold ``folds.fold`` of the
person-level folds, and on a random image-level split of the same size (one person's photos
on both sides). Prints both macro F1s and appends them to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

import numpy as np

from maskclf import config, dataset, engine
from maskclf.errors import cli
from search.study import settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_row, machine  # noqa: E402


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(config.DEFAULT_CONFIG))
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = settings.load(args.config, args.overrides)
    prep = dataset.prepare(cfg, log=lambda s: print(s, file=sys.stderr))
    person_train, person_val = prep.fold(cfg)
    n = len(prep.train)
    val_rows = np.random.default_rng(cfg.folds.seed).permutation(n)[: len(person_val)]
    train_rows = np.setdiff1d(np.arange(n), val_rows)
    image_train, image_val = prep.samples(train_rows, cfg.data.age_old), prep.samples(val_rows)
    scores = {}
    for name, (tr, va) in {"person-level": (person_train, person_val), "image-level": (image_train, image_val)}.items():
        with tempfile.TemporaryDirectory() as tmp:
            res = engine.fit(cfg, tr, va, out_dir=tmp, log=lambda s: None)
        scores[name] = res
        print(f"{name:>13}: val macro F1 {res['val_f1']:.3f}  gender acc {res['gender_acc']:.3f}  "
              f"age acc {res['age_acc']:.3f}  F1 <30 {res['f1_lt30']:.3f}  30-59 {res['f1_30_59']:.3f}  "
              f">=60 {res['f1_ge60']:.3f}", flush=True)
    append_row("Split leak: person-level vs image-level validation",
               ["date", "machine", "config", "person-level F1", "image-level F1", "command"],
               [str(datetime.date.today()), machine(),
                f"{cfg.model.backbone} {cfg.model.head} {cfg.train.epochs} ep",
                f"{scores['person-level']['val_f1']:.3f}", f"{scores['image-level']['val_f1']:.3f}",
                "`" + " ".join(["python bench/split_leak.py --config", args.config, *args.overrides]) + "`"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
