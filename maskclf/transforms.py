"""The albumentations pipelines for cached face crops, built from the augmentation presets
(:data:`maskclf.vocab.PRESETS`)."""

from __future__ import annotations

import os

# albumentations looks for a newer release online at import; offline machines would wait on it
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

from maskclf.vocab import PRESETS, Ops  # noqa: E402, F401  (transforms.PRESETS: the same presets)


def albumentation(op: str, kw: dict) -> A.BasicTransform:
    """One preset operation as an albumentations transform."""
    p = kw["p"]
    if op == "flip":
        return A.HorizontalFlip(p=p)
    if op == "brightness_contrast":
        return A.RandomBrightnessContrast(brightness_limit=kw["brightness"], contrast_limit=kw["contrast"], p=p)
    if op == "hsv":
        return A.HueSaturationValue(hue_shift_limit=kw["hue"], sat_shift_limit=kw["sat"], val_shift_limit=kw["val"],
                                    p=p)
    if op == "affine":
        t = kw["translate"]
        return A.Affine(scale=kw["scale"], translate_percent=(-t, t), rotate=(-kw["rotate"], kw["rotate"]), p=p)
    if op == "blur":
        return A.OneOf([A.GaussianBlur(blur_limit=kw["kernel"]), A.MotionBlur(blur_limit=kw["kernel"])], p=p)
    if op == "noise":
        return A.GaussNoise(std_range=kw["std"], p=p)
    if op == "dropout":
        return A.CoarseDropout(num_holes_range=kw["holes"], hole_height_range=kw["size"], hole_width_range=kw["size"],
                               p=p)
    raise ValueError(f"no albumentations transform for preset operation '{op}'")


def preset(name: str) -> Ops:
    """Look up an augmentation preset by name."""
    if name not in PRESETS:
        raise ValueError(f"unknown augment '{name}'; choose from {sorted(PRESETS)}")
    return PRESETS[name]


def build(name: str, *, size: int, train: bool, seed: int | None = None) -> A.Compose:
    """Augment (train only) and resize to ``size``: a uint8 CHW tensor.

    Samples stay uint8 until a whole batch is on the training device, where
    :class:`maskclf.inputs.Normalizer` normalises it in one vectorised step: a quarter of the
    bytes through DataLoader workers and host-to-GPU copies, and no per-sample float work.
    """
    augs = [albumentation(op, kw) for op, kw in preset(name)] if train else []
    return A.Compose([*augs, A.Resize(size, size), ToTensorV2()], seed=seed)


def as_is() -> A.Compose:
    """The crop as it is, a uint8 CHW tensor: the loader's part when the batch is augmented and resized on the
    training device (:class:`maskclf.batch_augment.BatchAugment`)."""
    return A.Compose([ToTensorV2()])
