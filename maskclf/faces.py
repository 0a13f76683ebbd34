"""Face crops (MTCNN via facenet-pytorch), computed once and cached on disk.

Every trial trains on the same crops, so detection runs once per dataset and
crop setting: the crops live in ``<cache_dir>/<key>/crops.npy`` (memory-mapped
back in) with an ``index.csv`` of boxes and a ``meta.json``.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from maskclf.errors import InputError

# Bump when a change to this module changes the crops, so old caches are not reused.
CACHE_VERSION = 1

# Where the face sits in a 384x512 competition photo when MTCNN finds none
# (fractions of width, height). It is square in pixels there (269x269) and
# spans forehead to chin with room for a tilted head.
FALLBACK_BOX = (0.15, 0.10, 0.85, 0.625)

# Faces in 384x512 competition photos are about 100 px or more; skipping the
# pyramid levels for faces under 40 px makes CPU detection about 1.8x faster.
_MIN_FACE_SIZE = 40
# Among several detections prefer the largest confident one: a face printed on
# a T-shirt or a poster behind the person is smaller.
_MIN_PROB = 0.9

_DETECTORS: dict[str, object] = {}  # one MTCNN per device, built on first use


@dataclass
class FaceCrops:
    """Square face crops with the box each was cut from."""

    images: np.ndarray  # N x S x S x 3 uint8 RGB (a read-only memmap when cached)
    boxes: np.ndarray  # N x 4 float32 x1, y1, x2, y2 in source pixels, as cropped
    found: np.ndarray  # N bool: True = MTCNN found a face, False = fallback box
    paths: list[str]

    def summary(self) -> str:
        n_found = int(self.found.sum())
        return f"{n_found} faces found, {len(self.found) - n_found} fell back to the fixed box"


# ---------------------------------------------------------------- boxes


def _square(box: tuple[float, float, float, float], margin: float) -> np.ndarray:
    """Grow a box by ``margin`` of its size on each side, make it square, snap to pixels."""
    x1, y1, x2, y2 = box
    side = round(max(x2 - x1, y2 - y1) * (1 + 2 * margin))
    left, top = round((x1 + x2 - side) / 2), round((y1 + y2 - side) / 2)
    return np.array([left, top, left + side, top + side], np.float32)


def _fallback(shape: tuple[int, ...]) -> np.ndarray:
    h, w = shape[:2]
    fx1, fy1, fx2, fy2 = FALLBACK_BOX
    return _square((fx1 * w, fy1 * h, fx2 * w, fy2 * h), 0.0)


def _detector(device: str):
    if device not in _DETECTORS:
        from facenet_pytorch import MTCNN  # heavy import, only when detecting

        _DETECTORS[device] = MTCNN(min_face_size=_MIN_FACE_SIZE, device=device).eval()
    return _DETECTORS[device]


def _pick(boxes, probs) -> np.ndarray | None:
    """The largest confident detection, else the most probable one, else None."""
    if boxes is None:
        return None
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    probs = np.asarray(probs, np.float32).reshape(-1)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    sure = probs >= _MIN_PROB
    return boxes[np.argmax(np.where(sure, areas, -1))] if sure.any() else boxes[np.argmax(probs)]


def _mtcnn_boxes(images: list[np.ndarray], *, margin: float, device: str):
    """MTCNN on one batch of same-sized images."""
    if min(images[0].shape[:2]) < _MIN_FACE_SIZE:
        # smaller than the smallest face MTCNN looks for: its image pyramid would be empty
        return _center_boxes(images, margin=margin, device=device)
    boxes, probs = _detector(device).detect(np.stack(images))
    out, found = [], []
    for img, b, p in zip(images, boxes, probs):
        face = _pick(b, p)
        found.append(face is not None)
        out.append(_square(tuple(face), margin) if face is not None else _fallback(img.shape))
    return np.stack(out), np.array(found)


def _center_boxes(images: list[np.ndarray], *, margin: float, device: str):
    return np.stack([_fallback(i.shape) for i in images]), np.zeros(len(images), bool)


def _whole_boxes(images: list[np.ndarray], *, margin: float, device: str):
    # The square around the whole image: resizing it keeps the aspect, padding the short side.
    boxes = [_square((0, 0, i.shape[1], i.shape[0]), 0.0) for i in images]
    return np.stack(boxes), np.zeros(len(images), bool)


METHODS: dict[str, Callable] = {"mtcnn": _mtcnn_boxes, "center": _center_boxes, "none": _whole_boxes}


def _box_finder(method: str) -> Callable:
    try:
        return METHODS[method]
    except KeyError:
        raise ValueError(f"unknown face method {method!r}; choose from {sorted(METHODS)}") from None


# ---------------------------------------------------------------- crops in memory


def _crop(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    # PIL fills the part of the box outside the image with black.
    x1, y1, x2, y2 = (int(v) for v in box)
    patch = Image.fromarray(image).crop((x1, y1, x2, y2))
    return np.asarray(patch.resize((size, size), Image.BILINEAR))


def _same_shape_batches(images: list[np.ndarray], batch_size: int) -> list[list[int]]:
    """Indices grouped by image shape (MTCNN batches need equal sizes), in chunks."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"image {i}: expected HxWx3 uint8 RGB, got {img.shape} {img.dtype}")
        groups.setdefault(img.shape, []).append(i)
    return [g[s : s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)]


