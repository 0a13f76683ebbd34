"""Face crops (MTCNN via facenet-pytorch), computed once and cached on disk.

Every trial trains on the same crops, so detection runs once per dataset and
crop setting: the crops live in ``<cache_dir>/<key>/crops.npy`` (memory-mapped
back in) with an ``index.csv`` of boxes and a ``meta.json``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sys
import tempfile
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


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
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


def _crop_files(files, out, problems, missing, *, batch_size: int, progress: bool, **crop_kw) -> FaceCrops:
    """Decode ``batch_size`` files at a time and crop them into ``out``.

    Every file is decoded so every unreadable one is reported; detection stops
    at the first problem since the result will be thrown away. Indices in
    ``missing`` are already reported.
    """
    boxes, found = np.zeros((len(files), 4), np.float32), np.zeros(len(files), bool)
    with tqdm(total=len(files), disable=not progress, desc="face crops", unit="img", file=sys.stderr) as bar:
        for start in range(0, len(files), batch_size):
            idx, images = [], []
            for i in range(start, min(start + batch_size, len(files))):
                if i in missing:
                    continue
                try:
                    images.append(_read_rgb(files[i]))
                    idx.append(i)
                except FileNotFoundError:
                    problems.append(f"{files[i]}: file not found")
                except (OSError, ValueError, Image.DecompressionBombError) as e:  # PIL's errors for bad data
                    problems.append(f"{files[i]}: cannot read image ({e})")
            if idx and not problems:
                part = crop_arrays(images, batch_size=batch_size, **crop_kw)
                out[idx], boxes[idx], found[idx] = part.images, part.boxes, part.found
            bar.update(min(batch_size, len(files) - start))
    return FaceCrops(out, boxes, found, [str(f) for f in files])


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
) -> FaceCrops:
    """Face crops for image files, computed once per inputs and settings.

    The cache key covers each file's resolved path, size and mtime plus the
    crop settings, so editing an image or a setting makes a new entry; a hit
    decodes nothing. Missing or unreadable files raise one InputError naming
    them all. ``paths`` of the result are resolved, in the order given.
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
    key = None if problems else _cache_key(files, stats, **settings)
    if key and (cache_dir / key / "meta.json").is_file():
        crops = load_crop_cache(cache_dir, key)
        log(f"face crop cache hit: {cache_dir / key} ({crops.summary()}, {time.perf_counter() - t0:.2f} s)")
        return crops

    cache_dir.mkdir(parents=True, exist_ok=True)
    # Build in a private temp dir and rename it into place when complete, so an
    # interrupted build never leaves an entry that a later call would trust.
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=cache_dir))
    try:
        out = np.lib.format.open_memmap(tmp / "crops.npy", mode="w+", dtype=np.uint8, shape=(len(files), size, size, 3))
        crops = _crop_files(files, out, problems, missing, batch_size=batch_size, progress=progress, device=device, **settings)
        if problems:
            raise InputError(problems)
        out.flush()
        _write_entry(tmp, crops, settings)
        del out, crops  # close the memmap before its directory moves
        try:
            os.rename(tmp, cache_dir / key)
        except OSError:
            if not (cache_dir / key / "meta.json").is_file():
                raise  # otherwise another process finished the same entry first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    crops = load_crop_cache(cache_dir, key)
    log(f"face crop cache miss, built {cache_dir / key} ({crops.summary()}, {time.perf_counter() - t0:.1f} s)")
    return crops
