"""albumentations pipelines by name, applied to cached face crops."""

from __future__ import annotations

import os
from typing import Callable

# albumentations looks for a newer release online at import; offline machines would wait on it
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402


def _none() -> list:
    return []


def _light() -> list:
    return [
        A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
        A.Affine(scale=(0.95, 1.05), translate_percent=(-0.04, 0.04), rotate=(-8, 8), p=0.5),
    ]


def _strong() -> list:
    return [
        A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.7),
        A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=20, val_shift_limit=10, p=0.4),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.08, 0.08), rotate=(-15, 15), p=0.7),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=5)], p=0.3),
        A.GaussNoise(std_range=(0.02, 0.08), p=0.3),
        A.CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.08, 0.2), hole_width_range=(0.08, 0.2), p=0.4),
    ]


PRESETS: dict[str, Callable[[], list]] = {"none": _none, "light": _light, "strong": _strong}


def preset(name: str) -> Callable[[], list]:
    """Look up an augmentation preset by name."""
    if name not in PRESETS:
        raise ValueError(f"unknown augment '{name}'; choose from {sorted(PRESETS)}")
    return PRESETS[name]


def build(name: str, *, size: int, train: bool, seed: int | None = None) -> A.Compose:
    """Augment (train only) and resize to ``size``: a uint8 CHW tensor.

    Samples stay uint8 until a whole batch is on the training device, where
    :class:`maskclf.engine.Normalizer` normalises it in one vectorised step: a quarter of the
    bytes through DataLoader workers and host-to-GPU copies, and no per-sample float work.
    """
    augs = preset(name)() if train else []
    return A.Compose([*augs, A.Resize(size, size), ToTensorV2()], seed=seed)
