"""The presets on the training device (maskclf.batch_augment) against the same presets in the loader (albumentations),
on real photos: the same shapes and dtypes into the network, and the same statistics."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2

from maskclf import batch_augment, engine, inputs, model, transforms
from maskclf.samples import Samples
from tests.test_engine import _cfg, _easy_samples

skimage_data = pytest.importorskip("skimage.data")

CROP, SIZE = 96, 80  # a crop cache's side and train.image_size below it, as 256 -> 224


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """256 square crops of scikit-image's bundled colour photos (people, a cat, coffee, a rocket, ...)."""
    import cv2

    photos = [skimage_data.astronaut(), skimage_data.chelsea(), skimage_data.coffee(), skimage_data.rocket(),
              skimage_data.immunohistochemistry(), skimage_data.retina()]
    rng = np.random.default_rng(0)
    out = []
    for k in range(256):
        im = photos[k % len(photos)]
        side = int(min(im.shape[:2]) * rng.uniform(0.4, 0.9))
        y, x = rng.integers(0, im.shape[0] - side + 1), rng.integers(0, im.shape[1] - side + 1)
        out.append(cv2.resize(np.ascontiguousarray(im[y:y + side, x:x + side, :3]), (CROP, CROP),
                              interpolation=cv2.INTER_AREA))
    return np.stack(out)


