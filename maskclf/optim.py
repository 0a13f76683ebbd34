"""Optimizers, learning-rate schedules and what fine-tuning changes about them: a gentler learning rate
for the pretrained backbone than for the new head, and epochs that train the head alone.

The names a config may choose (``train.optimizer``, ``train.scheduler``) are the ones these build.
"""

from __future__ import annotations

import timm.optim
import timm.scheduler
import torch

from maskclf import model as model_mod
from maskclf.vocab import SCHEDULERS


class Plateau:
    """Reduce the lr when val F1 stalls, with its counters saved in checkpoints.

    (timm's plateau scheduler is deprecated and keeps no state across a resume.)
    """

    def __init__(self, opt: torch.optim.Optimizer, patience: int, factor: float, min_lr: float):
        self.inner = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=factor,
                                                                patience=patience, min_lr=min_lr)

    def step_update(self, num_updates: int) -> None:
        pass

    def step(self, epoch: int, metric: float) -> None:
        self.inner.step(metric)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


def scheduler(opt: torch.optim.Optimizer, t, updates_per_epoch: int):
    if t.scheduler == "none":
        return None
    if t.scheduler == "plateau":
        return Plateau(opt, t.decay_epochs, t.decay_rate, t.min_lr)
    if t.scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler '{t.scheduler}'; choose from {list(SCHEDULERS)}")
    third = max(1, t.epochs // 3)
    sched, _ = timm.scheduler.create_scheduler_v2(
        opt,
        sched=t.scheduler,
        num_epochs=t.epochs,
        decay_epochs=t.decay_epochs,
        decay_milestones=[third, 2 * third],
        decay_rate=t.decay_rate,
        min_lr=t.min_lr,
        warmup_lr=t.lr * 0.01,
        warmup_epochs=t.warmup_epochs,
        step_on_epochs=False,  # warm up and decay smoothly per batch, not in epoch-sized jumps
        updates_per_epoch=updates_per_epoch,
    )
    return sched


def param_groups(net: model_mod.MaskNet, weight_decay: float, backbone_lr_scale: float = 1.0) -> list[dict]:
    """Optimizer groups: the head first (its lr is the configured one, which ``lr`` metrics report), then
    the backbone at ``backbone_lr_scale`` of it; no weight decay on biases and norm layers (1-d tensors).

    The scale is timm's ``lr_scale`` group key, which timm's schedulers apply on every update.
    """
    groups = []
    for part, scale in ((net.head, 1.0), (net.backbone, backbone_lr_scale)):
        for g in timm.optim.param_groups_weight_decay(part, weight_decay):
            if g["params"]:
                groups.append({**g, "lr_scale": scale})
    return groups


def scale_lrs(opt: torch.optim.Optimizer) -> None:
    """Apply each group's ``lr_scale`` once, for the schedules that are not timm's (none, plateau)."""
    for g in opt.param_groups:
        g["lr"] *= g.get("lr_scale", 1.0)


def freeze(net: model_mod.MaskNet, frozen: bool) -> None:
    """Train the head alone: no gradients into the backbone, and its BN statistics kept as pretrained."""
    for p in net.backbone.parameters():
        p.requires_grad_(not frozen)
    if frozen:
        net.backbone.eval()
