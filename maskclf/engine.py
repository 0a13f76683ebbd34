"""A plain PyTorch training loop: ``fit(cfg, train, val, report)``.

No search framework in here. Callers turn ``report(metrics, checkpoint_dir)`` into
whatever they need (a progress line, ``ray.tune.report``, an MLflow metric); pruning
belongs to the caller's scheduler, which simply stops calling back.
"""

from __future__ import annotations

import math
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import timm.optim
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from maskclf import config as config_mod
from maskclf import batch_augment, losses, metrics, optim, sampling, tasks, transforms
from maskclf import model as model_mod
from maskclf.config import Config
from maskclf.inputs import Normalizer, augment_on, make_loader, resolve_device
from maskclf.samples import Samples

STATE_FILE = "state.pt"
Report = Callable[[dict, Path], None]


def _amp(device: torch.device, enabled: bool):
    if device.type != "cuda" or not enabled:
        return torch.autocast(device_type=device.type, enabled=False), None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast(device_type="cuda", dtype=dtype), scaler


@torch.no_grad()
def predict_probs(net: model_mod.MaskNet, loader: DataLoader, device: torch.device, amp: bool = True) -> np.ndarray:
    """Softmax probabilities (N x the model's classes) over a loader of uint8 crops, in order."""
    net.eval()
    ctx, _ = _amp(device, amp)
    to_input = Normalizer(net, device, channels_last=True)
    out = []
    for x, _ in loader:
        x = to_input(x)
        with ctx:
            out.append(net(x).float().softmax(1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, net.num_classes), np.float32)


def _save(path: Path, cfg: Config, state: dict) -> None:
    """Write a checkpoint folder atomically: a crash never leaves a half-written one."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / STATE_FILE)
    config_mod.save(cfg, tmp / "config.yaml")
    old = path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def load_state(checkpoint_dir: Path) -> dict:
    """The saved state of a checkpoint folder (raises on a missing or corrupt file)."""
    return torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=False)


def build_model(cfg: Config) -> model_mod.MaskNet:
    m = cfg.model
    return model_mod.create(
        m.backbone, head=m.head, task=m.task, pretrained=m.pretrained, pretrained_file=m.pretrained_file,
        pretrained_source=m.pretrained_source, drop_rate=m.drop_rate, image_size=cfg.train.image_size,
    )


@dataclass
class Training:
    """Everything one fit trains with: the model, its input pipeline, loss, optimizer and schedule."""

    net: model_mod.MaskNet
    to_input: Normalizer  # evaluation batches
    to_train_input: Normalizer  # training batches (augmented here when train.augment_on is device)
    train_dl: DataLoader
    val_dl: DataLoader
    criterion: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: object | None
    amp: tuple
    device: torch.device
    updates: int = 0  # optimizer steps so far: the per-update schedules step on it


def setup(cfg: Config, train: Samples, val: Samples) -> Training:
    """The model (ImageNet weights where configured), loaders, loss, optimizer and scheduler of ``cfg``."""
    t = cfg.train
    device = resolve_device(t.device)
    net = build_model(cfg).to(device)
    to_input = Normalizer(net, device, t.channels_last)
    if t.channels_last:
        net = net.to(memory_format=torch.channels_last)
    counts = np.bincount(train.labels, minlength=tasks.num_classes(cfg.model.task))
    if augment_on(t, device) == "device":
        train_tf = transforms.as_is()
        to_train_input = Normalizer(net, device, t.channels_last,
                                    batch_augment.BatchAugment(t.augment, t.image_size, device, t.seed))
    else:
        train_tf = transforms.build(t.augment, size=t.image_size, train=True, seed=t.seed)
        to_train_input = to_input
    eval_tf = transforms.build("none", size=t.image_size, train=False)
    train_dl = make_loader(train, train_tf, t.batch_size, t.num_workers,
                           sampling.sampler(t.sampler, train.labels, t.seed),
                           shuffle=True)
    val_dl = make_loader(val, eval_tf, t.batch_size * 2, t.num_workers)
    criterion = losses.create(t.loss, counts, label_smoothing=t.label_smoothing, focal_gamma=t.focal_gamma)
    if train.soft is not None:  # a student: the teacher's soft targets, mixed with the hard labels
        criterion = losses.Distill(criterion, cfg.distill.temperature, cfg.distill.alpha)
    criterion = criterion.to(device)
    opt = timm.optim.create_optimizer_v2(optim.param_groups(net, t.weight_decay, t.backbone_lr_scale), opt=t.optimizer,
                                         lr=t.lr, weight_decay=t.weight_decay, momentum=t.momentum)
    sched = optim.scheduler(opt, t, len(train_dl))
    if sched is None or isinstance(sched, optim.Plateau):
        optim.scale_lrs(opt)
    return Training(net, to_input, to_train_input, train_dl, val_dl, criterion, opt, sched, _amp(device, t.amp), device)


def _resume(tr: Training, resume: Path, log: Callable[[str], None]) -> tuple[int, list[dict]]:
    """Load a checkpoint into ``tr``; the next epoch and the history so far ((0, []) when it is unreadable)."""
    try:
        state = load_state(resume)
        tr.net.load_state_dict(state["model"])
        tr.opt.load_state_dict(state["optimizer"])
        if tr.sched is not None and state.get("scheduler"):
            tr.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start = state["epoch"] + 1
        log(f"resumed from {resume} after epoch {start}")
        return start, state["history"]
    except Exception as e:  # a corrupt or partial checkpoint must not end a long search
        warnings.warn(f"checkpoint {resume} unreadable ({type(e).__name__}: {e}); starting over")
        return 0, []


def train_one_epoch(tr: Training, epoch: int, t, progress: bool = False) -> dict:
    """One pass over the training data: ``train_loss``, images seen, seconds spent, and of them the seconds spent
    waiting for the loader's next batch (``loader_wait``)."""
    tr.net.train()
    optim.freeze(tr.net, epoch < t.freeze_epochs)
    ctx, scaler = tr.amp
    t0, seen, loss_sum, waited = time.perf_counter(), 0, 0.0, 0.0
    bar = tqdm(tr.train_dl, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False, disable=not progress)
    asked = time.perf_counter()
    for x, y, *soft in bar:
        waited += time.perf_counter() - asked  # the loader had no batch ready (loss.item() below synchronises CUDA)
        x, y = tr.to_train_input(x), y.to(tr.device, non_blocking=True)
        with ctx:
            out = tr.net(x)
            loss = tr.criterion(out, y, soft[0].to(tr.device, non_blocking=True)) if soft else tr.criterion(out, y)
        tr.opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(tr.opt)
            scaler.update()
        else:
            loss.backward()
            tr.opt.step()
        tr.updates += 1
        if tr.sched is not None:
            tr.sched.step_update(tr.updates)
        loss_sum += loss.item() * len(y)
        seen += len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
        asked = time.perf_counter()
    if not math.isfinite(loss_sum):
        raise FloatingPointError(f"training loss is {loss_sum} at epoch {epoch + 1} (lr {t.lr:g} too high?)")
    return {"train_loss": loss_sum / max(seen, 1), "seen": seen, "train_time": time.perf_counter() - t0,
            "loader_wait": waited}


