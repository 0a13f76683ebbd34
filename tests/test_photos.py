"""Photos as bytes: decoded exactly as image files are read, with limits, every bad photo named at once."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from maskclf import photos, predict
from maskclf.errors import InputError

pytestmark = pytest.mark.unit


def _jpeg(w: int = 64, h: int = 48, fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def test_bytes_and_base64_decode_to_the_pixels_of_the_file(tmp_path):
    data = _jpeg()
    (tmp_path / "p.jpg").write_bytes(data)
    from_file = predict.read_rgb(tmp_path / "p.jpg")
    url_safe = base64.urlsafe_b64encode(data).decode().rstrip("=")
    got = photos.decode_all([data, base64.b64encode(data).decode(), url_safe, _jpeg(fmt="PNG")])
    assert all(np.array_equal(g, from_file) for g in got[:3]) and got[0].shape == (48, 64, 3)
    assert got[3].shape == (48, 64, 3)
    assert np.array_equal(photos.decode_all([str(tmp_path / "p.jpg")], paths=True)[0], from_file)


def test_every_bad_photo_is_named_and_no_path_is_opened(tmp_path):
    (tmp_path / "p.jpg").write_bytes(_jpeg())
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF")
    with pytest.raises(InputError) as e:
        photos.decode_all([str(tmp_path / "p.jpg"), "eval/0001.jpg", "", b"not an image", "not base64!",
                           base64.b64encode(gif.getvalue()).decode(), _jpeg()[:200], 7, _jpeg(300, 200)],
                          max_pixels=50_000)
    assert e.value.problems == [
        "photo 1: a file path? the model opens no file it is sent: send the photo's bytes, base64-encoded",
        "photo 2: a file path? the model opens no file it is sent: send the photo's bytes, base64-encoded",
        "photo 3: empty",
        "photo 4: not a JPEG or PNG image",
        "photo 5: not base64 (a photo is sent as its JPEG or PNG bytes, base64-encoded)",
        "photo 6: a GIF image; send JPEG or PNG",
        e.value.problems[6],
        "photo 8: a value of type int, not a photo's bytes or base64 string",
        "photo 9: 300x200 pixels, over the limit of 50,000",
    ]
    assert e.value.problems[6].startswith("photo 7: a broken image")


def test_a_photo_over_the_byte_limit_is_refused_before_it_is_decoded(tmp_path):
    data = _jpeg()
    with pytest.raises(InputError, match=rf"photo 1: {len(data):,} bytes, over the limit of 100"):
        photos.decode_all([data], max_bytes=100)
    (tmp_path / "big.jpg").write_bytes(data)
    with pytest.raises(InputError, match="over the limit of 100"):
        photos.decode_all([str(tmp_path / "big.jpg")], paths=True, max_bytes=100)
    with pytest.raises(InputError, match="photo 1: no such file"):
        photos.decode_all([str(tmp_path / "none.jpg")], paths=True)


def test_a_models_input_becomes_a_list():
    assert photos.as_list(pd.DataFrame({"photo": ["a", "b"]})) == ["a", "b"]
    assert photos.as_list(np.array(["a"])) == ["a"] and photos.as_list("a") == ["a"]
    with pytest.raises(InputError, match="one column of photos, got 2"):
        photos.as_list(pd.DataFrame({"a": [1], "b": [2]}))


def test_answers_name_the_class_and_its_probability():
    probs = np.zeros((2, 18))
    probs[0, 4], probs[0, 5], probs[1, 16] = 0.7, 0.3, 1.0
    a = predict.answers(probs)
    assert a.to_dict("list") == {"label": [4, 16], "class": ["wear/female/30-59", "not wear/female/30-59"],
                                 "probability": [0.7, 1.0]}
    assert predict.answers(np.array([[0.2, 0.8]]), "gender").to_dict("list") == \
        {"label": [1], "class": ["female"], "probability": [0.8]}
    assert predict.answers(np.zeros((0, 18))).empty
