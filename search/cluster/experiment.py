"""One way to run a Tune experiment, for the search, finalize and the benchmarks: the trainable, and
creating or restoring the experiment with this run's callbacks and stopper.

A study and a finalize are both Tune experiments of the same trainable (``engine.fit`` behind
``tune.report``) under the same storage rule (``cluster.storage_path``); they differ in what
varies between trials (a search space with TPE and ASHA, or a grid over folds) and in their
callbacks. Running the same command again restores the experiment where it stopped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from maskclf import config as config_mod
from maskclf.config import Config
from search.cluster import node_name, storage_path

METRIC, MODE = "val_f1", "max"


def study_dir(cfg: Config) -> Path:
    """``<run.dir>/<study>``: the study's outputs (best config, trials table, plots, final/)."""
    return config_mod.run_dir(cfg) / cfg.run.study


def trial_config(cfg: Config, params: dict[str, Any]) -> Config:
    """The complete config of one trial: ``cfg`` with the trial's dotted parameters (a search point or a fold).

    The trial itself, its MLflow run and the study's best config are all built by this one function from
    Tune's record of the trial's parameters."""
    trial_cfg = config_mod.apply(cfg, {k: (v.item() if isinstance(v, np.generic) else v) for k, v in params.items()},
                                 where="trial parameters")
    if trial_cfg.search.gpus_per_trial == 0:
        trial_cfg = config_mod.apply(trial_cfg, {"train.device": "cpu", "faces.device": "cpu"})
    return trial_cfg


def train_trial(params: dict[str, Any], *, cfg: Config, prep, after_report: Callable[[dict], None] | None = None):
    """The Tune trainable: a thin adapter from ``engine.fit``'s report to ``ray.tune.report``."""
    from ray import tune

    from maskclf import engine

    trial_cfg = trial_config(cfg, params)
    train, val = prep.fold(trial_cfg)
    work = Path(tempfile.mkdtemp(prefix="maskclf-trial-"))
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        resume = work / "resume"
        checkpoint.to_directory(str(resume))

    node = node_name()

    def report(metrics: dict, checkpoint_dir: Path) -> None:
        metrics = {**metrics, "node": node}
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))
        if after_report is not None:
            after_report(metrics)

    try:
        engine.fit(trial_cfg, train, val, report, out_dir=work / "run", resume=resume, log=lambda s: print(s))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def object_store_ready(prep):
    """``prep`` with its crops as plain contiguous arrays: a memory map of the driver's cache file must not
    travel."""
    from maskclf.faces import FaceCrops

    c = prep.train_crops
    return prep.with_train_crops(FaceCrops(np.ascontiguousarray(c.images), c.boxes, c.found, c.paths, c.detector))


def epochs_done(checkpoint_dir: Path) -> int:
    """Epochs a checkpoint folder of ``engine.fit`` holds (0 when it is missing or unreadable)."""
    from maskclf import engine

    try:
        return int(engine.load_state(checkpoint_dir)["epoch"]) + 1
    except Exception:  # missing or unreadable: the fold starts over
        return 0


def copy_checkpoint(checkpoint, dest: Path) -> None:
    """Replace ``dest`` by a Tune checkpoint's files, atomically (a fold's model in final/)."""
    tmp = dest.with_name(dest.name + ".recv")
    shutil.rmtree(tmp, ignore_errors=True)
    checkpoint.to_directory(str(tmp))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def trainable(cfg: Config, prep, fn: Callable | None = None):
    """``fn`` (default :func:`train_trial`) with the config and the prepared data, on the per-trial resources."""
    from ray import tune

    fn = tune.with_parameters(fn or train_trial, cfg=cfg, prep=prep)
    return tune.with_resources(fn, {"cpu": cfg.search.cpus_per_trial, "gpu": cfg.search.gpus_per_trial})


class ResumeFromWhatIsKept:
    """Mixed into the trainable's Tune class (:func:`resumable`): a trial restored from a
    checkpoint that is gone resumes from the newest one its folder keeps, or starts over if none is left.

    Tune deletes a trial's older checkpoint (``num_to_keep=1``) as soon as a newer one arrives and snapshots the
    experiment just after; a driver killed between the two leaves a snapshot naming the deleted checkpoint, and
    Tune's own restore would fail the trial on every retry ("does not exist on storage anymore")."""

    def restore(self, checkpoint_path):
        result = checkpoint_path
        checkpoint = getattr(result, "checkpoint", None)
        if checkpoint is not None and not _exists(checkpoint.filesystem, checkpoint.path):
            newer = newest_kept(checkpoint.filesystem, checkpoint.path)
            if newer is None:
                print(f"checkpoint {checkpoint.path} is gone and no other is kept: the trial starts over", flush=True)
                return None
            print(f"checkpoint {checkpoint.path} is gone: resuming from {newer}", flush=True)
            # one report per checkpoint: the newer checkpoint is that many iterations further on
            shift = checkpoint_index(newer) - checkpoint_index(checkpoint.path)
            metrics = dict(result.metrics)
            if "training_iteration" in metrics:
                metrics["training_iteration"] = int(metrics["training_iteration"]) + shift
            result = type(result)(checkpoint=type(checkpoint)(newer, filesystem=checkpoint.filesystem),
                                  metrics=metrics)
        return super().restore(result)


