"""Prediction with trained fold models: soft voting, horizontal-flip TTA, the submission file.

Plain PyTorch: finalize and the registered MLflow model both call these functions, and so
can a notebook. Each model keeps its own input size and normalisation (from its checkpoint),
so an ensemble may mix backbones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps

from maskclf import engine, faces, inputs, transforms
from maskclf import model as model_mod
from maskclf.config import Config

Member = tuple[model_mod.MaskNet, Config]  # a fold model and the config it was trained with


def load_ensemble(checkpoint_dirs: Sequence[str | Path], device: str = "cpu") -> list[Member]:
    """Load every checkpoint folder (``engine.fit``'s ``out_dir/checkpoint``) as (model, config)."""
    if not checkpoint_dirs:
        raise ValueError("an ensemble needs at least one checkpoint")
    return [engine.load_model(d, device) for d in checkpoint_dirs]


def model_probs(net: model_mod.MaskNet, cfg: Config, crops, *, tta: bool = True,
                batch_size: int = 128, device: str | torch.device = "cpu") -> np.ndarray:
    """Softmax probabilities (N x the model's classes) of one model on N x S x S x 3 uint8 face crops (an array,
    or :class:`~maskclf.samples.Rows` of a shared one), read batch by batch.

    With ``tta`` the crop and its mirror image are both scored and averaged: faces are
    left-right symmetric for every label, and training already flips them.
    """
    device = inputs.resolve_device(str(device))
    net = net.to(device).eval()
    tf = transforms.build("none", size=cfg.train.image_size, train=False)
    samples = engine.Samples(crops, np.zeros(len(crops), np.int64))

    def run(flip: bool) -> np.ndarray:
        return engine.predict_probs(net, inputs.make_loader(samples, tf, batch_size, flip=flip), device, cfg.train.amp)

    probs = run(False)
    if tta and len(crops):
        probs = (probs + run(True)) / 2
    return probs


def soft_vote(probs: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of several models' probabilities (each N x C)."""
    if not len(probs):
        raise ValueError("soft voting needs at least one model's probabilities")
    return np.mean(np.stack(probs), axis=0)


def predict_each(members: Sequence[Member], crops: np.ndarray, *, tta: bool = True, batch_size: int = 128,
                 device: str = "cpu", log: Callable[[str], None] | None = None) -> list[np.ndarray]:
    """Each member's probabilities on ``crops`` (what per-model scores and the vote are built from)."""
    out = []
    for i, (net, cfg) in enumerate(members):
        out.append(model_probs(net, cfg, crops, tta=tta, batch_size=batch_size, device=device))
        if log is not None:
            log(f"predicted {len(crops)} images with model {i + 1}/{len(members)}")
    return out


def predict_crops(members: Sequence[Member], crops: np.ndarray, *, tta: bool = True, batch_size: int = 128,
                  device: str = "cpu") -> np.ndarray:
    """The ensemble's probabilities (N x its classes): soft voting over ``members``, optionally with flip TTA."""
    if len(crops) == 0:
        return np.zeros((0, members[0][0].num_classes), np.float32)
    return soft_vote(predict_each(members, crops, tta=tta, batch_size=batch_size, device=device))


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB, upright (EXIF rotation applied, as the crop cache does)."""
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def answers(probs: np.ndarray, task: str = "all") -> pd.DataFrame:
    """One row per photo: its ``label`` (0..17, or the task's), the readable ``class`` (``wear/female/<30``) and
    the ``probability`` of that class."""
    from maskclf import tasks

    label = probs.argmax(1)
    names = tasks.class_names(task)
    return pd.DataFrame({"label": label.astype(int), "class": [names[c] for c in label],
                         "probability": probs[np.arange(len(label)), label].astype(float)})


def crop_images(images: Sequence[np.ndarray], cfg: Config, device: str = "cpu") -> np.ndarray:
    """Face crops of photos with the crop settings a model was trained on (``cfg.faces``)."""
    f = cfg.faces
    return faces.crop_arrays(list(images), method=f.method, size=f.size, margin=f.margin,
                             batch_size=f.batch_size, device=str(inputs.resolve_device(device))).images


def write_submission(eval_table: pd.DataFrame, probs: np.ndarray, info_csv_path: str | Path,
                     out_path: str | Path) -> pd.DataFrame:
    """info.csv with ``ans`` filled by the argmax of ``probs`` (row i of ``eval_table``).

    Rows, their order and every other column are kept as info.csv has them; matching is by
    ImageID, so a table in another order still fills the right rows. Returns the table written.
    """
    if len(eval_table) != len(probs):
        raise ValueError(f"{len(eval_table)} eval images but {len(probs)} rows of probabilities")
    info = pd.read_csv(info_csv_path, dtype=str, keep_default_na=False)
    pred = pd.Series(np.asarray(probs).argmax(1), index=eval_table["image_id"].to_numpy())
    missing = sorted(set(info["ImageID"]) - set(pred.index))
    if missing:
        raise ValueError(f"no prediction for {len(missing)} ImageID(s) of {info_csv_path}, e.g. {missing[0]}")
    info["ans"] = info["ImageID"].map(pred).astype(int)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    info.to_csv(tmp, index=False)
    tmp.replace(out_path)
    return info


def write_probs(eval_table: pd.DataFrame, probs: np.ndarray, out_path: str | Path) -> pd.DataFrame:
    """``ImageID, p0, p1, ...``: each eval image's probabilities (row i of ``eval_table``), written atomically.
    What ``search.combine`` multiplies into the 18 classes."""
    if len(eval_table) != len(probs):
        raise ValueError(f"{len(eval_table)} eval images but {len(probs)} rows of probabilities")
    table = pd.DataFrame(np.asarray(probs).round(6), columns=[f"p{c}" for c in range(np.shape(probs)[1])])
    table.insert(0, "ImageID", eval_table["image_id"].to_numpy())
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(out_path)
    return table


def oof_table(train: pd.DataFrame, rows: np.ndarray, fold: np.ndarray, probs: np.ndarray,
              labels: np.ndarray) -> pd.DataFrame:
    """Out-of-fold predictions in train order: person, path, fold, label, pred, prob, p0..p17 (p0..p2 for
    a mask model, ...)."""
    order = np.argsort(rows, kind="stable")
    probs = np.asarray(probs)[order]
    table = train.iloc[np.asarray(rows)[order]][["person", "path"]].reset_index(drop=True)
    table["fold"], table["label"], table["pred"] = np.asarray(fold)[order], np.asarray(labels)[order], probs.argmax(1)
    table["prob"] = probs.max(1).round(5)
    for c in range(probs.shape[1]):
        table[f"p{c}"] = probs[:, c].round(5)
    return table


def save_confusion(y_true: np.ndarray, y_pred: np.ndarray, path: str | Path, title: str,
                   names: Sequence[str] | None = None) -> None:
    """The confusion matrix (18x18, or of ``names``' classes) as a PNG: counts, shaded by the share of each
    true class."""
    from matplotlib.figure import Figure  # Agg canvas without pyplot: no global backend to set

    from maskclf import tasks
    from maskclf.metrics import confusion

    names = list(names) if names is not None else tasks.class_names("all")
    n = len(names)
    cm = confusion(y_true, y_pred, n)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)  # row-normalised: rare classes stay visible
    side = 4 + 7 * n / 18
    fig = Figure(figsize=(side + 1, side))
    ax = fig.subplots()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    for i, j in zip(*np.nonzero(cm)):
        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6,
                color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
