"""The config's schema: one dataclass per section, each field with its default and what it means.

``maskclf.config`` loads, overrides, validates and saves these; the names are re-exported there.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    method: str = "mtcnn"  # mtcnn | center (fixed box) | none (whole photo)
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
class SearchConfig:
    num_samples: int = 12  # trials in the study
    max_concurrent: int = 2  # trials running at once (TPE learns more from fewer in flight)
    grace_period: int = 1  # ASHA: epochs before a trial may be stopped
    reduction_factor: int = 2  # ASHA: keep 1/reduction_factor at each rung
    brackets: int = 1  # ASHA brackets: > 1 is asynchronous Hyperband (brackets with later first rungs)
    # how a trial stopped by ASHA reaches Optuna: complete (its last value, as Ray's OptunaSearch does) or
    # pruned (Optuna's own state: TPE ranks it below every trial that trained longer)
    stopped_trials: str = "complete"
    seed: int = 0  # seeds the sampler (TPE or random)
    n_startup_trials: int = 4  # random trials before TPE models the history
    sampler: str = "tpe"  # tpe | random (Optuna's seeded RandomSampler): the baseline a search must beat
    scheduler: str = "asha"  # asha | fifo (no early stopping: every trial trains train.epochs)
    budget_epochs: int = 0  # stop the study once its trials trained this many epochs in all (0 = no limit)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # fractions allowed (0.5 = two trials per GPU)
    max_failures: int = 1  # retries of a crashed trial, resumed from its last checkpoint
    # MLflow writes on a thread of their own, batched per trial: Tune's loop, which every trial's
    # report waits on, never waits on the tracking store (false: written inside Tune's loop)
    log_in_background: bool = True
    # a finished trial's process runs the next trial: no process start, imports or CUDA set-up per trial;
    # off by default, so that each trial starts with its own fresh memory and CUDA state
    reuse_actors: bool = False
    address: str = ""  # Ray cluster address; "" = RAY_ADDRESS, else a Ray `ray start` runs on this node, else a private one; "local" = always a private one
    storage_path: str = ""  # Tune results; must be shared storage on a multi-node cluster
    # a new study starts from the finished trials of these studies (comma list: names in run.dir, or study
    # folders' paths) that are points of its space, instead of random start-up trials
    warm_start: str = ""
    space: dict = field(default_factory=dict)  # dotted config key -> distribution


@dataclass
class TrackingConfig:
    uri: str = ""  # MLflow tracking URI; "" = MLFLOW_TRACKING_URI or sqlite:///<run.dir>/mlflow.db
    optuna_storage: str = ""  # the Optuna studies' database (SQLAlchemy URL); "" = sqlite:///<run.dir>/optuna.db


@dataclass
class FinalizeConfig:
    tta: bool = True  # average with horizontally flipped crops
    folds: str = "all"  # "all" or a comma list such as "0,1"
    epochs: int = 0  # epochs of each fold model; 0 = train.epochs (the search's per-trial budget)


@dataclass
class PseudoConfig:
    # a finalize with pseudo-labels: the eval images the ensemble of finalize ``source`` is confident about, with
    # its labels, join every fold's training set (never a validation fold)
    enabled: bool = False
    source: str = "final"  # the finished finalize (a folder of the study) whose ensemble labels the eval images
    # the confidence threshold is the lowest whose out-of-fold predictions at or above it are this precise
    min_precision: float = 0.95


@dataclass
class DistillConfig:
    source: str = ""  # the finished finalize whose ensemble teaches ("" = the study's newest)
    fold: int = 0  # the student's validation fold: it trains on the others (and any pseudo-labelled images)
    # the soft targets of the training images: ensemble (the soft vote of every fold model) | oof (the one fold
    # model that did not train on the image)
    targets: str = "ensemble"
    temperature: float = 2.0  # softens the ensemble's probabilities (and the student's) in the soft loss
    alpha: float = 0.7  # weight of the soft loss; 1 - alpha on the hard labels (train.loss)
    alias: str = "fast"  # the student's alias under the study's registered model


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    faces: FacesConfig = field(default_factory=FacesConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    finalize: FinalizeConfig = field(default_factory=FinalizeConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
