"""Face crops: MTCNN (via facenet-pytorch), RetinaFace (:mod:`maskclf.retinaface`), the two in a cascade, or a
fixed box finds each face; a square around it is cut and resized. :mod:`maskclf.crop_cache` runs this once per
dataset and crop setting and keeps the crops on disk.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm


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

_MTCNNS: dict[str, object] = {}  # one MTCNN per device, built on first use


# What cut each crop: a detector of DETECTORS that found the face, "box" (FALLBACK_BOX) or "whole" (the whole photo).
DETECTOR_DTYPE = "<U10"


@dataclass
class FaceCrops:
    """Square face crops with the box each was cut from and what found it."""

    images: np.ndarray  # N x S x S x 3 uint8 RGB (a read-only memmap when cached)
    boxes: np.ndarray  # N x 4 float32 x1, y1, x2, y2 in source pixels, as cropped
    found: np.ndarray  # N bool: True = a detector found a face, False = the fixed box or the whole photo
    paths: list[str]
    detector: np.ndarray | None = None  # N names: mtcnn | retinaface | box | whole

    def __post_init__(self):
        if self.detector is None:  # crops from before the detector was recorded, when MTCNN was the only one
            self.detector = np.where(np.asarray(self.found, bool), "mtcnn", "box").astype(DETECTOR_DTYPE)

    def counts(self) -> dict[str, int]:
        """Crops per detector name, in the order mtcnn, retinaface, box, whole (names with none left out)."""
        names, n = np.unique(np.asarray(self.detector), return_counts=True)
        have = dict(zip(names.tolist(), n.tolist()))
        return {k: int(have[k]) for k in (*FACE_DETECTORS, "box", "whole") if k in have}

    def summary(self) -> str:
        c = self.counts()
        if c.get("whole"):
            return f"{c['whole']} whole photos"
        n_found = sum(c.get(k, 0) for k in FACE_DETECTORS)
        by = ", ".join(f"{k} {c[k]}" for k in FACE_DETECTORS if c.get(k))
        return f"{n_found} faces found{f' ({by})' if by else ''}, {c.get('box', 0)} fell back to the fixed box"


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
    """The MTCNN of ``device`` (``faces.device``: auto, cpu, cuda, cuda:1 ...)."""
    if device not in _MTCNNS:
        from facenet_pytorch import MTCNN  # heavy imports, only when detecting

        from maskclf.inputs import resolve_device

        _MTCNNS[device] = MTCNN(min_face_size=_MIN_FACE_SIZE, device=resolve_device(device)).eval()
    return _MTCNNS[device]


def _pick(boxes, probs) -> np.ndarray | None:
    """The largest confident detection, else the most probable one, else None."""
    if boxes is None:
        return None
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    probs = np.asarray(probs, np.float32).reshape(-1)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    sure = probs >= _MIN_PROB
    return boxes[np.argmax(np.where(sure, areas, -1))] if sure.any() else boxes[np.argmax(probs)]


def _mtcnn_faces(images: list[np.ndarray], device: str) -> list[np.ndarray | None]:
    """MTCNN on one batch of same-sized images: each image's face box, or None."""
    if min(images[0].shape[:2]) < _MIN_FACE_SIZE:
        return [None] * len(images)  # smaller than the smallest face MTCNN looks for: its pyramid would be empty
    boxes, probs = _detector(device).detect(np.stack(images))
    return [_pick(b, p) for b, p in zip(boxes, probs)]


def _retinaface_faces(images: list[np.ndarray], device: str) -> list[np.ndarray | None]:
    """RetinaFace (:mod:`maskclf.retinaface`, on the CPU) on one batch of same-sized images."""
    from maskclf import retinaface

    return [_pick(b, p) if len(b) else None for b, p in retinaface.detect(images)]


def _boxes(images: list[np.ndarray], steps: tuple[str, ...], margin: float, device: str):
    """Each detector of ``steps`` (names in DETECTORS) on the images no earlier one found a face in; the fixed box
    for the rest."""
    faces: list[np.ndarray | None] = [None] * len(images)
    detector = np.full(len(images), "box", dtype=DETECTOR_DTYPE)
    for name in steps:
        todo = [i for i, f in enumerate(faces) if f is None]
        if not todo:
            break
        for i, face in zip(todo, DETECTORS[name]([images[i] for i in todo], device)):
            if face is not None:
                faces[i], detector[i] = face, name
    boxes = [_square(tuple(f), margin) if f is not None else _fallback(img.shape) for img, f in zip(images, faces)]
    return np.stack(boxes), detector


