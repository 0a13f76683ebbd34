"""The inputs of training and evaluation: face crops -> a DataLoader's uint8 batches -> the backbone's
normalised float batches on the training device (augmented there when ``train.augment_on`` says so)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from maskclf import model as model_mod
from maskclf.samples import Samples


class CropDataset(Dataset):
    """(crop, label), or (crop, label, soft target) when ``soft`` is given; ``flip``: each crop mirrored left-right
    (test-time augmentation), one at a time, never a mirrored copy of them all."""

    def __init__(self, images, labels: np.ndarray, transform, soft: np.ndarray | None = None, flip: bool = False):
        self.images, self.labels, self.transform, self.soft, self.flip = images, labels, transform, soft, flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        crop = np.asarray(self.images[i])
        if self.flip:
            crop = np.ascontiguousarray(crop[:, ::-1])
        x = self.transform(image=crop)["image"]
        if self.soft is None:
            return x, int(self.labels[i])
        return x, int(self.labels[i]), torch.from_numpy(np.asarray(self.soft[i], dtype=np.float32))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' asked for, but torch sees no CUDA GPU")
    return torch.device(name)


def augment_on(t, device: torch.device) -> str:
    """Where ``t`` (a train config) augments: ``loader`` or ``device`` (``auto``: the device when it is a GPU)."""
    if t.augment_on == "auto":
        return "device" if device.type == "cuda" else "loader"
    return t.augment_on


def make_loader(samples: Samples, tf, batch_size: int, workers: int = 0, sampler=None,
                shuffle: bool = False, flip: bool = False) -> DataLoader:
    """The DataLoader that training and evaluation use over face crops (an array or rows of a shared one)."""
    return DataLoader(
        CropDataset(samples.images, samples.labels, tf, samples.soft, flip),
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        drop_last=False,
    )


class Normalizer:
    """uint8 CHW batches from the loader -> the backbone's normalised float input, on ``device`` (augmented and
    resized there first when given ``augment``, a :class:`maskclf.batch_augment.BatchAugment`)."""

    def __init__(self, net: model_mod.MaskNet, device: torch.device, channels_last: bool = False, augment=None):
        mean, std = model_mod.normalization(net)
        self.device, self.channels_last, self.augment = device, channels_last, augment
        self.scale = (1 / (255 * torch.tensor(std))).view(1, -1, 1, 1).to(device)
        self.shift = (-torch.tensor(mean) / torch.tensor(std)).view(1, -1, 1, 1).to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:  # a float batch would be normalised twice, silently
            raise TypeError(f"Normalizer takes the loader's uint8 batches, got {x.dtype}")
        x = x.to(self.device, non_blocking=True)
        x = x.float() if self.augment is None else self.augment(x)
        x = torch.addcmul(self.shift, x, self.scale)  # (x / 255 - mean) / std as one multiply-add
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
