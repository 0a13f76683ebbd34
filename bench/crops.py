"""Face crop cache build: one process against shards as Ray tasks, images/s and the same crops.

    python bench/crops.py [--quick] [--images 512] [--repeats 2] [--results PATH] [--config conf/search.yaml] [key=value ...]

Builds the crop cache entry of the first ``--images`` train photos of the config's dataset (the demo's
384x512 JPEGs by default) in fresh temporary folders, with the config's crop settings:

- ``one process``: ``maskclf.crop_cache.build_crop_cache`` as ``maskclf.train`` and the bench scripts run it, every
  shard in this process with torch's default threads (what a command's driver did before shards ran on Ray);
- ``Ray tasks``: the same call with ``search.cluster.crops.runner``: each shard of ``--shard-size`` photos a Ray task
  with one CPU, on a private local Ray started beforehand (its start-up is not timed: a command has its Ray
  up before it crops).

Each arm runs ``--repeats`` times; the best time counts. The crops, boxes and found flags of the two arms are
compared (they must be equal). Prints the table and appends a row to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._results import RESULTS, append_row, machine  # noqa: E402
from maskclf import config, crop_cache, data, dataset, engine, faces, inputs  # noqa: E402
from maskclf.errors import cli  # noqa: E402
from search.study import settings

SECTION = "Face crops: one process against shards on Ray"
HEADER = ["photos", "shard", "one process", "Ray tasks", "speed-up", "same crops", "faces found"]


def _build(paths: list[str], cfg: config.Config, shard_size: int, run_shards=None) -> tuple[float, faces.FaceCrops]:
    f = cfg.faces
    with tempfile.TemporaryDirectory(prefix="bench-crops-") as tmp:
        t0 = time.perf_counter()
        crops = crop_cache.build_crop_cache(paths, Path(tmp), method=f.method, size=f.size, margin=f.margin,
                                       batch_size=f.batch_size, device=str(inputs.resolve_device(f.device)),
                                       progress=False, log=lambda s: None, shard_size=shard_size,
                                       run_shards=run_shards)
        seconds = time.perf_counter() - t0
        return seconds, faces.FaceCrops(np.array(crops.images), crops.boxes, crops.found, crops.paths)


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/crops.py", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(config.DEFAULT_CONFIG))
    p.add_argument("--quick", action="store_true", help="32 photos, shards of 8, one repeat")
    p.add_argument("--images", type=int, default=512, help="train photos to crop (default 512)")
    p.add_argument("--shard-size", type=int, default=None, help="photos per shard (default 64; --quick: 8)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each arm; the best counts (default 2)")
    p.add_argument("--results", default=str(RESULTS), help="where the row goes (default bench/RESULTS.md)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    cfg = settings.load(args.config, args.overrides)
    n = 32 if args.quick else args.images
    shard = args.shard_size or (8 if args.quick else 64)
    repeats = 1 if args.quick else args.repeats
    root = dataset.ensure_demo(cfg, lambda s: print(s, file=sys.stderr))  # the dataset's table, no crops made
    paths = data.read_train(root, cfg.data.corrections or None, check_images=False)["path"].iloc[:n].tolist()

    here = [_build(paths, cfg, shard) for _ in range(repeats)]
    import ray

    from search.cluster import crops

    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        runner = crops.runner(cfg, lambda s: print(s, file=sys.stderr))
        on_ray = [_build(paths, cfg, shard, runner) for _ in range(repeats)]
        cpus = int(ray.cluster_resources().get("CPU", 0))
    finally:
        ray.shutdown()
    t_here, a = min(here, key=lambda r: r[0])
    t_ray, b = min(on_ray, key=lambda r: r[0])
    same = (np.array_equal(a.images, b.images) and np.array_equal(a.boxes, b.boxes)
            and a.found.tolist() == b.found.tolist())
    row = [str(len(paths)), str(shard), f"{len(paths) / t_here:.1f} img/s ({t_here:.1f} s)",
           f"{len(paths) / t_ray:.1f} img/s ({t_ray:.1f} s, {cpus} CPUs)", f"{t_here / t_ray:.2f}x",
           "yes" if same else "NO", f"{int(a.found.sum())} of {len(paths)}"]
    print(" | ".join(HEADER))
    print(" | ".join(row))
    cmd = "python bench/crops.py " + " ".join(argv if argv is not None else sys.argv[1:])
    append_row(SECTION, ["date", "machine", *HEADER, "command"],
               [str(datetime.date.today()), machine(), *row, f"`{cmd.strip()}`"], args.results)
    if not same:
        print("the two arms gave different crops", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