def crop_arrays(
    images: list[np.ndarray],
    *,
    method: str = "mtcnn",
    size: int = 128,
    margin: float = 0.4,
    batch_size: int = 32,
    device: str = "cpu",
    progress: bool = False,
) -> FaceCrops:
    """Cut one ``size`` x ``size`` face crop from each HxWx3 uint8 RGB image.

    ``method``: "mtcnn" (detected face grown by ``margin`` per side, else
    FALLBACK_BOX), "center" (always FALLBACK_BOX) or "none" (the whole image,
    padded to a square). Images may differ in size.
    """
    find = _box_finder(method)
    n = len(images)
    crops = np.zeros((n, size, size, 3), np.uint8)
    boxes, found = np.zeros((n, 4), np.float32), np.zeros(n, bool)
    with tqdm(total=n, disable=not progress, desc="face crops", unit="img", file=sys.stderr) as bar:
        for idx in _same_shape_batches(images, batch_size):
            boxes[idx], found[idx] = find([images[i] for i in idx], margin=margin, device=device)
            for i in idx:
                crops[i] = _crop(images[i], boxes[i], size)
            bar.update(len(idx))
    return FaceCrops(crops, boxes, found, [f"<array {i}>" for i in range(n)])


# ---------------------------------------------------------------- cache on disk


