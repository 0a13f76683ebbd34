"""Face cropping: MTCNN images/s batched vs one image at a time, and the time of a crop-cache hit.

    python bench/faces.py [--quick] [--images N] [--threads 1] [--results PATH] [--config conf/search.yaml] [key=value ...]

The dataset's own image files (384x512 JPEGs, some PNGs, as the real data mixes them) are decoded
once, then ``maskclf.faces.crop_arrays`` crops them with the config's crop settings
(``faces.method``/``size``/``margin``/``device``), first in batches of ``faces.batch_size``, then
with ``batch_size=1``: detection and cropping only, decoding is not timed. The crop cache is timed
through ``maskclf.crop_cache.build_crop_cache`` in a fresh temporary folder: a first call (a miss:
decode, detect, crop, write) and a second call with the same files and settings (a hit: stat the
files, hash, memory-map the crops); then a hit on the whole train set, whose entry data
preparation has just made in the config's cache folder. Prints the figures and appends them to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import torch

from maskclf import config, crop_cache, dataset, engine, faces, inputs, predict
from maskclf.errors import cli
from maskclf.schema import FacesConfig
from search.study import settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_row, machine  # noqa: E402


def _crop_rate(images: list, f: FacesConfig, device: str, batch_size: int) -> float:
    """Images/s of ``faces.crop_arrays`` over decoded ``images`` with ``batch_size`` per MTCNN call."""
    t0 = time.perf_counter()
    faces.crop_arrays(images, method=f.method, size=f.size, margin=f.margin, batch_size=batch_size, device=device)
    return len(images) / (time.perf_counter() - t0)


def _cache_times(paths: list[str], f: FacesConfig, device: str) -> tuple[float, float]:
    """Seconds of a first (miss) and a second (hit) ``build_crop_cache`` call in an empty cache folder."""
    kw = dict(method=f.method, size=f.size, margin=f.margin, batch_size=f.batch_size, device=device,
              progress=False, log=lambda s: None)
    with tempfile.TemporaryDirectory(prefix="bench-faces-") as tmp:
        t0 = time.perf_counter()
        crop_cache.build_crop_cache(paths, Path(tmp), **kw)
        t1 = time.perf_counter()
        crop_cache.build_crop_cache(paths, Path(tmp), **kw)
        return t1 - t0, time.perf_counter() - t1


def _hit_time(paths: list[str], cfg: config.Config, device: str) -> float:
    """Seconds of ``build_crop_cache`` on ``paths`` in the config's cache folder, where their entry exists."""
    f = cfg.faces
    t0 = time.perf_counter()
    crop_cache.build_crop_cache(paths, config.cache_dir(cfg), method=f.method, size=f.size, margin=f.margin,
                           batch_size=f.batch_size, device=device, progress=False, log=lambda s: None)
    return time.perf_counter() - t0


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(config.DEFAULT_CONFIG))
    p.add_argument("--quick", action="store_true", help="32 images (with --methods: 32 timed, the rest as asked)")
    p.add_argument("--images", type=int, default=256, help="train images to crop (default 256)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1; 0 = torch's default, as data preparation runs)")
    p.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")), help="where the row goes")
    p.add_argument("--methods", default="", help="compare these faces.method values (comma-separated) instead")
    p.add_argument("--seeds", type=int, default=2, help="--methods: trainings per method (0: no training)")
    p.add_argument("--workers", type=int, default=2, help="--methods: trainings at once, one CPU thread each")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = settings.load(args.config, args.overrides)
    if args.methods:
        from _face_methods import compare

        return compare(cfg, args, argv if argv is not None else sys.argv[1:])
    prep = dataset.prepare(cfg, log=lambda s: print(s, file=sys.stderr), progress=False)
    n = min(32 if args.quick else args.images, len(prep.train))
    paths = prep.train["path"].iloc[:n].tolist()
    f, device = cfg.faces, str(inputs.resolve_device(cfg.faces.device))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    images = [predict.read_rgb(x) for x in paths]
    _crop_rate(images[:1], f, device, 1)  # builds the detector, so neither timing pays for it
    batched, single = _crop_rate(images, f, device, f.batch_size), _crop_rate(images, f, device, 1)
    miss, hit = _cache_times(paths, f, device)
    hit_all = _hit_time(prep.train["path"].tolist(), cfg, device)
    print(f"{n} train images, method {f.method}, {f.size}px crops, device {device}, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"  batched ({f.batch_size} per detector call): {batched:7.1f} images/s")
    print(f"  one image at a time:        {single:7.1f} images/s")
    print(f"  ratio: {batched / single:.2f}x")
    print(f"  crop cache, first call (miss): {miss:8.2f} s")
    print(f"  crop cache, same call again (hit): {hit:8.3f} s")
    print(f"  crop cache hit, all {len(prep.train)} train images: {hit_all:8.3f} s")
    cmd = "python bench/faces.py " + " ".join(argv if argv is not None else sys.argv[1:])
    append_row("Faces: MTCNN crop images/s, batched vs one at a time; crop-cache hit",
               ["date", "machine", "images", "method / device / threads", "batched", "one at a time", "ratio",
                "cache miss", "cache hit", "hit, whole train set", "command"],
               [str(datetime.date.today()), machine(), str(n), f"{f.method} / {device} / {torch.get_num_threads()}",
                f"{batched:.1f}/s (batch {f.batch_size})", f"{single:.1f}/s", f"{batched / single:.2f}×",
                f"{miss:.2f} s", f"{hit:.3f} s", f"{hit_all:.3f} s ({len(prep.train)})", f"`{cmd.strip()}`"], args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
