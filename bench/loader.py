"""Training-data throughput: our face-crop cache + albumentations against per-sample JPEG decoding; and
with ``--feed``, what a GPU trial's loader can feed per core.

    python bench/loader.py [--quick] [--workers 0] [--results PATH] [--config conf/search.yaml] [key=value ...]
    python bench/loader.py --feed [--quick] [--presets none,light,strong] [--worker-counts 0,1,2] [--repeats 3]
                           [--results PATH] [--config conf/competition.yaml] [key=value ...]

"ours" iterates the DataLoader that ``maskclf.engine.fit`` uses (cached uint8 crops through the
train augmentation and resize) and normalises each batch as ``fit`` does (``inputs.Normalizer``,
here on the CPU). "baseline" is the approach of the competition's public baseline code: open each
384x512 JPEG with PIL every epoch, then crop, resize and normalise with torchvision transforms.
Both give the same tensor size with the same number of workers, which persist across epochs;
the figures are steady-state, after one untimed epoch (``--quick``: 200 images, one timed epoch).
Prints the figures and appends them to bench/RESULTS.md.

``--feed`` (the config's sizes: ``conf/competition.yaml`` crops of 256 px into a 224-px network) times, for
each preset and number of loader workers, the DataLoader that ``fit`` uses, without the normalisation (which
a GPU trial runs on the device), in images/s and images/s per loader core (the main process when there are
no workers): the ``loader`` path (albumentations and the resize in the workers) and the ``device`` path
(``train.augment_on=device``: the workers only gather uint8 crops, the batch is augmented on the GPU). The
CPU normalisation and the device path's augmentation run on this CPU are timed apart, and each preset's
operations are profiled one by one (ms per image when applied, and their share of the preset's time at
their probabilities). Best of ``--repeats`` runs of 2,048 crops (``--quick``: one run of 128).
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

from maskclf import config, dataset, engine, inputs, model, transforms
from maskclf.errors import InputError, cli
from search.study import settings

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


FEED = "Feed: images/s per loader core at the config's sizes, per preset and path"
PROFILE = "Feed: each augmentation operation's cost on the loader path"


def _loader_rate(loader: DataLoader, images: int, repeats: int) -> float:
    """Best images/s of ``repeats`` passes (after one untimed pass that starts the workers)."""
    for _ in loader:
        pass
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in loader:
            pass
        best = max(best, images / (time.perf_counter() - t0))
    return best


def _batch_rate(fn, batches: list[torch.Tensor], repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x in batches:
            fn(x)
        best = max(best, sum(len(x) for x in batches) / (time.perf_counter() - t0))
    return best


def _op_ms(tf, crops: np.ndarray, repeats: int) -> float:
    """ms per image of the albumentations transform ``tf`` (one image at a time, as a loader worker runs it)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for im in crops:
            tf(image=im)
        best = min(best, (time.perf_counter() - t0) * 1000 / len(crops))
    return best