def resumable(trainable_fn):
    """``trainable_fn`` (a function trainable) restored as :class:`ResumeFromWhatIsKept` says."""
    if isinstance(trainable_fn, type):
        return trainable_fn
    from search.cluster.private_api import mix_into_trainable

    return mix_into_trainable(trainable_fn, ResumeFromWhatIsKept)


def checkpoint_index(path: str) -> int:
    """The number Tune gives a trial's checkpoint folder (``checkpoint_000004`` -> 4; -1 for another name)."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    head, _, number = name.partition("_")
    return int(number) if head == "checkpoint" and number.isdigit() else -1


def _exists(fs, path: str) -> bool:
    from pyarrow.fs import FileType

    return fs.get_file_info(path).type != FileType.NotFound


def newest_kept(fs, gone: str) -> str | None:
    """The checkpoint folder beside ``gone`` (a trial's ``checkpoint_*``) with the highest number, or None."""
    from pyarrow.fs import FileSelector, FileType

    trial_dir = gone.rstrip("/").rsplit("/", 1)[0]
    try:
        infos = fs.get_file_info(FileSelector(trial_dir))
    except (FileNotFoundError, OSError):
        return None
    kept = [i.path for i in infos if i.type == FileType.Directory and checkpoint_index(i.path) >= 0]
    return max(kept, key=checkpoint_index, default=None)


def epoch_budget(budget: int, trained: dict[str, int] | None = None):
    """A Tune Stopper that ends the study once its trials have trained ``budget`` epochs in all.

    A trial counts its highest epoch reported, so epochs restored from a checkpoint are not counted
    twice; ``trained`` holds the counts of a study being resumed. Trials still running are stopped
    and no new one starts. The class is built here so that importing this module does not import Ray.
    """
    from ray.tune.stopper import Stopper

    class EpochBudget(Stopper):
        def __init__(self) -> None:
            self.budget, self.trained = budget, dict(trained or {})

        def __call__(self, trial_id: str, result: dict) -> bool:
            self.trained[trial_id] = max(self.trained.get(trial_id, 0), int(result.get("epoch") or 0))
            return self.stop_all()

        def stop_all(self) -> bool:
            return sum(self.trained.values()) >= self.budget

    return EpochBudget()


def trained_epochs(tuner) -> dict[str, int]:
    """Epochs each trial of a restored experiment has trained (its last reported epoch)."""
    try:
        results = tuner.get_results()
    except RuntimeError:  # interrupted before any state was saved
        return {}
    return {r.metrics["trial_id"]: int(r.metrics.get("epoch") or 0) for r in results if r.metrics}


def use_run_config(tuner, callbacks: list, stop=None) -> None:
    """Give a restored Tuner this run's callbacks (and stopper, where one is given), not the ones pickled when
    the experiment started (an old tracking URI, old code)."""
    from search.cluster.private_api import tuner_run_config

    run_config = tuner_run_config(tuner)
    run_config.callbacks, run_config.verbose = callbacks, 0
    if stop is not None:
        run_config.stop = stop


def fit(cfg: Config, name: str, trainable_fn, *, callbacks: list, log: Callable[[str], None],
        tune_config=None, param_space: dict | None = None, stop: Callable[[dict[str, int]], Any] | None = None,
        stopped: Callable[[], Any] | None = None, what: str = "study"):
    """Run the Tune experiment ``name`` under ``cluster.storage_path(cfg)`` to its end; restore it when it exists.

    ``stop`` builds the stopper from the epochs each trial has trained already ({} for a new experiment),
    so that a restored budget counts every epoch once; ``stopped`` runs after an experiment that the stopper
    ended (Tune stops the trials still training then without telling the searcher). Returns Tune's ResultGrid."""
    from ray import tune

    # Tune warns whenever per-epoch checkpoints snapshot the experiment often; that is intended here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # each trial's progress.csv and result.json (what a result's metrics_dataframe reads), and no TensorBoard
    # files: MLflow holds the curves, and Tune's TensorBoard writer would import torch into the driver
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    callbacks = [*callbacks, tune.logger.CSVLoggerCallback(), tune.logger.JsonLoggerCallback()]
    trainable_fn = resumable(trainable_fn)
    path = os.path.join(storage_path(cfg), name)
    if tune.Tuner.can_restore(path):
        log(f"resuming {what} '{name}' from {path}")
        tuner = tune.Tuner.restore(path, trainable=trainable_fn, resume_unfinished=True, resume_errored=True)
        stopper = stop(trained_epochs(tuner)) if stop else None
        use_run_config(tuner, callbacks, stopper)
        return _after(tuner.fit(), stopper, stopped)
    s = cfg.search
    stopper = stop({}) if stop else None
    return _after(tune.Tuner(
        trainable_fn,
        param_space=param_space,
        tune_config=tune_config,
        run_config=tune.RunConfig(
            # verbose=0: Tune's per-trial status boxes flood the terminal; the callbacks print a line per trial
            name=name, storage_path=storage_path(cfg), callbacks=callbacks, verbose=0,
            stop=stopper,
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    ).fit(), stopper, stopped)


def _after(results, stopper, stopped: Callable[[], Any] | None):
    if stopped is not None and stopper is not None and stopper.stop_all():
        stopped()
    return results
