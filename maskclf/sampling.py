"""How training batches are drawn (``train.sampler``): shuffled as the data is, or class-balanced."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from maskclf.labels import NUM_CLASSES
from maskclf.vocab import SAMPLERS


def sampler(kind: str, labels: np.ndarray, seed: int) -> WeightedRandomSampler | None:
    """None (plain shuffling) or, for "weighted", each image drawn with weight 1 / its class's count."""
    if kind == "none":
        return None
    if kind != "weighted":
        raise ValueError(f"unknown sampler '{kind}'; choose from {list(SAMPLERS)}")
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    w = 1.0 / np.maximum(counts, 1)[labels]
    return WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), len(w),
                                 generator=torch.Generator().manual_seed(seed))
