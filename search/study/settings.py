"""The search layer's own config sections (search, tracking, finalize, pseudo, and distill's teacher and student),
composed onto the core's into the one config users write: the same YAML files and dotted keys, one set of
errors with "did you mean" over every key.

Every command of ``search`` loads its config here (:func:`load`); the core's own entry points load the core's
sections alone and leave these to this layer.

    python -m search.study.settings --write    # regenerate docs/configuration.md (every key of both layers)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from maskclf import config as config_mod
from maskclf import schema as core

CHAMPION = "champion"  # the alias of a study's ensemble in the model registry (a distilled student has its own)


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
class DistillConfig(core.DistillConfig):
    """A distilled student: which ensemble teaches it, on what, and its alias; the loss's temperature and alpha
    are the core's."""

    source: str = ""  # the finished finalize whose ensemble teaches ("" = the study's newest)
    fold: int = 0  # the student's validation fold: it trains on the others (and any pseudo-labelled images)
    # the soft targets of the training images: ensemble (the soft vote of every fold model) | oof (the one fold
    # model that did not train on the image)
    targets: str = "ensemble"
    alias: str = "fast"  # the student's alias under the study's registered model


@dataclass
class StudyConfig(core.Config):
    """The core's sections and the search layer's: what every command of ``search`` runs on."""

    distill: DistillConfig = field(default_factory=DistillConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    finalize: FinalizeConfig = field(default_factory=FinalizeConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)

    PATH_KEYS: ClassVar[tuple[str, ...]] = (*core.Config.PATH_KEYS, "search.storage_path")
    OTHER_LAYERS: ClassVar[bool] = False  # every section and key is this schema's: anything else is an error

    def problems(self) -> list[str]:
        """Every invalid value of the search layer's sections."""
        p: list[str] = []
        choices = {"search.sampler": (self.search.sampler, ("tpe", "random")),
                   "search.scheduler": (self.search.scheduler, ("asha", "fifo")),
                   "search.stopped_trials": (self.search.stopped_trials, ("complete", "pruned")),
                   "distill.targets": (self.distill.targets, ("ensemble", "oof"))}
        for key, (value, allowed) in choices.items():
            config_mod.check_choice(p, key, value, allowed)
        positive = {"search.num_samples": self.search.num_samples, "search.max_concurrent": self.search.max_concurrent,
                    "search.cpus_per_trial": self.search.cpus_per_trial}
        p += [f"{k} must be > 0, got {v}" for k, v in positive.items() if v <= 0]
        s = self.search
        if s.gpus_per_trial < 0:
            p.append(f"search.gpus_per_trial must be >= 0, got {s.gpus_per_trial}")
        if s.budget_epochs < 0:
            p.append(f"search.budget_epochs must be >= 0 (0 = no limit), got {s.budget_epochs}")
        if self.finalize.epochs < 0:
            p.append(f"finalize.epochs must be >= 0 (0 = train.epochs), got {self.finalize.epochs}")
        if s.reduction_factor < 2:
            p.append(f"search.reduction_factor must be >= 2, got {s.reduction_factor}")
        if s.brackets < 1:
            p.append(f"search.brackets must be >= 1, got {s.brackets}")
        if not 0 < self.pseudo.min_precision <= 1:
            p.append(f"pseudo.min_precision must be in (0, 1], got {self.pseudo.min_precision}")
        d = self.distill
        if not 0 <= d.fold < max(self.folds.n, 1):
            p.append(f"distill.fold must be in 0..{self.folds.n - 1}, got {d.fold}")
        if not d.alias or not d.alias.replace("_", "").replace("-", "").isalnum() or d.alias == CHAMPION:
            p.append(f"distill.alias must be a name of letters, digits, - or _ other than '{CHAMPION}', "
                     f"got '{d.alias}'")
        return p


def load(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> StudyConfig:
    """:func:`maskclf.config.load` of the whole config: the core's sections and this layer's."""
    return config_mod.load(path, overrides, schema=StudyConfig)


def load_saved(path: str | Path) -> StudyConfig:
    """:func:`maskclf.config.load_saved` of the whole config."""
    return config_mod.load_saved(path, schema=StudyConfig)


if __name__ == "__main__":
    from maskclf import configdoc

    sys.exit(configdoc.main(root=StudyConfig, prog="python -m search.study.settings"))
