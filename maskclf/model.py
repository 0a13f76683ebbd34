"""timm backbones by name, with a joint 18-way head or mask / gender / age heads."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from maskclf import tasks
from maskclf.vocab import HEADS, backbone_problem


class MaskNet(nn.Module):
    """Backbone features -> the logits of the model's task (18 for ``all``, 3 / 2 / 3 for mask / gender / age).

    For ``all``, the multitask head predicts mask (3), gender (2) and age (3) separately and returns
    ``log p(mask) + log p(gender) + log p(age)`` for each of the 18 combinations, so every
    loss and metric works on 18 outputs either way (cross-entropy on them is exactly the
    sum of the three tasks' cross-entropies). A task model has one head of its own classes.
    """

    def __init__(self, backbone: nn.Module, head: str, drop_rate: float = 0.0, task: str = "all"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head '{head}'; choose from {list(HEADS)}")
        self.backbone = backbone
        self.task = task
        self.num_classes = tasks.num_classes(task)
        self.head_kind = head if task == "all" else "joint"
        self.dropout = nn.Dropout(drop_rate)
        # pre-logits width: larger than num_features where timm keeps a head conv (MobileNetV3, VGG)
        width = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        self.head = nn.Linear(width, self.num_classes if self.head_kind == "joint" else 3 + 2 + 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.dropout(self.backbone(x)))
        if self.head_kind == "joint":
            return out
        m, g, a = out.float().split((3, 2, 3), dim=1)
        m, g, a = m.log_softmax(1), g.log_softmax(1), a.log_softmax(1)
        # label = mask * 6 + gender * 3 + age -> broadcast to (N, 3, 2, 3) then flatten in that order
        return (m[:, :, None, None] + g[:, None, :, None] + a[:, None, None, :]).flatten(1)


def create(
    backbone: str,
    *,
    head: str = "joint",
    task: str = "all",
    pretrained: bool = False,
    pretrained_file: str | Path = "",
    pretrained_source: str = "hub",
    drop_rate: float = 0.0,
    image_size: int | None = None,
) -> MaskNet:
    """Build a :class:`MaskNet`; ``pretrained_file`` loads local weights (no internet needed).

    With ``pretrained`` the weights come from timm's hub (``pretrained_source="hub"``) or, with
    ``"offline"``, from an installed weights package (:mod:`maskclf.weights`).

    ``image_size`` matters only for backbones with a fixed input size (ViTs), which are
    built for it (timm resamples pretrained position embeddings).
    """
    problem = backbone_problem(backbone)
    if problem:
        raise ValueError(problem)
    kwargs = {}
    pcfg = timm.models.get_pretrained_cfg(backbone)
    if image_size and pcfg is not None and pcfg.fixed_input_size:
        kwargs["img_size"] = image_size
    if pretrained and pretrained_source == "offline" and not pretrained_file:
        from maskclf import weights

        pretrained_file = weights.offline_file(backbone)
    elif pretrained_source not in ("hub", "offline"):
        raise ValueError(f"unknown pretrained_source '{pretrained_source}'; choose from ['hub', 'offline']")
    if pretrained_file:
        pretrained = True
        kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_file)}
    net = timm.create_model(backbone, pretrained=pretrained, num_classes=0, **kwargs)
    return MaskNet(net, head, drop_rate, task)


def normalization(net: MaskNet) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The backbone's own mean and std (ImageNet's for most timm models)."""
    cfg = timm.data.resolve_model_data_config(net.backbone)
    return tuple(cfg["mean"]), tuple(cfg["std"])