def _finder(*steps: str) -> Callable:
    def find(images: list[np.ndarray], *, margin: float, device: str):
        return _boxes(images, steps, margin, device)
    find.detectors = steps
    return find


def _whole_boxes(images: list[np.ndarray], *, margin: float, device: str):
    # The square around the whole image: resizing it keeps the aspect, padding the short side.
    boxes = [_square((0, 0, i.shape[1], i.shape[0]), 0.0) for i in images]
    return np.stack(boxes), np.full(len(images), "whole", dtype=DETECTOR_DTYPE)


# a detector: (same-sized images, device) -> each image's face box (x1, y1, x2, y2) or None
DETECTORS: dict[str, Callable] = {"mtcnn": _mtcnn_faces, "retinaface": _retinaface_faces}
FACE_DETECTORS = tuple(DETECTORS)
# faces.method -> its box finder: (images, margin=, device=) -> (N x 4 boxes, N detector names)
METHODS: dict[str, Callable] = {
    "mtcnn": _finder("mtcnn"),
    "retinaface": _finder("retinaface"),
    "cascade": _finder("mtcnn", "retinaface"),  # MTCNN, RetinaFace where it found none, then the fixed box
    "center": _finder(),
    "none": _whole_boxes,
}


def detectors(method: str) -> tuple[str, ...]:
    """The detectors ``faces.method`` runs, in order (none for the fixed box and the whole photo)."""
    return getattr(METHODS.get(method), "detectors", ())


def install_problem(method: str) -> str | None:
    """What ``method`` needs that is not installed here (one line with the install), or None."""
    if "retinaface" in detectors(method):
        from maskclf import retinaface

        return retinaface.problem()
    return None


def box_finder(method: str) -> Callable:
    """The box finder of ``faces.method``; ValueError naming the choices for an unknown one."""
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

    ``method``: "mtcnn" or "retinaface" (the detected face grown by ``margin`` per side, else FALLBACK_BOX),
    "cascade" (MTCNN, RetinaFace where MTCNN found none, else FALLBACK_BOX), "center" (always FALLBACK_BOX) or
    "none" (the whole image, padded to a square). Images may differ in size. RetinaFace runs on the CPU
    whatever ``device`` says (onnxruntime's CPU provider).
    """
    find = box_finder(method)
    n = len(images)
    crops = np.zeros((n, size, size, 3), np.uint8)
    boxes, detector = np.zeros((n, 4), np.float32), np.full(n, "box", dtype=DETECTOR_DTYPE)
    with tqdm(total=n, disable=not progress, desc="face crops", unit="img", file=sys.stderr) as bar:
        for idx in _same_shape_batches(images, batch_size):
            boxes[idx], detector[idx] = find([images[i] for i in idx], margin=margin, device=device)
            for i in idx:
                crops[i] = _crop(images[i], boxes[i], size)
            bar.update(len(idx))
    return FaceCrops(crops, boxes, np.isin(detector, FACE_DETECTORS), [f"<array {i}>" for i in range(n)], detector)


# ---------------------------------------------------------------- photos as bytes


def _read_rgb(source: Path | io.BytesIO) -> np.ndarray:
    with Image.open(source) as im:
        # Phone photos may be stored rotated with an EXIF flag; crop what a viewer shows.
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def decoded(name: str, blob: bytes | None, problems: list[str]) -> np.ndarray | None:
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
    ``crops``, ``boxes``, ``found``, ``detector`` and ``problems`` (one line per photo that cannot be decoded; a
    ``None`` blob is a file that was not found). Detection is skipped once a problem is seen (the shard is useless) and
    when ``detect`` is false (the photos are only checked)."""
    n, size = len(names), int(crop_kw.get("size", 128))
    crops, boxes, found = np.zeros((n, size, size, 3), np.uint8), np.zeros((n, 4), np.float32), np.zeros(n, bool)
    detector = np.full(n, "box", dtype=DETECTOR_DTYPE)
    problems: list[str] = []
    for start in range(0, n, batch_size):
        idx, images = [], []
        for i in range(start, min(start + batch_size, n)):
            image = decoded(names[i], blobs[i], problems)
            if image is not None:
                images.append(image)
                idx.append(i)
        if idx and detect and not problems:
            part = crop_arrays(images, batch_size=batch_size, **crop_kw)
            crops[idx], boxes[idx], found[idx], detector[idx] = part.images, part.boxes, part.found, part.detector
    return {"crops": crops, "boxes": boxes, "found": found, "detector": detector, "problems": problems}