def feed(args, cfg: config.Config, argv: list[str] | None) -> int:
    import albumentations as A

    from maskclf import batch_augment

    prep = dataset.prepare(cfg, log=lambda s: print(s, file=sys.stderr), progress=False)
    n = min(128 if args.quick else 2048, len(prep.train))
    repeats = 1 if args.quick else args.repeats
    rows = np.sort(np.random.default_rng(0).choice(len(prep.train), n, replace=False))
    samples = prep.samples(rows, cfg.data.age_old)
    crops = np.asarray(samples.images)  # the rows' crops, read once: disk speed is not what this measures
    samples = engine.Samples(crops, samples.labels)
    side, size, bs = crops.shape[1], cfg.train.image_size, cfg.train.batch_size
    presets = args.presets.split(",")
    workers = [int(w) for w in args.worker_counts.split(",")]
    torch.set_num_threads(1)  # a loader core is one core: the main process's torch must not spread over the others
    when, where, cmd = str(datetime.date.today()), machine(), "python bench/loader.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    print(f"{n} crops of {side} px -> {size} px, batch {bs}, best of {repeats}; images/s (per loader core)")
    net = model.create(cfg.model.backbone, pretrained=False)  # for its normalisation only
    batches = [torch.from_numpy(crops[i:i + bs]).permute(0, 3, 1, 2).contiguous() for i in range(0, n, bs)]
    resized = [torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear").to(torch.uint8)
               for x in batches]
    norm = _batch_rate(inputs.Normalizer(net, torch.device("cpu")), resized, repeats)
    print(f"  CPU normalisation of {size}-px batches (on the device in a GPU trial): {norm:,.0f} images/s")
    for preset in presets:
        for path in ("loader", "device"):
            tf = transforms.build(preset, size=size, train=True, seed=0) if path == "loader" else transforms.as_is()
            for w in workers:
                dl = inputs.make_loader(samples, tf, bs, w, shuffle=True)
                rate = _loader_rate(dl, n, repeats)
                del dl
                per_core = rate / max(w, 1)
                print(f"  {preset:6s} {path:6s} {w} workers: {rate:8,.0f} images/s ({per_core:,.0f} per core)")
                on_cpu = "-"
                if path == "device" and w == workers[0]:
                    aug = batch_augment.BatchAugment(preset, size, "cpu", seed=0)
                    on_cpu = f"{_batch_rate(aug, batches[:4], repeats):,.0f}/s"  # slow on a CPU: 4 batches
                    print(f"  {preset:6s} device augmentation itself on this CPU (a GPU runs it): "
                          f"{on_cpu[:-2]} images/s")
                append_row(FEED, ["date", "machine", "preset", "path", "loader workers", "crops -> input",
                                  "images/s", "per loader core", "CPU normalisation", "device augmentation on this CPU",
                                  "command"],
                           [when, where, preset, path, str(w), f"{side} -> {size} px", f"{rate:,.0f}",
                            f"**{per_core:,.0f}**", f"{norm:,.0f}/s", on_cpu, f"`{cmd.strip()}`"], args.results)
        ops = transforms.preset(preset)
        if not ops:
            continue
        probe = crops[: min(len(crops), 64 if args.quick else 256)]
        resize = _op_ms(A.Compose([A.Resize(size, size)]), probe, repeats)
        costs = {op: _op_ms(A.Compose([transforms.albumentation(op, {**kw, "p": 1.0})]), probe, repeats)
                 for op, kw in ops}
        expected = {op: costs[op] * kw["p"] for op, kw in ops}
        total = sum(expected.values()) + resize
        print(f"  {preset} per operation at {side} px, ms per image when applied (share of the preset's time):")
        for op, kw in [*ops, ("resize", {"p": 1.0})]:
            ms = resize if op == "resize" else costs[op]
            share = (resize if op == "resize" else expected[op]) / total
            print(f"    {op:20s} p={kw['p']:.1f} {ms:6.3f} ms ({share:.0%})")
            append_row(PROFILE, ["date", "machine", "preset", "operation", "p", "ms per image when applied",
                                 "share of the preset's time", "command"],
                       [when, where, preset, op + (f" to {size} px" if op == "resize" else f" at {side} px"),
                        f"{kw['p']:.1f}", f"{ms:.3f}", f"{share:.0%}", f"`{cmd.strip()}`"], args.results)
    return 0


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="YAML config (default conf/search.yaml; --feed: "
                                                    "conf/competition.yaml)")
    p.add_argument("--quick", action="store_true", help="200 images, one timed epoch (--feed: 128 crops, one run)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for both (default 0)")
    p.add_argument("--feed", action="store_true", help="the training feed per preset, path and worker count")
    p.add_argument("--presets", default="none,light,strong", help="--feed: comma list (default none,light,strong)")
    p.add_argument("--worker-counts", default="0,1,2", help="--feed: comma list of loader workers (default 0,1,2)")
    p.add_argument("--repeats", type=int, default=3, help="--feed: best of this many timed passes (default 3)")
    p.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")), help="where the row goes")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    default = Path(__file__).resolve().parent.parent / "conf" / "competition.yaml"
    cfg = settings.load(args.config or str(default if args.feed else config.DEFAULT_CONFIG), args.overrides)
    if args.feed:
        problems = [f"--presets: unknown '{x}'; choose from {', '.join(transforms.PRESETS)}"
                    for x in args.presets.split(",") if x not in transforms.PRESETS]
        if not all(w.strip().isdigit() for w in args.worker_counts.split(",")):
            problems.append(f"--worker-counts: a comma list of whole numbers, got '{args.worker_counts}'")
        if args.repeats < 1:
            problems.append(f"--repeats must be >= 1, got {args.repeats}")
        if problems:
            raise InputError(problems)
        return feed(args, cfg, argv)
    t0 = time.perf_counter()
    prep = dataset.prepare(cfg, log=lambda s: print(s, file=sys.stderr), progress=False)
    prep_s = time.perf_counter() - t0
    rows = np.arange(min(200, len(prep.train)) if args.quick else len(prep.train))
    epochs = 1 if args.quick else 3
    samples = prep.samples(rows, cfg.data.age_old)
    size, bs = cfg.train.image_size, cfg.train.batch_size
    to_input = inputs.Normalizer(engine.build_model(cfg), torch.device("cpu"))
    ours = inputs.make_loader(samples, transforms.build(cfg.train.augment, size=size, train=True),
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
