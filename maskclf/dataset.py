"""Everything a run needs before training: the dataset (the demo one made on first use),
validated tables, and the face-crop cache, computed once and shared by every later run."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from maskclf import config as config_mod
from maskclf import crop_cache, data, faces, folds, tasks
from maskclf.config import Config
from maskclf.samples import Rows, Samples
from maskclf.errors import InputError


@dataclass(frozen=True)
class Prepared:
    """Validated tables and their face crops (row i of a table is crop i). Never changed once made: the
    ``with_*`` and ``without_*`` methods return a new one (sharing the arrays).

    ``extra``: samples added to every fold's training set, never to a validation fold (pseudo-labelled eval
    images, labelled for the model's task); ``soft``: a teacher's probabilities of each train row, given to
    the training samples to distill (``extra`` then carries its own)."""

    train: pd.DataFrame
    train_crops: faces.FaceCrops
    eval: pd.DataFrame | None = None
    eval_crops: faces.FaceCrops | None = None
    answers: pd.Series | None = None
    extra: Samples | None = None
    soft: np.ndarray | None = None

    def with_extra(self, extra: Samples | None) -> Prepared:
        return replace(self, extra=extra)

    def with_soft(self, soft: np.ndarray | None) -> Prepared:
        return replace(self, soft=soft)

    def with_train_crops(self, crops: faces.FaceCrops) -> Prepared:
        return replace(self, train_crops=crops)

    def without_eval(self) -> Prepared:
        """The training side only (what the fold models' trials need)."""
        return replace(self, eval=None, eval_crops=None, answers=None)

    def eval_samples(self, rows: np.ndarray, labels: np.ndarray, soft: np.ndarray | None = None) -> Samples:
        """Eval images ``rows`` (their crops copied out of the cache) with the given labels: pseudo-labels."""
        return Samples(np.asarray(self.eval_crops.images[rows]), np.asarray(labels, np.int64), soft)

    def labels(self, rows: np.ndarray, task: str = "all", age_old: int = 60) -> np.ndarray:
        """Labels of train rows for a model of ``task``; ``age_old`` only for training labels."""
        return tasks.targets(data.labels(self.train.iloc[rows], age_old), task)

    def eval_labels(self, task: str = "all") -> np.ndarray:
        """The true labels of the eval images (row i of ``eval``) for a model of ``task``, from eval/answers.csv;
        -1 where it has none (every row without the file)."""
        out = np.full(len(self.eval), -1, np.int64)
        if self.answers is not None:
            y = self.answers.reindex(self.eval["image_id"].to_numpy())
            known = y.notna().to_numpy()
            out[known] = tasks.targets(y[known].to_numpy().astype(np.int64), task)
        return out

    def samples(self, rows: np.ndarray, age_old: int = 60, task: str = "all") -> Samples:
        """Crops and labels of train rows (the crops as :class:`Rows` of the shared array, never a copy);
        ``age_old`` only for training labels."""
        return Samples(Rows((self.train_crops.images, rows)), self.labels(rows, task, age_old))

    def fold(self, cfg: Config, fold: int | None = None) -> tuple[Samples, Samples]:
        """(train, val) samples of a fold, labelled for ``model.task``: training labels use data.age_old,
        validation the real 30/60."""
        k = cfg.folds.fold if fold is None else fold
        tr, va = folds.split(self.train, k, cfg.folds.n, cfg.folds.seed)
        train = self.samples(tr, cfg.data.age_old, cfg.model.task)
        if self.soft is not None:
            train.soft = self.soft[tr]
        if self.extra is not None:
            x = self.extra
            if (train.soft is None) != (x.soft is None):
                raise ValueError("soft targets must be given for both the train rows and the extra samples, or neither")
            train = Samples(train.images + x.images,
                            np.concatenate([train.labels, x.labels]),
                            None if x.soft is None else np.concatenate([train.soft, x.soft]))
        return train, self.samples(va, task=cfg.model.task)


def ensure_demo(cfg: Config, log: Callable[[str], None] = print) -> Path:
    """Generate the demo dataset at data.root when it is missing and the config allows it."""
    root = Path(cfg.data.root).expanduser()
    if (root / "train" / "train.csv").is_file() or not cfg.data.demo:
        return root
    if root.exists() and any(root.iterdir()):
        raise InputError(f"data.root {root} exists but holds no train/train.csv; point data.root at a dataset "
                         f"or at a new folder for the demo dataset")
    from maskclf import demo

    log(f"generating the demo dataset at {root} ({cfg.data.demo_people} train + "
        f"{cfg.data.demo_eval_people} eval people, seed {cfg.data.demo_seed})")
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")  # generated aside, then renamed: never half a dataset
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        demo.generate(tmp, cfg.data.demo_people, cfg.data.demo_eval_people, cfg.data.demo_seed)
        root.parent.mkdir(parents=True, exist_ok=True)
        if root.exists():
            root.rmdir()
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _crops(cfg: Config, paths: list[str], log: Callable[[str], None], progress: bool,
           run_shards: Callable | None) -> faces.FaceCrops:
    f = cfg.faces
    return crop_cache.build_crop_cache(
        paths, config_mod.cache_dir(cfg), method=f.method, size=f.size, margin=f.margin,
        batch_size=f.batch_size, device=f.device, progress=progress, log=log,
        run_shards=run_shards,
    )


def prepare(cfg: Config, *, need_eval: bool = False, log: Callable[[str], None] = print,
            progress: bool = True, run_shards: Callable | None = None) -> Prepared:
    """Validate the dataset (every problem at once) and load or build its face crops (``run_shards``: where
    the shards of a missing crop cache entry run, see :func:`maskclf.crop_cache.build_crop_cache`)."""
    root = ensure_demo(cfg, log)
    problems: list[str] = []
    train = ev = None
    try:
        train = data.read_train(root, cfg.data.corrections or None, cfg.data.check_images)
    except InputError as e:
        problems += e.problems
    if need_eval:
        try:
            ev = data.read_eval(root, cfg.data.check_images)
        except InputError as e:
            problems += e.problems
    if problems:
        raise InputError(problems)
    log(f"dataset {root}: " + ", ".join(f"{k}={v}" for k, v in data.summary(train).items()))
    train_crops = _crops(cfg, train["path"].tolist(), log, progress, run_shards)
    if ev is None:
        return Prepared(train, train_crops)
    return Prepared(train, train_crops, ev, _crops(cfg, ev["path"].tolist(), log, progress, run_shards),
                    data.read_answers(root))
