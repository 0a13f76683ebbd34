"""``python bench/faces.py --methods ...``: the face methods side by side.

For each ``faces.method``: the crops of the demo's whole train set (through the crop cache, as every command
builds them: its faces found per detector), images/s of detection and cropping on ``--images`` decoded train
photos, the faces found in real photos (tests/data/astronaut.jpg; scikit-image's LFW subset, 100 faces and 100
non-faces of 25x25 px, each enlarged to 100 px and framed on a 200-px grey square so a detector sees a whole face),
and the val macro F1 of the config's own training run on that method's crops, one run per seed.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _results import append_row, machine
from maskclf import config, dataset, faces, predict

ASTRONAUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "astronaut.jpg"


def real_photos() -> dict[str, list[np.ndarray]]:
    """The astronaut, and scikit-image's LFW faces and non-faces framed as small photos."""
    from skimage import data as skdata

    def framed(gray: np.ndarray) -> np.ndarray:
        face = Image.fromarray((gray * 255).astype(np.uint8)).resize((100, 100), Image.BILINEAR)
        canvas = Image.new("L", (200, 200), int(np.asarray(face).mean()))
        canvas.paste(face, (50, 50))
        return np.asarray(canvas.convert("RGB"))

    lfw = skdata.lfw_subset()  # the first 100 are faces, the next 100 are not
    return {"astronaut": [predict.read_rgb(ASTRONAUT)], "LFW faces": [framed(x) for x in lfw[:100]],
            "LFW non-faces": [framed(x) for x in lfw[100:]]}


def _rate(images: list[np.ndarray], method: str, f) -> tuple[float, faces.FaceCrops]:
    t0 = time.perf_counter()
    crops = faces.crop_arrays(images, method=method, size=f.size, margin=f.margin, batch_size=f.batch_size)
    return len(images) / (time.perf_counter() - t0), crops


def _found(crops: faces.FaceCrops) -> str:
    return f"{int(crops.found.sum())}/{len(crops.found)}"


def _train(job: tuple) -> tuple[str, int, float, float]:
    """One training run of ``cfg`` on ``method``'s crops (built beforehand): (method, seed, last, best val F1)."""
    import torch

    from maskclf import engine

    cfg, method, seed, work = job
    torch.set_num_threads(1)
    run = config.apply(cfg, {"faces.method": method, "train.seed": seed, "train.device": "cpu", "train.threads": 1})
    train, val = dataset.prepare(run, log=lambda s: None, progress=False).fold(run)
    out = Path(work) / f"{method}-s{seed}"
    history = engine.fit(run, train, val, out_dir=out, log=lambda s: None)["history"]
    shutil.rmtree(out, ignore_errors=True)
    f1 = [float(m["val_f1"]) for m in history]
    return method, seed, f1[-1], max(f1)


def compare(cfg: config.Config, args, argv: list[str]) -> int:
    import torch

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        faces.box_finder(m)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    f, log = cfg.faces, (lambda s: print(s, file=sys.stderr))
    prep = {m: dataset.prepare(config.apply(cfg, {"faces.method": m}), log=log) for m in methods}  # whole train set
    n = min(32 if args.quick else args.images, len(prep[methods[0]].train))
    paths = prep[methods[0]].train["path"].iloc[:n].tolist()
    demo = [predict.read_rgb(p) for p in paths]
    real = real_photos()
    for m in methods:  # build each detector outside the timings
        faces.crop_arrays(demo[:1], method=m, size=f.size)
    rows = {}
    for m in methods:
        rate, _ = _rate(demo, m, f)
        whole = prep[m].train_crops
        found = {name: _found(_rate(imgs, m, f)[1]) for name, imgs in real.items()}
        rows[m] = {"rate": rate, "whole": whole, "real": found}
        print(f"{m:>10}: demo train set {whole.summary()}; {rate:.1f} images/s; "
              + "; ".join(f"{k} {v}" for k, v in found.items()), flush=True)

    scores: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
    if args.seeds > 0:
        work = Path(cfg.run.dir) / "bench-face-methods"
        jobs = [(cfg, m, s, str(work)) for s in range(args.seeds) for m in methods]
        with mp.get_context("spawn").Pool(max(args.workers, 1)) as pool:
            for m, seed, last, best in pool.imap_unordered(_train, jobs):
                scores[m].append((last, best))
                print(f"{m:>10} seed {seed}: val macro F1 {last:.3f} after the last epoch (best {best:.3f})",
                      flush=True)
        shutil.rmtree(work, ignore_errors=True)

    cmd = "python bench/faces.py " + " ".join(argv)
    header = ["date", "machine", "method", "demo train photos: faces found (by detector)", "images/s",
              "astronaut", "LFW faces", "LFW non-faces", "val macro F1 (last epoch, mean of seeds)", "each seed",
              "command"]
    for m in methods:
        r, s = rows[m], scores[m]
        c, total = r["whole"].counts(), len(r["whole"].found)
        n_found = sum(c.get(k, 0) for k in faces.FACE_DETECTORS)
        by = ", ".join(f"{k} {c[k]}" for k in faces.FACE_DETECTORS if c.get(k))
        by = f"; {by}" if by else ""
        mean = f"{np.mean([x[0] for x in s]):.3f}" if s else "-"
        each = ", ".join(f"{x[0]:.3f} (best {x[1]:.3f})" for x in s) or "-"
        threads = torch.get_num_threads()
        append_row("Faces: the face methods side by side (found, speed, val F1 of their crops)", header,
                   [str(datetime.date.today()), machine(), m, f"{n_found}/{total} ({100 * n_found / total:.0f}%{by})",
                    f"{r['rate']:.1f} ({len(demo)} photos, {threads} thread{'s' * (threads > 1)})",
                    r["real"]["astronaut"], r["real"]["LFW faces"], r["real"]["LFW non-faces"], mean, each,
                    f"`{cmd.strip()}`"], args.results)
    return 0
