"""The demo's masks: a style per mask (surgical, cloth, KF94, patterned), worn or slipped down."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from maskclf.demo.draw import col, half_width


def mask_spec(rng: np.random.Generator) -> dict:
    style = rng.choice(["surgical", "cloth", "kf94", "pattern"], p=[0.4, 0.2, 0.25, 0.15])
    palette = {"surgical": [(150, 195, 225), (235, 235, 235), (40, 40, 45), (235, 180, 195)],
               "kf94": [(240, 240, 240), (35, 35, 38), (150, 150, 155)]}.get(str(style))
    colour = palette[rng.integers(len(palette))] if palette else tuple(rng.integers(15, 240, 3))
    return dict(style=str(style), colour=np.array(colour), colour2=rng.integers(15, 240, 3),
                pattern=str(rng.choice(["dots", "stripes", "checks"])))


_PLACES = {"wear": (0.12, 1.06), "nose": (0.36, 1.12), "mouth": (0.66, 1.22), "chin": (0.92, 1.45)}


def draw_mask(layer: Image.Image, d: dict, spec: dict, place: str, rng: np.random.Generator) -> None:
    """A mask from nose bridge to chin ("wear") or slipped down ("nose", "mouth", "chin" out)."""
    cx, cy, rx, ry = d["cx"], d["cy"], d["rx"], d["ry"]
    kf, colour = spec["style"] == "kf94", spec["colour"] * rng.uniform(0.93, 1.05)
    yt, yb = _PLACES[place]
    yt, yb = cy + (yt + rng.normal(0, 0.025)) * ry, cy + yb * ry
    ys = np.linspace(yt, yb, 14)
    half = [max(half_width(d, y) * 1.06, 0.52 * rx) for y in ys]
    right = [(cx + h, y + 0.08 * ry * (i == 0)) for i, (h, y) in enumerate(zip(half, ys))]
    bottom = (cx, yb + (0.02 if kf else 0.07) * ry)
    left = [(2 * cx - x, y) for x, y in reversed(right)]
    poly = [(cx, yt - (0.06 if kf else 0.03) * ry)] + right + [bottom] + left  # peaked over the nose
    draw = ImageDraw.Draw(layer)
    for s in (-1, 1):  # ear loops
        ex = cx + s * rx * 0.97
        draw.line([cx + s * half[1], yt + 0.1 * ry, ex, cy - 0.1 * ry], fill=col(colour, 0.85), width=2)
        draw.line([cx + s * half[-3], ys[-3], ex, cy + 0.15 * ry], fill=col(colour, 0.85), width=2)
    draw.polygon(poly, fill=col(colour))
    if spec["style"] == "pattern":
        _pattern(layer, poly, spec, rng)
    seam = col(colour, 0.72)
    if spec["style"] == "surgical":  # pleats and the nose wire
        for t in (0.3, 0.52, 0.74):
            y = yt + t * (yb - yt)
            draw.line([cx - half[4] * 0.95, y, cx, y + 3, cx + half[4] * 0.95, y], fill=seam, width=2)
        wire = yt + 0.03 * ry
        draw.line([cx - 0.35 * rx, wire, cx + 0.35 * rx, wire], fill=col(colour, 1.12), width=3)
    elif kf:  # centre seam and fold
        draw.line([poly[0], bottom], fill=seam, width=2)
        draw.line([cx - half[5], ys[5], cx + half[5], ys[5]], fill=seam, width=1)
    _shade_mask(layer, poly, d)


def _bbox(poly: list, size: tuple[int, int]) -> tuple[int, int, int, int]:
    xs, ys = zip(*poly)
    return (max(int(min(xs)) - 1, 0), max(int(min(ys)) - 1, 0),
            min(int(max(xs)) + 2, size[0]), min(int(max(ys)) + 2, size[1]))


def _pattern(layer: Image.Image, poly: list, spec: dict, rng: np.random.Generator) -> None:
    """Dots, stripes or checks in a second colour, clipped to the mask outline."""
    x0, y0, x1, y1 = _bbox(poly, layer.size)
    tile = layer.crop((x0, y0, x1, y1))
    draw, step, c2 = ImageDraw.Draw(tile), int(rng.integers(7, 16)), col(spec["colour2"])
    for x in range(0, x1 - x0, step):
        for y in range(0, y1 - y0, step):
            if spec["pattern"] == "dots":
                draw.ellipse([x, y, x + step / 2.5, y + step / 2.5], fill=c2)
            elif spec["pattern"] == "stripes":
                draw.rectangle([x, y, x + step / 2, y + step], fill=c2)
            elif (x // step + y // step) % 2:
                draw.rectangle([x, y, x + step, y + step], fill=c2)
    shape = Image.new("L", tile.size, 0)
    ImageDraw.Draw(shape).polygon([(x - x0, y - y0) for x, y in poly], fill=255)
    layer.paste(tile, (x0, y0), shape)


def _shade_mask(layer: Image.Image, poly: list, d: dict) -> None:
    """Cloth curving round the face: darker to the sides and bottom, brighter on the lit side."""
    x0, y0, x1, y1 = _bbox(poly, layer.size)
    shape = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(shape).polygon([(x - x0, y - y0) for x, y in poly], fill=255)
    m = np.asarray(shape, np.float32)[..., None] / 255
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    u, v = (xx - d["cx"]) / d["rx"], (yy - y0) / (y1 - y0)
    k = (1.06 - 0.32 * np.minimum(u * u, 1.3) + 0.1 * d["light"] * u - 0.14 * v)[..., None]
    crop = np.asarray(layer.crop((x0, y0, x1, y1)), np.float32)
    crop[..., :3] *= 1 - m + m * k
    layer.paste(Image.fromarray(np.uint8(np.clip(crop, 0, 255)), "RGBA"), (x0, y0))
