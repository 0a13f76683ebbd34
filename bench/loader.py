"""Training-data throughput: our face-crop cache + albumentations against per-sample JPEG decoding.

    python bench/loader.py [--quick] [--workers 0] [--results PATH] [--config conf/search.yaml] [key=value ...]

"ours" iterates the DataLoader that ``maskclf.engine.fit`` uses (cached uint8 crops through the
train augmentation and resize) and normalises each batch as ``fit`` does (``engine.Normalizer``,
here on the CPU). "baseline" is the approach of the competition's public baseline code: open each
384x512 JPEG with PIL every epoch, then crop, resize and normalise with torchvision transforms.
Both give the same tensor size with the same number of workers, which persist across epochs;
the figures are steady-state, after one untimed epoch (``--quick``: 200 images, one timed epoch).
Prints the figures and appends them to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from maskclf import config, dataset, engine, transforms
from maskclf.errors import cli

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_row, machine  # noqa: E402


class _JpegDataset(Dataset):
    def __init__(self, paths: list[str], labels: np.ndarray, size: int):
        self.paths, self.labels = paths, labels
        self.tf = T.Compose([T.CenterCrop((320, 256)), T.Resize((size, size)), T.RandomHorizontalFlip(),
                             T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as im:
            return self.tf(im.convert("RGB")), int(self.labels[i])


def _rate(loader: DataLoader, epochs: int, to_input=None) -> float:
    """Steady-state images/s: one untimed epoch first starts the workers and warms the caches, a
    one-off cost per training run (the workers persist across epochs), then ``epochs`` timed ones."""
    for _ in loader:
        pass
    n, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for x, _ in loader:
            if to_input is not None:
                x = to_input(x)
            n += len(x)
    return n / (time.perf_counter() - t0)


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(config.DEFAULT_CONFIG))
    p.add_argument("--quick", action="store_true", help="200 images, one timed epoch")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for both (default 0)")
    p.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")), help="where the row goes")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = config.load(args.config, args.overrides)
    t0 = time.perf_counter()
    prep = dataset.prepare(cfg, log=lambda s: print(s, file=sys.stderr), progress=False)
    prep_s = time.perf_counter() - t0
    rows = np.arange(min(200, len(prep.train)) if args.quick else len(prep.train))
    epochs = 1 if args.quick else 3
    samples = prep.samples(rows, cfg.data.age_old)
    size, bs = cfg.train.image_size, cfg.train.batch_size
    to_input = engine.Normalizer(engine.build_model(cfg), torch.device("cpu"))
    ours = engine.make_loader(samples, transforms.build(cfg.train.augment, size=size, train=True),
                              bs, args.workers, shuffle=True)
    base = DataLoader(_JpegDataset(prep.train["path"].iloc[rows].tolist(), samples.labels, size), batch_size=bs,
                      shuffle=True, num_workers=args.workers, persistent_workers=args.workers > 0)
    torch.set_num_threads(1)
    r_ours, r_base = _rate(ours, epochs, to_input), _rate(base, epochs)
    print(f"{len(rows)} images x {epochs} epoch(s), {size}px, batch {bs}, {args.workers} workers, "
          f"augment {cfg.train.augment}")
    print(f"  ours (crop cache + albumentations): {r_ours:8.0f} images/s")
    print(f"  baseline (PIL JPEG + torchvision):  {r_base:8.0f} images/s")
    print(f"  ratio: {r_ours / r_base:.1f}x   (data preparation before timing: {prep_s:.1f} s)")
    cmd = "python bench/loader.py " + " ".join(argv if argv is not None else sys.argv[1:])
    append_row("Loader: training images/s, face-crop cache vs per-sample JPEG decoding",
               ["date", "machine", "images × epochs", "size / workers", "ours", "baseline", "ratio", "command"],
               [str(datetime.date.today()), machine(), f"{len(rows)} × {epochs}", f"{size}px / {args.workers}",
                f"{r_ours:.0f}/s", f"{r_base:.0f}/s", f"{r_ours / r_base:.1f}×", f"`{cmd.strip()}`"], args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