def _read_rgb(source: Path | io.BytesIO) -> np.ndarray:
    with Image.open(source) as im:
        # Phone photos may be stored rotated with an EXIF flag; crop what a viewer shows.
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def _cache_key(files: list[Path], stats: list[os.stat_result], **settings) -> str:
    inputs = [[str(f), s.st_size, s.st_mtime_ns] for f, s in zip(files, stats)]
    blob = json.dumps({"version": CACHE_VERSION, "fallback": FALLBACK_BOX, "files": inputs, **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_crop_cache(cache_dir: Path, key: str) -> FaceCrops:
    """Open a finished cache entry; the crops stay on disk (read-only memmap)."""
    entry = Path(cache_dir) / key
    images = np.load(entry / "crops.npy", mmap_mode="r")
    with open(entry / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    boxes = np.array([[float(r[k]) for k in ("x1", "y1", "x2", "y2")] for r in rows], np.float32).reshape(-1, 4)
    found = np.array([r["found"] == "1" for r in rows], bool)
    if len(rows) != len(images):
        raise InputError(f"{entry}: index.csv has {len(rows)} rows but crops.npy has {len(images)} crops")
    return FaceCrops(images, boxes, found, [r["path"] for r in rows])


def _write_entry(tmp: Path, crops: FaceCrops, settings: dict) -> None:
    with open(tmp / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "x1", "y1", "x2", "y2", "found"])
        for p, b, ok in zip(crops.paths, crops.boxes, crops.found):
            w.writerow([p, *(f"{v:.1f}" for v in b), int(ok)])
    meta = {
        **settings,
        "fallback_box": FALLBACK_BOX,
        "cache_version": CACHE_VERSION,
        "count": len(crops.paths),
        "found": int(crops.found.sum()),
        "fell_back": int((~crops.found).sum()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def _decoded(name: str, blob: bytes | None, problems: list[str]) -> np.ndarray | None:
    """The photo ``blob`` decoded, or None with a line in ``problems`` (a None blob: the file was not found)."""
    if blob is None:
        problems.append(f"{name}: file not found")
        return None
    try:
        return _read_rgb(io.BytesIO(blob))
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # PIL's errors for bad data
        problems.append(f"{name}: cannot read image ({e})")
        return None


def crop_shard(names: list[str], blobs: list[bytes | None], *, batch_size: int = 32, detect: bool = True,
               **crop_kw) -> dict:
    """Decode one shard of encoded photos and crop them, ``batch_size`` photos at a time.

    A pure function of its arguments (the bytes, not paths), so it runs in any process of any node. Returns
    ``crops``, ``boxes``, ``found`` and ``problems`` (one line per photo that cannot be decoded; a ``None``
    blob is a file that was not found). Detection is skipped once a problem is seen (the shard is useless) and
    when ``detect`` is false (the photos are only checked)."""
    n, size = len(names), int(crop_kw.get("size", 128))
    crops, boxes, found = np.zeros((n, size, size, 3), np.uint8), np.zeros((n, 4), np.float32), np.zeros(n, bool)
    problems: list[str] = []
    for start in range(0, n, batch_size):
        idx, images = [], []
        for i in range(start, min(start + batch_size, n)):
            image = _decoded(names[i], blobs[i], problems)
            if image is not None:
                images.append(image)
                idx.append(i)
        if idx and detect and not problems:
            part = crop_arrays(images, batch_size=batch_size, **crop_kw)
            crops[idx], boxes[idx], found[idx] = part.images, part.boxes, part.found
    return {"crops": crops, "boxes": boxes, "found": found, "problems": problems}


def _read_bytes(files: list[Path]) -> list[bytes | None]:
    out: list[bytes | None] = []
    for f in files:
        try:
            out.append(f.read_bytes())
        except OSError:
            out.append(None)
    return out


def run_shards_here(fn: Callable, jobs):
    """Run ``fn(*args, **kwargs)`` for each ``(i, args, kwargs)`` of ``jobs`` in this process, one after
    another; yields ``(i, result)``. The default runner of :func:`build_crop_cache`: a runner that spreads the
    jobs over processes or machines yields the same pairs, in any order."""
    for i, args, kwargs in jobs:
        yield i, fn(*args, **kwargs)


def _save_shard(shards: Path, i: int, result: dict) -> None:
    """One finished shard, written under a temporary name and renamed: a shard file on disk is always whole."""
    tmp = shards / f".{i:05d}.{os.getpid()}.npz"
    with open(tmp, "wb") as f:
        np.savez(f, crops=result["crops"], boxes=result["boxes"], found=result["found"])
    os.replace(tmp, shards / f"{i:05d}.npz")


def build_crop_cache(
    paths: list[str | Path],
    cache_dir: Path,
    *,
    method: str = "mtcnn",
    size: int = 128,
    margin: float = 0.4,
    batch_size: int = 32,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], object] = print,
    shard_size: int = 256,
    run_shards: Callable | None = None,
) -> FaceCrops:
    """Face crops for image files, computed once per inputs and settings.

    The cache key covers each file's resolved path, size and mtime plus the
    crop settings, so editing an image or a setting makes a new entry; a hit
    decodes nothing. Missing or unreadable files raise one InputError naming
    them all. ``paths`` of the result are resolved, in the order given.

    A miss crops ``shard_size`` photos per job: ``run_shards(crop_shard, jobs)`` runs them (by default one
    after another in this process, :func:`run_shards_here`; the search layer passes one that spreads them
    over a Ray cluster's CPUs or GPUs) and each finished shard is kept on disk, so a build that is killed
    resumes from its finished shards. ``shard_size`` and ``batch_size`` change the speed, not the crops.
    """
    _box_finder(method)  # a bad name fails before any file is read
    t0 = time.perf_counter()
    cache_dir = Path(cache_dir)
    files = [Path(p).resolve() for p in paths]
    problems: list[str] = []
    stats, missing = [], set()
    for i, f in enumerate(files):
        try:
            stats.append(f.stat())
        except OSError:
            problems.append(f"{f}: file not found")
            missing.add(i)
    # Device and batch size are not settings here: they change the speed, not the crops.
    settings = {"method": method, "size": int(size), "margin": float(margin)}
    if problems:  # decode the others too, so every problem is reported at once
        for i, f in enumerate(files):
            if i not in missing:
                _decoded(str(f), _read_bytes([f])[0], problems)
        raise InputError(problems)
    key = _cache_key(files, stats, **settings)
    if (cache_dir / key / "meta.json").is_file():
        crops = load_crop_cache(cache_dir, key)
        log(f"face crop cache hit: {cache_dir / key} ({crops.summary()}, {time.perf_counter() - t0:.2f} s)")
        return crops

    cache_dir.mkdir(parents=True, exist_ok=True)
    # one builder per entry: another process building it (another command on the same data) is waited for, and
    # a killed builder's lock goes with it, so the next one resumes from its shards
    with open(cache_dir / f".lock-{key}", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"face crops: another process is building {cache_dir / key}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (cache_dir / key / "meta.json").is_file():
                crops = load_crop_cache(cache_dir, key)
                log(f"face crop cache hit: {cache_dir / key} ({crops.summary()}, {time.perf_counter() - t0:.1f} s)")
                return crops
            crops = _build(files, cache_dir, key, settings, batch_size=batch_size, device=device,
                           shard_size=shard_size, run_shards=run_shards or run_shards_here, progress=progress,
                           log=log)
        finally:  # a waiter holding the old file's lock finds the entry (or builds it); a killed build leaves it
            (cache_dir / f".lock-{key}").unlink(missing_ok=True)
    log(f"face crop cache miss, built {cache_dir / key} ({crops.summary()}, {time.perf_counter() - t0:.1f} s)")
    return crops


def _build(files: list[Path], cache_dir: Path, key: str, settings: dict, *,
           batch_size: int, device: str, shard_size: int, run_shards: Callable, progress: bool,
           log: Callable[[str], object]) -> FaceCrops:
    """Crop ``files`` shard by shard into ``<cache_dir>/.partial-<key>/shards/`` (each finished shard a file of
    its own, so an interrupted build resumes from the shards it finished), then assemble the entry in a private
    folder and rename it into place: a half-written entry is never trusted. The caller holds the entry's lock."""
    partial = cache_dir / f".partial-{key}"
    shards = partial / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    for leftover in cache_dir.glob(f".tmp-{key}-*"):  # a build killed while it assembled (we hold the lock)
        shutil.rmtree(leftover, ignore_errors=True)
    problems: list[str] = []
    starts = list(range(0, len(files), shard_size))
    done = {i for i in range(len(starts)) if (shards / f"{i:05d}.npz").is_file()}
    if done:
        log(f"face crops: resuming {partial}: {len(done)} of {len(starts)} shards done before")
    todo = [i for i in range(len(starts)) if i not in done]

    def jobs():
        for i in todo:  # read as the runner asks: only the shards in flight are held in memory
            part = files[starts[i]:starts[i] + shard_size]
            # once a photo cannot be read the build is lost: later shards are only decoded, to report them all
            yield i, ([str(f) for f in part], _read_bytes(part)), {"batch_size": batch_size, "device": device,
                                                                  "detect": not problems, **settings}

    with tqdm(total=len(files), initial=sum(min(shard_size, len(files) - starts[i]) for i in done),
              disable=not progress, desc="face crops", unit="img", file=sys.stderr) as bar:
        for i, result in run_shards(crop_shard, jobs()):
            if result["problems"]:
                problems += result["problems"]
            elif not problems:
                _save_shard(shards, i, result)
            bar.update(len(result["found"]))
    if problems:
        shutil.rmtree(partial, ignore_errors=True)  # fixing a photo changes the key: these shards are of no use
        raise InputError(problems)

    tmp = cache_dir / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        size = int(settings["size"])
        out = np.lib.format.open_memmap(tmp / "crops.npy", mode="w+", dtype=np.uint8, shape=(len(files), size, size, 3))
        boxes, found = np.zeros((len(files), 4), np.float32), np.zeros(len(files), bool)
        for i, start in enumerate(starts):
            with np.load(shards / f"{i:05d}.npz") as z:
                end = start + len(z["found"])
                out[start:end], boxes[start:end], found[start:end] = z["crops"], z["boxes"], z["found"]
        out.flush()
        _write_entry(tmp, FaceCrops(out, boxes, found, [str(f) for f in files]), settings)
        del out  # close the memmap before its directory moves
        os.rename(tmp, cache_dir / key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(partial, ignore_errors=True)
    return load_crop_cache(cache_dir, key)
