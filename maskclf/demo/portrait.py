"""Drawing one demo person: identity, face, hair, clothes, masks, pose and camera noise.

Every cue is a drawing parameter sampled once per person (``identity``), so the seven
photos of a person share it and differ only by mask state, pose and lighting.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from maskclf.demo.draw import PAD, H, W, col, face_outline, half_width, oval
from maskclf.demo.masks import draw_mask, mask_spec
from maskclf.demo.people import Person

# Apparent age = true age + this noise (years): neighbours across 30 and 60 look alike.
AGE_NOISE = 4.5



def identity(p: Person, rng: np.random.Generator) -> dict:
    """Every drawing parameter of one person; cues drawn from overlapping distributions."""
    f = p.gender == 1
    app = p.age + rng.normal(0, AGE_NOISE)
    a = float(np.clip((app - 18) / 42, 0, 1.2))  # 0 at 18, 1 at 60
    ry = rng.uniform(88, 115)
    tone = rng.normal(0, 1)
    skin = np.array([224, 186, 152]) + tone * np.array([16, 18, 18]) - a * np.array([8, 14, 14])
    hair = np.array([[28, 24, 22], [70, 48, 34], [130, 92, 60]])[rng.choice(3, p=[.7, .22, .08])]
    grey = float(np.clip((app - 38) / 24 + rng.normal(0, 0.15), 0, 0.95))
    return dict(
        cx=W / 2 + rng.normal(0, 16), cy=rng.normal(205, 18), ry=ry,
        rx=ry * rng.normal(0.73 if f else 0.81, 0.035),
        jaw=float(np.clip(rng.normal(0.35 if f else 0.65, 0.22), 0, 1)),
        skin=skin, light=rng.uniform(-1, 1), a=a,
        hair=hair * (1 - grey) + np.array([190, 188, 184]) * grey, grey=grey,
        hair_len=float(np.clip(rng.normal(0.72 if f else 0.15, 0.25), 0, 1)),
        bangs=rng.random() < (0.5 if f else 0.25),
        hairline=0.62 + 0.22 * rng.random() * (a if not f else 0.3),
        brow=ry * float(np.clip(rng.normal(0.066 if not f else 0.042, 0.012), 0.02, 0.1)),
        lip=float(np.clip(rng.normal(0.62 if f else 0.3, 0.22), 0, 1)),
        stubble=0.0 if f or rng.random() < 0.6 else rng.uniform(0.3, 1),
        wrinkle=float(np.clip(a ** 1.6 + rng.normal(0, 0.12), 0, 1.2)),
        glasses=rng.random() < 0.15, eye=rng.normal(1.0, 0.08),
        cloth=rng.integers(20, 235, 3), shoulders=rng.normal(2.5 if f else 2.8, 0.2),
        neck=rng.uniform(0.15, 0.35) * ry,
        masks=[mask_spec(rng)] + [mask_spec(rng) if rng.random() < 0.35 else None for _ in range(4)],
        wrong=rng.choice(["nose", "mouth", "chin"], p=[0.55, 0.3, 0.15]),
    )


# ---------------------------------------------------------------- drawing

def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cell: int, channels: int) -> np.ndarray:
    """Zero-mean noise of unit-ish amplitude varying over ``cell`` pixels (bilinear upsampling)."""
    w, h = size
    low = rng.normal(0, 1, (h // cell + 2, w // cell + 2, channels))
    img = Image.fromarray(np.uint8(np.clip(low * 40 + 128, 0, 255)).squeeze())
    return (np.asarray(img.resize((w, h), Image.BILINEAR), np.float32).reshape(h, w, channels) - 128) / 40


def background(rng: np.random.Generator) -> Image.Image:
    """A cluttered room-like backdrop, slightly larger than the frame for hand-held jitter."""
    w, h = W + 24, H + 24
    base = rng.uniform(110, 235) + rng.normal(0, 12, 3)  # mostly pale indoor walls
    grad = np.linspace(-18, 18, h, dtype=np.float32)[:, None, None] * rng.uniform(-1, 1)
    img = Image.fromarray(np.uint8(np.clip(base + 14 * _smooth_noise(rng, (w, h), 90, 3) + grad, 0, 255)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(6, 18))):
        x0, y0 = rng.uniform(-60, w), rng.uniform(-60, h)
        box = [x0, y0, x0 + rng.uniform(15, 180), y0 + rng.uniform(15, 220)]
        c, kind, width = col(rng.integers(20, 245, 3)), rng.integers(4), int(rng.integers(2, 12))
        if kind == 0:
            draw.rectangle(box, fill=c)
        elif kind == 1:
            draw.ellipse(box, fill=c)
        elif kind == 2:
            draw.line(box, fill=c, width=width)
        else:
            draw.rectangle(box, outline=c, width=width)
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 3.0)))


def _skin_layer(d: dict, rng: np.random.Generator) -> Image.Image:
    """Shaded, textured skin for the face outline: radial falloff, side light, coarser with age."""
    size = (W, H + PAD)
    shape = Image.new("L", size, 0)
    ImageDraw.Draw(shape).polygon(face_outline(d), fill=255)
    yy, xx = np.mgrid[0:size[1], 0:size[0]].astype(np.float32)
    u, v = (xx - d["cx"]) / d["rx"], (yy - d["cy"]) / d["ry"]
    shade = 1.04 - 0.22 * np.clip(u * u + v * v, 0, 1.3) ** 1.5 + 0.09 * d["light"] * u
    rgb = d["skin"] * shade[..., None] + _smooth_noise(rng, size, 8, 1) * (2 + 5 * d["a"])
    alpha = np.asarray(shape.filter(ImageFilter.GaussianBlur(1.2)))
    return Image.fromarray(np.dstack([np.uint8(np.clip(rgb, 0, 255)), alpha]), "RGBA")


def _draw_hair_back(draw: ImageDraw.ImageDraw, d: dict) -> None:
    cx, cy, rx, ry = d["cx"], d["cy"], d["rx"], d["ry"]
    draw.ellipse([cx - 1.12 * rx, cy - 1.2 * ry, cx + 1.12 * rx, cy + 0.5 * ry], fill=col(d["hair"]))
    if d["hair_len"] > 0.3:  # long hair falls behind the neck, towards or past the shoulders
        w, bottom = rx * (1.1 + 0.25 * d["hair_len"]), cy + ry * (0.2 + 2.0 * d["hair_len"])
        draw.rounded_rectangle([cx - w, cy - 0.4 * ry, cx + w, bottom], radius=int(rx * 0.5), fill=col(d["hair"]))


def _draw_body(draw: ImageDraw.ImageDraw, d: dict) -> None:
    """Shoulders in the person's clothes, neck with the chin's shadow, ears."""
    cx, cy, rx, ry, skin = d["cx"], d["cy"], d["rx"], d["ry"], d["skin"]
    chin, sw, nw = cy + ry, rx * d["shoulders"], rx * 0.5
    top = chin + d["neck"]
    draw.ellipse([cx - sw, top, cx + sw, top + 1.4 * ry], fill=col(d["cloth"]))
    draw.rectangle([cx - sw, top + 0.7 * ry, cx + sw, H + PAD], fill=col(d["cloth"]))
    draw.rectangle([cx - nw, cy + 0.3 * ry, cx + nw, top + 0.25 * ry], fill=col(skin, 0.9))
    draw.polygon([(cx - nw, top), (cx + nw, top), (cx, top + 0.55 * ry)], fill=col(skin, 0.86))
    draw.ellipse([cx - nw, chin - 0.1 * ry, cx + nw, chin + 0.22 * ry], fill=col(skin, 0.72))
    for s in (-1, 1):
        oval(draw, cx + s * rx * 0.97, cy - 0.01 * ry, 0.17 * rx, 0.21 * ry, fill=col(skin, 0.88))


def _draw_hair_front(draw: ImageDraw.ImageDraw, d: dict, rng: np.random.Generator) -> None:
    """Hair over the forehead and temples; greying shows as grey strands as well as a paler colour."""
    cx, cy, rx, ry, hair = d["cx"], d["cy"], d["rx"], d["ry"], col(d["hair"])
    hl, top = cy - ry * d["hairline"], cy - 1.16 * ry
    draw.chord([cx - 1.06 * rx, top, cx + 1.06 * rx, 2 * hl - top], 180, 360, fill=hair)
    for s in (-1, 1):  # temples
        draw.polygon([(cx + s * 1.02 * rx, hl - 0.1 * ry), (cx + s * 0.78 * rx, hl),
                      (cx + s * 0.93 * rx, cy - 0.22 * ry), (cx + s * 1.05 * rx, cy - 0.1 * ry)], fill=hair)
    if d["bangs"]:
        tips = [(cx + x * rx, cy - ry * rng.uniform(0.32, 0.45)) for x in np.linspace(-0.8, 0.8, 6)]
        draw.polygon([(cx - 0.95 * rx, hl)] + tips + [(cx + 0.95 * rx, hl)], fill=hair)
    for _ in range(int(40 + 40 * d["grey"])):
        x0, y0 = cx + rng.uniform(-1, 1) * rx, top + rng.uniform(0.05, 0.35) * ry
        c = (200, 200, 198) if rng.random() < d["grey"] else col(d["hair"], rng.uniform(0.6, 1.4))
        draw.line([x0, y0, x0 + rng.normal(0, 8), y0 + rng.uniform(6, 22)], fill=c, width=1)


def _draw_eyes(draw: ImageDraw.ImageDraw, d: dict) -> None:
    """Brows (thicker for men, on average), eyes with whites, iris, pupil and lids; bags; glasses."""
    cx, cy, rx, ry = d["cx"], d["cy"], d["rx"], d["ry"]
    ey, ew, eh, ir = cy - 0.12 * ry, 0.2 * rx * d["eye"], 0.085 * ry * d["eye"], 0.08 * ry * d["eye"]
    bag = col(d["skin"], 0.8 - 0.12 * d["wrinkle"])
    for s in (-1, 1):
        ex = cx + s * 0.38 * rx
        brow = [(ex - s * 0.28 * rx, ey - 0.2 * ry), (ex, ey - 0.26 * ry), (ex + s * 0.28 * rx, ey - 0.21 * ry)]
        draw.line(brow, fill=col(d["hair"], 0.8), width=max(1, int(d["brow"])), joint="curve")
        oval(draw, ex, ey, ew, eh, fill=(238, 234, 230), outline=(70, 50, 45), width=2)
        oval(draw, ex, ey, ir, ir, fill=(62, 42, 30))
        oval(draw, ex, ey, ir / 2, ir / 2, fill=(10, 8, 8))
        oval(draw, ex + ir * 0.35, ey - ir * 0.4, ir * 0.18, ir * 0.18, fill=(250, 250, 250))
        lid = [ex - ew * 1.05, ey - eh * 1.6, ex + ew * 1.05, ey + eh * 1.2]
        draw.arc(lid, 200, 340, fill=(50, 35, 30), width=2)
        draw.arc([ex - ew, ey - eh * 0.2, ex + ew, ey + eh * (1.8 + d["a"])], 20, 160, fill=bag,
                 width=1 + int(2 * d["wrinkle"]))
        for k in range(int(3 * d["wrinkle"])):  # crow's feet
            x0 = ex + s * (ew + 3)
            draw.line([x0, ey + (k - 1) * 4, x0 + s * 0.12 * rx, ey + (k - 1) * 7], fill=bag, width=1)
        if d["glasses"]:
            oval(draw, ex, ey, 0.27 * rx, 0.16 * ry, outline=(30, 30, 30), width=3)
    if d["glasses"]:
        draw.line([cx - 0.11 * rx, ey, cx + 0.11 * rx, ey], fill=(30, 30, 30), width=3)


def _draw_lower_face(draw: ImageDraw.ImageDraw, d: dict, rng: np.random.Generator) -> None:
    """Nose shading and nostrils, lips (redder for women, on average), age lines, stubble."""
    cx, cy, rx, ry, skin, wr = d["cx"], d["cy"], d["rx"], d["ry"], d["skin"], d["wrinkle"]
    ny, my, mw = cy + 0.28 * ry, cy + 0.53 * ry, 0.26 * rx
    side = [(cx - 0.03 * rx, cy - 0.07 * ry), (cx - 0.13 * rx, ny), (cx - 0.05 * rx, ny)]
    draw.polygon(side, fill=col(skin, 0.86 - 0.05 * d["light"]))
    oval(draw, cx, ny - 0.025 * ry, 0.08 * rx, 0.045 * ry, fill=col(skin, 1.07))
    for s in (-1, 1):
        oval(draw, cx + s * 0.1 * rx, ny + 2, 4, 2, fill=col(skin, 0.45))
    lip = (np.array([175, 95, 95]) * (1 - d["lip"]) + np.array([200, 40, 60]) * d["lip"]) * 0.6 + skin * 0.4
    draw.polygon([(cx - mw, my), (cx - mw * 0.4, my - 0.07 * ry), (cx, my - 0.045 * ry),
                  (cx + mw * 0.4, my - 0.07 * ry), (cx + mw, my)], fill=col(lip, 0.85))
    draw.chord([cx - mw * 0.85, my - 0.06 * ry, cx + mw * 0.85, my + 0.1 * ry], 0, 180, fill=col(lip))
    draw.line([cx - mw, my, cx + mw, my], fill=col(lip, 0.45), width=2)
    line = col(skin, 0.78 - 0.1 * wr)
    for k in range(int(4 * wr)):  # forehead lines
        y = cy - ry * d["hairline"] + (k + 1.5) * 0.075 * ry
        draw.arc([cx - 0.5 * rx, y, cx + 0.5 * rx, y + 0.12 * ry], 200, 340, fill=line, width=1 + int(wr > 0.7))
    if wr > 0.25:  # nasolabial folds and jowls deepen with age
        for s in (-1, 1):
            draw.line([(cx + s * 0.16 * rx, ny), (cx + s * (mw + 0.08 * rx), my + 0.08 * ry)], fill=line,
                      width=1 + int(2 * wr))
            jx = cx + s * 0.55 * rx
            draw.arc([jx - 0.2 * rx, my, jx + 0.2 * rx, my + 0.35 * ry], 60 - 30 * (s > 0), 150 - 30 * (s > 0),
                     fill=line, width=2)
    for _ in range(int(d["stubble"] * 250)):
        y = cy + rng.uniform(0.35, 0.98) * ry
        if abs(y - my) > 0.08 * ry:
            draw.point((cx + rng.uniform(-0.9, 0.9) * half_width(d, y), y), fill=col(d["hair"], 1.2))


# Top and bottom of the mask in face half-heights below the face centre, per placement.
# ---------------------------------------------------------------- photos

def person_layer(d: dict, rng: np.random.Generator) -> Image.Image:
    # Transparent pixels carry the clothing colour so resampled edges do not turn dark.
    layer = Image.new("RGBA", (W, H + PAD), col(d["cloth"], alpha=0))
    draw = ImageDraw.Draw(layer)
    _draw_hair_back(draw, d)
    _draw_body(draw, d)
    layer.alpha_composite(_skin_layer(d, rng))
    draw = ImageDraw.Draw(layer)  # alpha_composite swapped the image core: the old draw is stale
    _draw_hair_front(draw, d, rng)
    _draw_eyes(draw, d)
    _draw_lower_face(draw, d, rng)
    return layer


def _pose(layer: Image.Image, d: dict, rng: np.random.Generator) -> Image.Image:
    """Small rotation / scale / shift about the face centre (inverse affine for PIL)."""
    th, s = np.deg2rad(rng.normal(0, 4)), float(np.exp(rng.normal(0, 0.04)))
    tx, ty = rng.normal(0, 7, 2)
    c, sn = np.cos(th) / s, np.sin(th) / s
    px, py = d["cx"] + tx, d["cy"] + ty
    coeffs = (c, sn, d["cx"] - c * px - sn * py, -sn, c, d["cy"] + sn * px - c * py)
    return layer.transform((W, H), Image.Transform.AFFINE, coeffs, resample=Image.BILINEAR)


def photo(d: dict, base: Image.Image, bg: Image.Image, noise: np.ndarray, stem: str,
           rng: np.random.Generator) -> Image.Image:
    layer = base.copy()
    if stem != "normal":
        idx = int(stem[-1]) - 1 if stem.startswith("mask") else 0  # incorrect: the person's usual mask
        spec = d["masks"][idx] or d["masks"][0]
        draw_mask(layer, d, spec, "wear" if stem.startswith("mask") else d["wrong"], rng)
    ox, oy = rng.integers(0, 25, 2)
    img = bg.crop((int(ox), int(oy), int(ox) + W, int(oy) + H))
    posed = _pose(layer, d, rng)
    img.paste(posed, (0, 0), posed)
    img = img.filter(ImageFilter.BoxBlur(rng.uniform(0.3, 1.2)))
    arr = np.asarray(img, np.float32)
    ang = rng.uniform(0, 2 * np.pi)  # uneven light across the frame
    yy, xx = np.ogrid[-1:1:complex(0, H), -1:1:complex(0, W)]
    gain = rng.normal(1.0, 0.08) * (1 + 0.12 * rng.random() * (np.cos(ang) * xx + np.sin(ang) * yy))
    arr = arr * gain[..., None].astype(np.float32) * rng.normal(1, 0.03, 3).astype(np.float32)
    nx, ny = rng.integers(0, 33, 2)  # sensor noise: one buffer per person, cut at a random offset
    arr += noise[ny:ny + H, nx:nx + W] * np.float32(rng.uniform(1, 6))
    return Image.fromarray(np.uint8(np.clip(arr, 0, 255)))