def evaluate(tr: Training, val: Samples, amp: bool = True) -> dict:
    """The validation metrics (macro F1, loss, accuracies) of the model as it is now."""
    return metrics.scores(predict_probs(tr.net, tr.val_dl, tr.device, amp), val.labels, tr.net.task)


def fit(
    cfg: Config,
    train: Samples,
    val: Samples,
    report: Report | None = None,
    *,
    out_dir: str | Path,
    resume: str | Path | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Train ``cfg.train.epochs`` epochs; after each, evaluate on ``val``, checkpoint and ``report``.

    The checkpoint (weights, optimizer, scheduler, history, resolved config) is rewritten
    each epoch under ``out_dir/checkpoint``. ``resume`` continues from such a folder; an
    unreadable one is reported and training starts over. Returns the last epoch's metrics
    with ``history`` (every epoch's metrics).
    """
    t = cfg.train
    torch.manual_seed(t.seed)
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    ckpt = Path(out_dir) / "checkpoint"
    tr = setup(cfg, train, val)
    start, history = _resume(tr, Path(resume), log) if resume is not None else (0, [])
    tr.updates = start * len(tr.train_dl)
    for epoch in range(start, t.epochs):
        t0 = time.perf_counter()
        ep = train_one_epoch(tr, epoch, t, progress)
        m = {"epoch": epoch + 1, "train_loss": ep["train_loss"], **evaluate(tr, val, t.amp),
             "lr": tr.opt.param_groups[0]["lr"], "epoch_time": time.perf_counter() - t0,
             "images_per_s": ep["seen"] / max(ep["train_time"], 1e-9),
             "loader_wait": ep["loader_wait"] / max(ep["train_time"], 1e-9)}
        if tr.sched is not None:
            tr.sched.step(epoch + 1, m["val_f1"])
        history.append(m)
        _save(ckpt, cfg, {"model": tr.net.state_dict(), "optimizer": tr.opt.state_dict(),
                          "scheduler": tr.sched.state_dict() if tr.sched is not None else None,
                          "rng": torch.get_rng_state(), "epoch": epoch, "history": history})
        if report is not None:
            report(dict(m), ckpt)
    final = dict(history[-1]) if history else {}
    final["history"] = history
    return final


def load_model(checkpoint_dir: str | Path, device: str = "cpu") -> tuple[model_mod.MaskNet, Config]:
    """Rebuild a trained model (eval mode) and its config from a checkpoint folder."""
    checkpoint_dir = Path(checkpoint_dir)
    cfg = config_mod.load_saved(checkpoint_dir / "config.yaml")  # never downloads or reads the ImageNet weights
    net = build_model(cfg)
    net.load_state_dict(load_state(checkpoint_dir)["model"])
    return net.to(resolve_device(device)).eval(), cfg
