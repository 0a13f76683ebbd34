"""The face crops of a dataset, computed once per dataset and crop setting and kept on disk.

The crops live in ``<cache_dir>/<key>/crops.npy`` (memory-mapped back in) with an ``index.csv`` of boxes and a
``meta.json``. A build crops the photos in shards (:func:`maskclf.faces.crop_shard`), each kept on disk as it
finishes, so an interrupted build resumes; a runner can spread the shards over processes or machines.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from maskclf import faces
from maskclf.errors import InputError

# Bump when a change to maskclf.faces, maskclf.retinaface or this module changes the crops, so old caches are not
# reused.
CACHE_VERSION = 1


def _cache_key(files: list[Path], stats: list[os.stat_result], **settings) -> str:
    inputs = [[str(f), s.st_size, s.st_mtime_ns] for f, s in zip(files, stats)]
    blob = json.dumps({"version": CACHE_VERSION, "fallback": faces.FALLBACK_BOX, "files": inputs, **settings},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_crop_cache(cache_dir: Path, key: str) -> faces.FaceCrops:
    """Open a finished cache entry; the crops stay on disk (read-only memmap)."""
    entry = Path(cache_dir) / key
    images = np.load(entry / "crops.npy", mmap_mode="r")
    with open(entry / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    boxes = np.array([[float(r[k]) for k in ("x1", "y1", "x2", "y2")] for r in rows], np.float32).reshape(-1, 4)
    found = np.array([r["found"] == "1" for r in rows], bool)
    if len(rows) != len(images):
        raise InputError(f"{entry}: index.csv has {len(rows)} rows but crops.npy has {len(images)} crops")
    if rows and "detector" in rows[0]:
        detector = np.array([r["detector"] for r in rows], faces.DETECTOR_DTYPE)
    else:  # an entry written before the detector was recorded: MTCNN was the only detector then
        whole = json.loads((entry / "meta.json").read_text()).get("method") == "none"
        detector = np.where(found, "mtcnn", "whole" if whole else "box").astype(faces.DETECTOR_DTYPE)
    return faces.FaceCrops(images, boxes, found, [r["path"] for r in rows], detector)


def _write_entry(tmp: Path, crops: faces.FaceCrops, settings: dict) -> None:
    with open(tmp / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "x1", "y1", "x2", "y2", "found", "detector"])
        for p, b, ok, by in zip(crops.paths, crops.boxes, crops.found, crops.detector):
            w.writerow([p, *(f"{v:.1f}" for v in b), int(ok), by])
    meta = {
        **settings,
        "fallback_box": faces.FALLBACK_BOX,
        "cache_version": CACHE_VERSION,
        "count": len(crops.paths),
        "found": int(crops.found.sum()),
        "fell_back": int((~crops.found).sum()),
        "detectors": crops.counts(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


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
        np.savez(f, crops=result["crops"], boxes=result["boxes"], found=result["found"], detector=result["detector"])
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
) -> faces.FaceCrops:
    """Face crops for image files, computed once per inputs and settings.

    The cache key covers each file's resolved path, size and mtime plus the
    crop settings, so editing an image or a setting makes a new entry; a hit
    decodes nothing. Missing or unreadable files raise one InputError naming
    them all. ``paths`` of the result are resolved, in the order given.

    A miss crops ``shard_size`` photos per job: ``run_shards(faces.crop_shard, jobs)`` runs them (by default one
    after another in this process, :func:`run_shards_here`; the search layer passes one that spreads them
    over a Ray cluster's CPUs or GPUs) and each finished shard is kept on disk, so a build that is killed
    resumes from its finished shards. ``shard_size`` and ``batch_size`` change the speed, not the crops.
    """
    faces.box_finder(method)  # a bad name fails before any file is read
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
                faces.decoded(str(f), _read_bytes([f])[0], problems)
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
           log: Callable[[str], object]) -> faces.FaceCrops:
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
        for i, result in run_shards(faces.crop_shard, jobs()):
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
        detector = np.full(len(files), "box", faces.DETECTOR_DTYPE)
        unfound = "whole" if settings["method"] == "none" else "box"
        for i, start in enumerate(starts):
            with np.load(shards / f"{i:05d}.npz") as z:
                end = start + len(z["found"])
                out[start:end], boxes[start:end], found[start:end] = z["crops"], z["boxes"], z["found"]
                # a shard kept by a build from before the detector was recorded: MTCNN was the only one then
                detector[start:end] = z["detector"] if "detector" in z.files else np.where(z["found"], "mtcnn", unfound)
        out.flush()
        _write_entry(tmp, faces.FaceCrops(out, boxes, found, [str(f) for f in files], detector), settings)
        del out  # close the memmap before its directory moves
        os.rename(tmp, cache_dir / key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(partial, ignore_errors=True)
    return load_crop_cache(cache_dir, key)
