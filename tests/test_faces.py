"""Face crops: MTCNN on a real photo, the fallbacks, and the on-disk cache."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskclf import crop_cache, faces
from maskclf.errors import InputError

PHOTO = Path(__file__).parent / "data" / "astronaut.jpg"
# The face in PHOTO (hairline to chin, cheek to cheek), measured by eye; see data/README.md.
FACE_BOX = (145, 70, 245, 185)


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(PHOTO).convert("RGB"))


def noise(h: int = 512, w: int = 384, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_photo_matches_the_competition_shape(photo):
    assert photo.shape == (512, 384, 3)
    assert PHOTO.stat().st_size < 60_000


def test_mtcnn_finds_the_face(photo):
    tight = faces.crop_arrays([photo], margin=0.0)
    assert tight.found.tolist() == [True]
    assert iou(tight.boxes[0], FACE_BOX) > 0.5

    wide = faces.crop_arrays([photo], margin=0.4)
    x1, y1, x2, y2 = wide.boxes[0]
    assert x2 - x1 == y2 - y1, "crops are square"
    assert x1 <= FACE_BOX[0] and y1 <= FACE_BOX[1] and x2 >= FACE_BOX[2] and y2 >= FACE_BOX[3]
    assert 1.5 < (x2 - x1) / (FACE_BOX[3] - FACE_BOX[1]) < 2.2  # face height x (1 + 2 * margin)


def expected_fallback(h: int, w: int) -> tuple[float, float, float]:
    fx1, fy1, fx2, fy2 = faces.FALLBACK_BOX
    return (fx1 + fx2) / 2 * w, (fy1 + fy2) / 2 * h, max((fx2 - fx1) * w, (fy2 - fy1) * h)


@pytest.mark.parametrize("image", [np.zeros((512, 384, 3), np.uint8), noise()], ids=["blank", "noise"])
def test_no_face_falls_back_to_the_fixed_box(image):
    crops = faces.crop_arrays([image])
    assert crops.found.tolist() == [False]
    x1, y1, x2, y2 = crops.boxes[0]
    cx, cy, side = expected_fallback(512, 384)
    assert abs((x1 + x2) / 2 - cx) <= 1 and abs((y1 + y2) / 2 - cy) <= 1
    assert abs((x2 - x1) - side) <= 1 and x2 - x1 == y2 - y1
    assert "0 faces found, 1 fell back" in crops.summary()


def test_image_smaller_than_the_smallest_face_falls_back(photo):
    tiny = np.asarray(Image.fromarray(photo).resize((20, 30)))
    crops = faces.crop_arrays([tiny, photo], size=32)
    assert crops.found.tolist() == [False, True]
    assert crops.images.shape == (2, 32, 32, 3) and crops.images[0].any()
    assert crops.summary() == "1 faces found (mtcnn 1), 1 fell back to the fixed box"


@pytest.mark.parametrize("size", [32, 96])
def test_crop_shapes_and_types_with_mixed_image_sizes(photo, size):
    images = [photo, noise(300, 200), photo[::2, ::2].copy(), noise(300, 200, seed=1)]
    crops = faces.crop_arrays(images, size=size, batch_size=2)
    assert crops.images.shape == (4, size, size, 3) and crops.images.dtype == np.uint8
    assert crops.boxes.shape == (4, 4) and crops.boxes.dtype == np.float32
    assert crops.found.dtype == bool and crops.found.tolist() == [True, False, True, False]
    assert len(crops.paths) == 4
    # The half-size photo gives the same face at half the coordinates.
    assert np.allclose(crops.boxes[2], crops.boxes[0] / 2, atol=4)


def test_center_method_always_uses_the_fallback_box(photo):
    crops = faces.crop_arrays([photo], method="center")
    assert crops.found.tolist() == [False]
    assert np.array_equal(crops.boxes, faces.crop_arrays([noise()]).boxes)


def test_none_method_keeps_the_aspect_by_padding():
    white = np.full((512, 384, 3), 255, np.uint8)
    crops = faces.crop_arrays([white], method="none", size=64)
    assert crops.boxes[0].tolist() == [-64, 0, 448, 512]
    img = crops.images[0]
    assert (img[:, :6] == 0).all() and (img[:, -6:] == 0).all()  # black bars left and right
    assert (img[:, 10:-10] == 255).all()
    assert crops.detector.tolist() == ["whole"] and crops.summary() == "1 whole photos"


def test_unknown_method_names_the_choices(photo):
    choices = r"\['cascade', 'center', 'mtcnn', 'none', 'retinaface'\]"
    with pytest.raises(ValueError, match=r"unknown face method 'bogus'; choose from " + choices):
        faces.crop_arrays([photo], method="bogus")
    with pytest.raises(ValueError, match="unknown face method"):
        crop_cache.build_crop_cache([PHOTO], Path("unused"), method="bogus")


# ---------------------------------------------------------------- cache


@pytest.fixture
def files(tmp_path) -> list[Path]:
    src = tmp_path / "images"
    src.mkdir()
    a = src / "a.jpg"
    a.write_bytes(PHOTO.read_bytes())
    b = src / "b.png"
    Image.fromarray(noise()).save(b)
    return [a, b]


def entries(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.iterdir())


def build(files, cache_dir, logs, **kw):
    return crop_cache.build_crop_cache(files, cache_dir, progress=False, log=logs.append, **kw)


def test_cache_is_written_once_and_then_reused(files, tmp_path, monkeypatch):
    cache_dir, logs = tmp_path / "cache", []
    first = build(files, cache_dir, logs)
    [entry] = entries(cache_dir)  # no temp dir left behind
    assert {p.name for p in entry.iterdir()} == {"crops.npy", "index.csv", "meta.json"}
    assert first.found.tolist() == [True, False]
    assert first.paths == [str(f.resolve()) for f in files]
    assert "miss" in logs[-1] and "1 faces found (mtcnn 1), 1 fell back to the fixed box" in logs[-1]

    with open(entry / "index.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "x1", "y1", "x2", "y2", "found", "detector"]
    assert [r[5:] for r in rows[1:]] == [["1", "mtcnn"], ["0", "box"]]
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["method"] == "mtcnn" and meta["size"] == 128 and (meta["found"], meta["fell_back"]) == (1, 1)

    stamp = (entry / "crops.npy").stat().st_mtime_ns

    def no_decoding(path):
        raise AssertionError("a cache hit must not decode images")

    monkeypatch.setattr(faces, "_read_rgb", no_decoding)
    second = build([str(f) for f in files], cache_dir, logs)
    assert "hit" in logs[-1]
    assert (entry / "crops.npy").stat().st_mtime_ns == stamp
    assert isinstance(second.images, np.memmap) and not second.images.flags.writeable
    assert np.array_equal(second.images, first.images) and np.array_equal(second.boxes, first.boxes)
    assert second.found.tolist() == [True, False] and second.paths == first.paths


def test_settings_and_touched_inputs_make_new_keys(files, tmp_path):
    cache_dir, logs = tmp_path / "cache", []
    build(files, cache_dir, logs, method="center")
    build(files, cache_dir, logs, method="center", size=64)
    build(files, cache_dir, logs, method="center", margin=0.2)
    assert len(entries(cache_dir)) == 3
    stat = files[0].stat()
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    build(files, cache_dir, logs, method="center")
    assert len(entries(cache_dir)) == 4
    assert not any("hit" in line for line in logs)
    build(files, cache_dir, logs, method="center", size=64)  # the touched file misses at size 64 too
    assert len(entries(cache_dir)) == 5


def test_bad_files_are_all_reported_at_once(files, tmp_path):
    broken = tmp_path / "images" / "broken.jpg"
    broken.write_text("not an image")
    missing = tmp_path / "images" / "missing.jpg"
    cache_dir = tmp_path / "cache"
    with pytest.raises(InputError) as err:
        build([files[0], broken, missing, files[1]], cache_dir, [])
    assert len(err.value.problems) == 2
    text = str(err.value)
    assert str(broken.resolve()) in text and str(missing.resolve()) in text
    assert not cache_dir.exists() or entries(cache_dir) == []


def test_interrupted_build_leaves_no_cache_entry(files, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(faces, "crop_arrays", interrupted)
    cache_dir = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        build(files, cache_dir, [])
    # nothing a later build would trust: only the folder of finished shards (none yet) that it resumes from
    [partial] = entries(cache_dir)
    assert partial.name.startswith(".partial-") and list((partial / "shards").iterdir()) == []


def _photos(tmp_path, n: int) -> list[Path]:
    """``n`` photos: the real one (a face) and noise (the fixed box), in two sizes."""
    src = tmp_path / "many"
    src.mkdir()
    out = []
    for i in range(n):
        f = src / f"{i:03d}.jpg"
        if i % 3 == 0:
            f.write_bytes(PHOTO.read_bytes())
        else:
            Image.fromarray(noise(512 if i % 2 else 400, 384, seed=i)).save(f)
        out.append(f)
    return out


def test_a_build_killed_midway_resumes_from_its_finished_shards_and_gives_the_same_crops(tmp_path):
    photos = _photos(tmp_path, 10)
    whole = build(photos, tmp_path / "whole", [], shard_size=3)

    ran: list[int] = []

    def killed_after_two(fn, jobs):  # a runner that dies (as a killed process would) after two shards
        for i, args, kwargs in jobs:
            if len(ran) == 2:
                raise KeyboardInterrupt
            ran.append(i)
            yield i, fn(*args, **kwargs)

    cache_dir, logs = tmp_path / "cache", []
    with pytest.raises(KeyboardInterrupt):
        build(photos, cache_dir, logs, shard_size=3, run_shards=killed_after_two)
    [partial] = entries(cache_dir)
    assert sorted(p.name for p in (partial / "shards").iterdir()) == ["00000.npz", "00001.npz"]
    first = partial / "shards" / "00000.npz"
    with np.load(first) as z:  # a shard kept by a build from before the detector was recorded
        old = {k: z[k] for k in ("crops", "boxes", "found")}
    with open(first, "wb") as f:
        np.savez(f, **old)

    again: list[int] = []

    def counting(fn, jobs):
        for i, result in crop_cache.run_shards_here(fn, jobs):
            again.append(i)
            yield i, result

    resumed = build(photos, cache_dir, logs, shard_size=3, run_shards=counting)
    assert again == [2, 3]  # shards 0 and 1 were not cropped again
    assert any("resuming" in line and "2 of 4 shards done before" in line for line in logs), logs
    [entry] = entries(cache_dir)  # the shards are gone once the entry is in place
    assert not entry.name.startswith(".")
    assert np.array_equal(resumed.images, whole.images) and np.array_equal(resumed.boxes, whole.boxes)
    assert resumed.found.tolist() == whole.found.tolist() == [i % 3 == 0 for i in range(10)]
    assert resumed.detector.tolist() == whole.detector.tolist() == ["mtcnn" if i % 3 == 0 else "box" for i in range(10)]


def test_shard_and_batch_sizes_change_nothing_in_the_crops(tmp_path):
    photos = _photos(tmp_path, 7)
    a = build(photos, tmp_path / "a", [], shard_size=256, batch_size=32)
    b = build(photos, tmp_path / "b", [], shard_size=2, batch_size=1)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.boxes, b.boxes)
    assert a.found.tolist() == b.found.tolist()


def test_the_assembly_folder_of_a_killed_build_is_removed(files, tmp_path):
    cache_dir = tmp_path / "cache"
    build(files, cache_dir, [], method="center")
    [entry] = entries(cache_dir)
    key = entry.name
    shutil.rmtree(entry)
    (cache_dir / f".tmp-{key}-12345").mkdir()  # left by a build killed while it assembled the entry
    (cache_dir / ".tmp-0123456789abcdef-12345").mkdir()  # another entry's: left alone
    build(files, cache_dir, [], method="center")
    assert [p.name for p in entries(cache_dir)] == [".tmp-0123456789abcdef-12345", key]


def test_a_second_build_of_the_same_entry_waits_for_the_first_and_reads_its_crops(files, tmp_path):
    import threading

    started, release, first = threading.Event(), threading.Event(), []

    def slow(fn, jobs):
        for i, result in crop_cache.run_shards_here(fn, jobs):
            started.set()
            release.wait(30)
            yield i, result

    cache_dir = tmp_path / "cache"
    builder = threading.Thread(target=lambda: first.append(build(files, cache_dir, [], method="center",
                                                                 run_shards=slow)))
    builder.start()
    assert started.wait(30)
    threading.Timer(1.0, release.set).start()
    logs: list[str] = []
    second = build(files, cache_dir, logs, method="center")  # waits on the first build's lock
    builder.join(30)
    assert "another process is building" in logs[0] and "hit" in logs[-1], logs
    [entry] = entries(cache_dir)
    assert np.array_equal(second.images, first[0].images) and second.paths == first[0].paths
