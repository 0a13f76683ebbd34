"""Fold models as one Tune experiment of the search's own trainable (a grid over ``folds.fold``): what
``search.finalize`` and ``search.distill`` train. Each fold checkpoints every epoch to the study's Tune
storage and is copied into the run's folder as it finishes; an interrupted run resumes, and a fold whose
checkpoint is complete is never retrained."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from maskclf.config import Config
from maskclf.errors import RunFailed
from search.cluster.experiment import epochs_done
from search.tracking import Tracker


def train_folds(cfg: Config, prep, ks: list[int], out: Path, tracker: Tracker, parent: str,
                 log: Callable[[str], None]) -> tuple[dict[int, Path], dict[int, tuple[str, str | None]]]:
    """Every selected fold's checkpoint in ``out``, and how this run got it; only unfinished folds train."""
    ckpt = {k: out / "folds" / f"fold{k}" / "checkpoint" for k in ks}
    todo = [k for k in ks if epochs_done(ckpt[k]) < cfg.train.epochs]
    notes = {k: ("checkpoint complete, not retrained", None) for k in ks if k not in todo}
    if todo:
        notes.update(_run_folds(cfg, prep, ks, todo, out, tracker, parent, log))
    return ckpt, notes


def _run_folds(cfg: Config, prep, ks: list[int], todo: list[int], out: Path, tracker: Tracker, parent: str,
               log: Callable[[str], None]) -> dict[int, tuple[str, str]]:
    """The folds in ``todo`` as one Tune experiment (a grid over ``folds.fold``, the search's trainable, no
    searcher, no early stopping), restored when an earlier run of this finalize was interrupted. Each fold's
    checkpoint is copied into ``out`` as it finishes. Returns how each fold was trained, and where."""
    from ray import tune

    from search import cluster
    from search.cluster import experiment
    from search.tracking.callback import MlflowTrials
    from search.cluster.progress import FoldCheckpoints

    name = f"{cfg.run.study}-{out.name}-folds{'_'.join(map(str, ks))}"
    for k in todo:
        log(f"fold {k}: training ({cfg.train.epochs} epochs) -> {out / 'folds' / f'fold{k}'}")
    callbacks = [MlflowTrials(tracker.uri, cfg, parent=parent, folds=True), FoldCheckpoints(out, cfg.train.epochs)]
    # the workers need the train crops (and any pseudo-labelled images or soft targets), not the eval crops
    shipped = prep.without_eval()
    results = experiment.fit(
        cfg, name, experiment.trainable(cfg, experiment.object_store_ready(shipped)),
        callbacks=callbacks, log=log, param_space={"folds.fold": tune.grid_search(todo)},
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=cfg.search.reuse_actors), what="finalize")
    callbacks[0].sync(results)
    notes, failed = {}, []
    for r in results:
        k = int(r.config["folds.fold"])
        if k not in todo:  # a restored experiment also lists the folds whose checkpoints are in out/ already
            continue
        if r.error is not None:  # the other folds still finish and keep their checkpoints
            failed.append(f"fold {k} failed ({type(r.error).__name__}: {str(r.error).strip().splitlines()[-1][:300]})")
            log(failed[-1])
            continue
        dest = out / "folds" / f"fold{k}" / "checkpoint"
        if epochs_done(dest) < cfg.train.epochs:  # FoldCheckpoints copied it when the fold finished, unless killed
            experiment.copy_checkpoint(r.checkpoint, dest)
        m = r.metrics or {}
        epochs, since = int(m.get("epoch", 0)), int(m.get("iterations_since_restore", 0) or 0)
        first = epochs - since + 1 if since else epochs + 1
        what = f"trained epochs {first}-{epochs}" if first <= epochs else f"trained to epoch {epochs} before"
        notes[k] = (f"{what} on node {m.get('node', '-')}", m.get("node"))
    if failed:
        raise RuntimeError("; ".join(failed) + " -- run the same command again to resume")
    missing = [k for k in todo if k not in notes]
    if missing:  # a fold's checkpoint was deleted from out/ after the interrupted experiment had started without it
        raise RunFailed(f"fold(s) {', '.join(map(str, missing))} are not in the interrupted finalize experiment at "
                        f"{os.path.join(cluster.storage_path(cfg), name)}; delete that folder to train them")
    cluster.remove_experiment(cfg, name)  # every fold's checkpoint is in out/ now
    return notes
