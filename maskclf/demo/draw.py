"""Shared drawing helpers of the demo portraits: the frame, the face outline, colours."""

from __future__ import annotations

import numpy as np
from PIL import ImageDraw

W, H = 384, 512  # the competition's photo size
PAD = 80  # the person layer is taller than the frame so a pose shift never bares its bottom edge


def half_width(d: dict, y: float) -> float:
    """Face half-width at height y: ellipse above the centre, superellipse jaw below."""
    t = (y - d["cy"]) / d["ry"]
    if abs(t) >= 1:
        return 0.0
    p = 2 + 2.5 * d["jaw"] if t > 0 else 2
    return d["rx"] * (1 - abs(t) ** p) ** (1 / p)


def face_outline(d: dict, n: int = 48) -> list[tuple[float, float]]:
    ys = d["cy"] + d["ry"] * np.sin(np.linspace(-np.pi / 2, np.pi / 2, n))
    right = [(d["cx"] + half_width(d, y), y) for y in ys]
    return right + [(2 * d["cx"] - x, y) for x, y in reversed(right)]


def col(c, k: float = 1.0, alpha: int | None = None) -> tuple:
    rgb = tuple(int(v) for v in np.clip(np.asarray(c, float) * k, 0, 255))
    return rgb if alpha is None else rgb + (alpha,)


def oval(draw: ImageDraw.ImageDraw, x: float, y: float, rx: float, ry: float, **kw) -> None:
    draw.ellipse([x - rx, y - ry, x + rx, y + ry], **kw)
