"""Losses by name. Each factory takes plain keyword arguments and the training class counts."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _inverse_frequency(counts: np.ndarray) -> torch.Tensor:
    # +1 keeps a class absent from this fold finite; normalised so the mean weight is 1
    w = 1.0 / (np.asarray(counts, dtype=np.float64) + 1.0)
    return torch.tensor(w / w.mean(), dtype=torch.float32)


class FocalLoss(nn.Module):
    """Cross-entropy scaled by (1 - p_true)^gamma: easy, frequent classes weigh less."""

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = logits.float().log_softmax(1).gather(1, target[:, None]).squeeze(1)
        return (-(1 - logp.exp()) ** self.gamma * logp).mean()


class SoftF1Loss(nn.Module):
    """Cross-entropy plus (1 - soft macro F1) on the batch.

    The soft-F1 term aims at the competition metric; cross-entropy is kept because
    soft F1 alone learns slowly from a random start.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = logits.float().softmax(1)
        onehot = F.one_hot(target, logits.shape[1]).float()
        tp = (probs * onehot).sum(0)
        fp = (probs * (1 - onehot)).sum(0)
        fn = ((1 - probs) * onehot).sum(0)
        soft_f1 = 2 * tp / (2 * tp + fp + fn + 1e-7)
        present = onehot.sum(0) > 0
        return F.cross_entropy(logits.float(), target) + 1 - soft_f1[present].mean()


class Distill(nn.Module):
    """Knowledge distillation: ``alpha`` x T^2 x the cross-entropy of the student's temperature-``T`` softmax
    against the teacher's soft targets (already softened by ``T``), plus (1 - alpha) x ``hard`` on the labels."""

    def __init__(self, hard: nn.Module, temperature: float = 2.0, alpha: float = 0.7):
        super().__init__()
        self.hard, self.temperature, self.alpha = hard, temperature, alpha

    def forward(self, logits: torch.Tensor, target: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        kd = -(soft * (logits.float() / t).log_softmax(1)).sum(1).mean() * t * t
        return self.alpha * kd + (1 - self.alpha) * self.hard(logits, target)


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities at temperature T: p^(1/T), renormalised (what softmax(logits / T) gives)."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)) / temperature
    logp -= logp.max(1, keepdims=True)
    p = np.exp(logp)
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


def teacher_targets(probs: np.ndarray, labels: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """A student's soft targets from its teacher's probabilities, softened by ``temperature``: a row the teacher
    did not score (any NaN) takes its hard label (``labels``, one per row) instead. Returns the targets and which
    rows took their label."""
    probs = np.array(probs, dtype=np.float64)
    missing = np.isnan(probs).any(1)
    probs[missing] = np.eye(probs.shape[1])[np.asarray(labels)[missing]]
    return soften(probs, temperature), missing


LOSSES: dict[str, Callable[..., LossFn]] = {
    "ce": lambda counts, **kw: nn.CrossEntropyLoss(),
    "smooth": lambda counts, label_smoothing=0.1, **kw: nn.CrossEntropyLoss(label_smoothing=label_smoothing),
    "weighted": lambda counts, **kw: nn.CrossEntropyLoss(weight=_inverse_frequency(counts)),
    "focal": lambda counts, focal_gamma=2.0, **kw: FocalLoss(focal_gamma),
    "soft_f1": lambda counts, **kw: SoftF1Loss(),
}


def create(name: str, counts: np.ndarray, **kwargs) -> nn.Module:
    """Loss ``name`` for training labels with per-class ``counts`` (one per class of the model's task)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}'; choose from {sorted(LOSSES)}")
    return LOSSES[name](counts, **kwargs)
