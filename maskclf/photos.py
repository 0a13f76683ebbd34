"""Photos that arrive as bytes (a service's requests, a registered model's input): checked and decoded the way the
crop cache reads image files, with limits on size, and every bad photo of a request named at once.

A photo is JPEG or PNG bytes, or the same bytes base64-encoded (how JSON carries them: MLflow's convention for
binary data). A path is never opened here: :func:`decode_all` opens files only when its caller says the inputs are
paths (offline batch prediction from Python).
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from maskclf.errors import InputError

FORMATS = ("JPEG", "PNG")
MAX_BYTES = 10 * 2**20  # one photo's bytes; the competition's photos are ~60 kB
MAX_PIXELS = 25_000_000  # width x height of one photo, checked before it is decoded
_URL_SAFE = str.maketrans("-_", "+/")  # the URL-safe alphabet read as the standard one


def from_base64(text: str) -> bytes:
    """The bytes of a base64 string (standard or URL-safe alphabet, padded or not); ValueError if it is not one."""
    raw = "".join(text.split())
    if not raw:
        raise ValueError("empty")
    try:
        return base64.b64decode(raw.translate(_URL_SAFE) + "=" * (-len(raw) % 4), validate=True)
    except ValueError:  # binascii.Error, or a character outside ASCII
        raise ValueError("not base64 (a photo is sent as its JPEG or PNG bytes, base64-encoded)") from None


def decode(data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """JPEG or PNG bytes as an HxWx3 uint8 RGB array, upright (EXIF rotation applied, as the crop cache does);
    ValueError saying what is wrong with them."""
    if not data:
        raise ValueError("empty")
    if len(data) > max_bytes:
        raise ValueError(f"{len(data):,} bytes, over the limit of {max_bytes:,}")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in FORMATS:
                raise ValueError(f"a {im.format} image; send JPEG or PNG")
            w, h = im.size
            if w * h > max_pixels:
                raise ValueError(f"{w}x{h} pixels, over the limit of {max_pixels:,}")
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise ValueError("not a JPEG or PNG image") from None
    except OSError as e:  # a truncated or corrupt file of a known format
        raise ValueError(f"a broken image ({str(e).splitlines()[0][:80]})") from None


def as_list(model_input: Any) -> list:
    """A model's input as a plain list: a list, a numpy array or a one-column pandas DataFrame / Series."""
    if hasattr(model_input, "columns"):  # a DataFrame: its one column
        if len(model_input.columns) != 1:
            raise InputError(f"expected one column of photos, got {len(model_input.columns)} columns")
        model_input = model_input.iloc[:, 0]
    if hasattr(model_input, "tolist"):
        model_input = model_input.tolist()
    if isinstance(model_input, (str, bytes)):
        model_input = [model_input]
    return list(model_input)


def decode_all(items: Iterable[Any], *, paths: bool = False, max_bytes: int = MAX_BYTES,
               max_pixels: int = MAX_PIXELS) -> list[np.ndarray]:
    """Every photo of a request as an RGB array. A photo is bytes or a base64 string; with ``paths`` a string is
    an image file's path instead. InputError names every bad photo (``photo 2: not a JPEG or PNG image``)."""
    images, problems = [], []
    for i, item in enumerate(items, 1):
        try:
            if isinstance(item, (bytes, bytearray, memoryview)):
                data = bytes(item)
            elif isinstance(item, str) and paths:
                data = _read(item, max_bytes)
            elif isinstance(item, str):
                data = from_base64(item)
            else:
                raise ValueError(f"a value of type {type(item).__name__}, not a photo's bytes or base64 string")
            images.append(decode(data, max_bytes=max_bytes, max_pixels=max_pixels))
        except ValueError as e:
            problems.append(f"photo {i}: {_PATH_HINT if _path_like(item, paths) else e}")
    if problems:
        raise InputError(problems)
    return images


_PATH_HINT = "a file path? the model opens no file it is sent: send the photo's bytes, base64-encoded"


def _path_like(item: Any, paths: bool) -> bool:
    """A string that failed to decode and reads as a file's path (base64 JPEG and PNG start /9j/ and iVBOR)."""
    if paths or not isinstance(item, str) or len(item) > 1024 or item.startswith(("/9j/", "iVBOR")):
        return False
    return bool(re.match(r"\s*(~|\.{1,2}[/\\]|[A-Za-z]:[/\\]|/)", item)
                or re.search(r"\.(jpe?g|png|gif|bmp|webp|tiff?)\s*$", item, re.I))


def _read(path: str, max_bytes: int) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"no such file: {path}")
    if p.stat().st_size > max_bytes:
        raise ValueError(f"{path}: {p.stat().st_size:,} bytes, over the limit of {max_bytes:,}")
    return p.read_bytes()