def _stats(x: torch.Tensor) -> dict[str, float]:
    x = x.float()
    return {"mean": x.mean().item(), "std": x.std().item(), "per-image std": x.std((2, 3)).mean().item(),
            "zeros": (x.sum(1) == 0).float().mean().item(),
            "gradient": (x[..., 1:] - x[..., :-1]).abs().mean().item(),
            "left - right": (x[..., : x.shape[-1] // 2].mean() - x[..., x.shape[-1] // 2:].mean()).item()}


def _loader_path(ops, images: np.ndarray, seed: int = 1) -> torch.Tensor:
    tf = A.Compose([*(transforms.albumentation(op, kw) for op, kw in ops), A.Resize(SIZE, SIZE), ToTensorV2()],
                   seed=seed)
    return torch.stack([tf(image=im)["image"] for im in images])


def _device_path(ops, images: np.ndarray, seed: int = 1, monkeypatch=None) -> torch.Tensor:
    monkeypatch.setitem(transforms.PRESETS, "_test", ops)
    return batch_augment.BatchAugment("_test", SIZE, "cpu", seed=seed)(torch.from_numpy(images).permute(0, 3, 1, 2))


def _assert_close(loader: dict, device: dict, what: str) -> None:
    for k in loader:
        # a share of pixels and a difference near 0 absolutely (gray levels), the others relatively
        tol = {"zeros": 0.01, "left - right": 1.5}.get(k, (0.12 if k == "colour shift" else 0.06) * loader[k] + 0.1)
        assert abs(loader[k] - device[k]) <= tol, \
            f"{what}: {k} {loader[k]:.3f} on the loader, {device[k]:.3f} on the device"


@pytest.mark.parametrize("name", sorted(transforms.PRESETS))
def test_each_preset_feeds_the_network_the_same_shapes_dtype_and_statistics_on_either_path(name, crops):
    net = model.create("resnet10t", pretrained=False)
    cpu = torch.device("cpu")
    loader_dl = inputs.make_loader(Samples(crops, np.zeros(len(crops), np.int64)),
                                   transforms.build(name, size=SIZE, train=True, seed=1), batch_size=64)
    device_dl = inputs.make_loader(Samples(crops, np.zeros(len(crops), np.int64)), transforms.as_is(), batch_size=64)
    plain = inputs.Normalizer(net, cpu)
    augmented = inputs.Normalizer(net, cpu, augment=batch_augment.BatchAugment(name, SIZE, cpu, seed=1))
    via_loader = torch.cat([plain(x) for x, _ in loader_dl])
    via_device = torch.cat([augmented(x) for x, _ in device_dl])
    assert via_device.shape == via_loader.shape == (len(crops), 3, SIZE, SIZE)
    assert via_device.dtype == via_loader.dtype == torch.float32
    loader, device = ((x - plain.shift) / plain.scale for x in (via_loader, via_device))  # back to 0..255
    # which half is brighter depends on which images a coin flip mirrored: compared with each operation alone below
    _assert_close(*({k: v for k, v in _stats(x).items() if k != "left - right"} for x in (loader, device)), name)
    if name == "none":  # only the resize: the same pixels, up to cv2's fixed-point rounding
        assert (loader - device).abs().max().item() < 2


@pytest.mark.parametrize("op", [op for op, _ in transforms.PRESETS["strong"]])
def test_each_operation_alone_keeps_the_statistics_of_its_albumentations_counterpart(op, crops, monkeypatch):
    """Every operation applied to every image (p = 1), so a wrong scale or range cannot hide behind its
    probability."""
    kw = {**dict(transforms.PRESETS["strong"])[op], "p": 1.0}
    plain = _loader_path([], crops).float()
    untouched = _stats(plain)

    def stats(x):  # and how far each image's colour moved (its channels' means), which a hue shift changes
        return {**_stats(x), "colour shift": (x.float().mean((2, 3)) - plain.mean((2, 3))).abs().mean().item()}

    loader = stats(_loader_path([(op, kw)], crops))
    device = stats(_device_path([(op, kw)], crops, monkeypatch=monkeypatch))
    _assert_close(loader, device, op)
    # and each one does something: at least one statistic moves well away from the plain resize
    assert loader["colour shift"] > 1 or any(abs(loader[k] - untouched[k]) > max(0.02 * abs(untouched[k]), 0.01)
                                             for k in untouched), \
        (op, loader, untouched)


def test_draws_follow_the_seed_and_each_image_draws_its_own(crops):
    batch = torch.from_numpy(crops[:32]).permute(0, 3, 1, 2)
    a = batch_augment.BatchAugment("strong", SIZE, seed=3)(batch)
    b = batch_augment.BatchAugment("strong", SIZE, seed=3)(batch)
    c = batch_augment.BatchAugment("strong", SIZE, seed=4)(batch)
    assert torch.equal(a, b) and not torch.equal(a, c)
    same = torch.from_numpy(np.repeat(crops[:1], 16, 0)).permute(0, 3, 1, 2)  # one photo sixteen times
    out = batch_augment.BatchAugment("strong", SIZE, seed=0)(same)
    assert len({tuple(o.flatten()[::97].tolist()) for o in out}) >= 12
    assert out.min() >= 0 and out.max() <= 255


def test_a_batch_that_is_not_nchw_rgb_is_refused():
    with pytest.raises(ValueError, match="NCHW batches of RGB"):
        batch_augment.BatchAugment("light", 16)(torch.zeros(4, 16, 16, 3, dtype=torch.uint8))


@pytest.mark.parametrize("where", ["loader", "device"])
def test_a_short_fit_learns_with_the_augmentation_on_either_path(tmp_path, where):
    cfg = _cfg(tmp_path, **{"train.augment": "light", "train.augment_on": where, "train.epochs": 5})
    tr = engine.setup(cfg, _easy_samples(size=20), _easy_samples(size=20))
    assert (tr.to_train_input.augment is not None) == (where == "device")
    assert tr.to_input.augment is None  # evaluation batches are never augmented
    res = engine.fit(cfg, _easy_samples(size=20), _easy_samples(size=20), out_dir=tmp_path / where)
    assert res["val_f1"] > 0.5  # chance is 1/18


def test_auto_augments_on_the_device_only_when_it_is_a_gpu(tmp_path):
    t = _cfg(tmp_path).train
    assert t.augment_on == "auto"
    assert inputs.augment_on(t, torch.device("cpu")) == "loader"
    assert inputs.augment_on(t, torch.device("cuda")) == "device"
