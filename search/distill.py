"""``python -m search.distill``: one fast student network taught by a finished finalize's ensemble.

The student (by default the ensemble's own configuration: one network, no flip TTA) trains on the
training images of every fold but ``distill.fold`` against the ensemble's probabilities (its soft vote,
or with ``distill.targets=oof`` each image's out-of-fold probabilities), softened by
``distill.temperature`` and mixed with the hard labels (``distill.alpha``); when the source finalize
ran a pseudo-label round, its pseudo-labelled eval images join with the ensemble's eval probabilities.
It trains on Ray as a fold does, checkpointing every epoch; running the command again continues it.

Outputs in ``<run.dir>/<study>/distill/`` (a finished one is never overwritten: the next goes to
``distill-2/``): the student's checkpoint, ``oof.csv`` (its validation fold), ``eval_probs.csv``,
``submission.csv`` and ``metrics.json`` beside the ensemble's figures; an MLflow run; the student as a
version of the study's registered model with alias ``distill.alias`` (``fast``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from maskclf import config as config_mod
from maskclf.config import Config
from maskclf.errors import InputError, cli
from search.cluster.experiment import epochs_done, study_dir
from search.cluster.folds import train_folds
from search.study import settings
from search.study.outputs import DONE_FILE, finished, output_dir, write_json
from search.tracking import Tracker, trial_params, tracking_uri


def student_config(cfg: Config, overrides: list[str]) -> tuple[Config, Path]:
    """The student's config: the source finalize's config with ``overrides`` (a backbone, an image size,
    epochs, distill.* ...), validating the fold on ``distill.fold``; and the source folder."""
    source, why = finished(study_dir(cfg), cfg.distill.source)
    if source is None:
        raise InputError(f"distill.source: {why}")
    name = source.name if source.parent == study_dir(cfg) else str(source)
    student = settings.load(source / "config.yaml", [*overrides, f"distill.source={name}"])
    student = config_mod.apply(student, {"folds.fold": student.distill.fold, "finalize.tta": False,
                                         "finalize.folds": str(student.distill.fold), "pseudo.enabled": False})
    teacher = settings.load_saved(source / "config.yaml")
    differ = [k for k in ("model.task", "data.root", "folds.n", "folds.seed", "faces.method", "faces.size",
                          "faces.margin") if config_mod.flat(student)[k] != config_mod.flat(teacher)[k]]
    if differ:
        raise InputError(f"the student must learn the ensemble's task from the same images and folds: "
                         f"{', '.join(differ)} differ from {source / 'config.yaml'}")
    return config_mod.validate(student), source


def teacher_targets(cfg: Config, prep, source: Path, out: Path,
                    log: Callable[[str], None] = print) -> tuple[Any, dict]:
    """``prep`` with the ensemble's probabilities as the student's soft targets, softened by
    ``distill.temperature``: its ``soft`` for the train rows, and its ``extra`` for the pseudo-labelled eval
    images of a pseudo-label finalize (with the ensemble's eval probabilities). ``distill.targets`` = ensemble:
    the soft vote of every fold model on each training image (predicted once, kept in
    ``out/teacher_probs.npy``); oof: the out-of-fold probabilities of the one fold model that never trained on
    it (a row no fold model scored gets its label). Returns it and what was used."""
    import pandas as pd

    from maskclf import losses, tasks

    cols = [f"p{c}" for c in range(tasks.num_classes(cfg.model.task))]
    if cfg.distill.targets == "ensemble":
        probs = _ensemble_probs(cfg, prep, source, out, log)
    else:  # rows of folds the source did not finalize are NaN: their hard labels stand in
        oof = pd.read_csv(source / "oof.csv").set_index("path")
        probs = oof.reindex(prep.train["path"].astype(str).to_numpy())[cols].to_numpy(np.float64)
        if np.isnan(probs).any(1).all():
            raise InputError(f"distill.source: {source / 'oof.csv'} scores none of the training images at "
                             f"{cfg.data.root}")
    labels = prep.labels(np.arange(len(probs)), cfg.model.task, cfg.data.age_old)
    soft, missing = losses.teacher_targets(probs, labels, cfg.distill.temperature)
    prep = prep.with_soft(soft)
    used = {"targets": cfg.distill.targets, "train_rows_with_ensemble_targets": int((~missing).sum()),
            "train_rows_with_labels_only": int(missing.sum())}
    pseudo_file = source / "pseudo_labels.csv"
    if pseudo_file.is_file():
        taken = pd.read_csv(pseudo_file)
        ev = pd.read_csv(source / "eval_probs.csv").set_index("ImageID")
        index = pd.Series(np.arange(len(prep.eval)), index=prep.eval["image_id"].to_numpy())
        rows = index.reindex(taken["ImageID"].to_numpy())
        if rows.isna().any():
            raise InputError(f"distill.source: {pseudo_file} names eval images this dataset does not have")
        rows = rows.to_numpy(np.int64)
        soft = losses.soften(ev.loc[taken["ImageID"], cols].to_numpy(np.float64), cfg.distill.temperature)
        prep = prep.with_extra(prep.eval_samples(rows, taken["label"].to_numpy(np.int64), soft))
        used["pseudo_labelled_eval_images"] = int(len(rows))
    return prep, used


def _ensemble_probs(cfg: Config, prep, source: Path, out: Path, log: Callable[[str], None]) -> np.ndarray:
    """The source ensemble's soft vote on every training image (flip TTA as its finalize used it), computed once."""
    from maskclf import predict
    from search.cluster import predictions

    cache = out / "teacher_probs.npy"
    if cache.is_file():
        probs = np.load(cache)
        if len(probs) == len(prep.train):
            return probs
    teacher = json.loads((source / DONE_FILE).read_text())
    ckpts = {k: source / "folds" / f"fold{k}" / "checkpoint" for k in teacher["folds"]}
    log(f"teacher: the {len(ckpts)} fold models of {source} predict the {len(prep.train)} training images on Ray")
    every = np.arange(len(prep.train))
    got = predictions.runner(cfg, log)(config_mod.apply(cfg, {"finalize.tta": bool(teacher.get("tta", True))}),
                                       ckpts, prep.train_crops.images, {k: every for k in ckpts}, None, log)
    probs = predict.soft_vote([got[k][0] for k in sorted(got)])
    tmp = out / "teacher_probs.tmp.npy"
    np.save(tmp, probs)
    tmp.replace(cache)
    return probs


def _scores(cfg: Config, prep, ckpt: Path, source: Path, out: Path, log: Callable[[str], None]) -> dict:
    """The student on its validation fold (oof.csv) and on the eval images (eval_probs.csv, submission.csv),
    beside the ensemble's and the fold model's figures from the source's metrics.json."""
    from maskclf import folds, metrics, predict
    from search.cluster import predictions

    k = cfg.distill.fold
    rows = folds.split(prep.train, k, cfg.folds.n, cfg.folds.seed)[1]
    labels = prep.labels(rows, cfg.model.task)
    log(f"student: predicting its {len(rows)} validation images and {len(prep.eval)} eval images on Ray (one model, "
        f"no flip TTA)")
    [(val, ev)] = predictions.runner(cfg, log)(config_mod.apply(cfg, {"finalize.tta": False}), {k: ckpt},
                                               prep.train_crops.images, {k: rows}, prep.eval_crops.images, log).values()
    predict.oof_table(prep.train, rows, np.full(len(rows), k), val, labels).to_csv(out / "oof.csv", index=False)
    predict.write_probs(prep.eval, ev, out / "eval_probs.csv")
    if cfg.model.task == "all":
        predict.write_submission(prep.eval, ev, Path(cfg.data.root).expanduser() / "eval" / "info.csv",
                                 out / "submission.csv")
    teacher = json.loads((source / DONE_FILE).read_text())
    m = {"task": cfg.model.task, "source": source.name, "fold": k, "backbone": cfg.model.backbone,
         "image_size": cfg.train.image_size, "epochs": cfg.train.epochs, "seed": cfg.train.seed,
         "temperature": cfg.distill.temperature, "alpha": cfg.distill.alpha,
         "val_f1": metrics.macro_f1(labels, val.argmax(1)), "val_images": int(len(rows))}
    if k in teacher.get("folds", []):
        m["fold_model_val_f1"] = teacher["fold_f1"][teacher["folds"].index(k)]
    if prep.answers is not None:
        truth = prep.eval_labels(cfg.model.task)
        known = truth >= 0
        m["eval_f1"] = metrics.macro_f1(truth[known], ev[known].argmax(1))
        m["eval_images"] = int(known.sum())
        if "eval_f1" in teacher:
            m["ensemble_eval_f1"] = teacher["eval_f1"]
            m["eval_f1_vs_ensemble"] = m["eval_f1"] / teacher["eval_f1"] if teacher["eval_f1"] else float("nan")
            if k in teacher.get("folds", []) and teacher.get("eval_f1_folds"):
                m["fold_model_eval_f1"] = teacher["eval_f1_folds"][teacher["folds"].index(k)]
    return m


def run(cfg: Config, *, log: Callable[[str], None] = print) -> dict:
    """Distill (or continue distilling) the student ``cfg`` (from :func:`student_config`); returns metrics.json."""
    from search.study import driver_lock

    tracker = Tracker(tracking_uri(cfg), cfg.run.study)  # a bad tracking store fails before any work
    with driver_lock(cfg, "python -m search.distill", log):
        return _distill(cfg, tracker, log)


def _distill(cfg: Config, tracker: Tracker, log: Callable[[str], None]) -> dict:
    from maskclf import dataset
    from search import cluster
    from search.cluster import crops
    from search.tracking import registry

    source, why = finished(study_dir(cfg), cfg.distill.source)
    if source is None:
        raise InputError(f"distill.source: {why}")
    prep = dataset.prepare(cfg, need_eval=True, log=log, run_shards=crops.runner(cfg, log))
    out = output_dir(cfg, log, base="distill", sections=("distill",))
    k = cfg.distill.fold
    if epochs_done(out / "folds" / f"fold{k}" / "checkpoint") < cfg.train.epochs:
        joined = cluster.connect(cfg, log)
        cluster.check_resources(cfg, wait_s=600 if joined else 0, log=log)
        cluster.check_storage(cfg)
    again = out.exists()
    out.mkdir(parents=True, exist_ok=True)
    config_mod.save(cfg, out / "config.yaml")
    prep, used = teacher_targets(cfg, prep, source, out, log)
    log(f"{'continuing the interrupted distillation' if again else 'distilling'} {source} into one "
        f"{cfg.model.backbone} at {cfg.train.image_size} px ({cfg.train.epochs} epochs, T={cfg.distill.temperature:g}, "
        f"alpha={cfg.distill.alpha:g}, validation fold {k}) in {out}: "
        + ", ".join(f"{v} {n.replace('_', ' ')}" for n, v in used.items()))
    params = {**trial_params(cfg), "source": source.name, "fold": k, "temperature": cfg.distill.temperature,
              "alpha": cfg.distill.alpha}
    parent = tracker.start("distill", f"distill · {cfg.run.study} · {cfg.model.backbone} · {out.name}", key=out.name,
                           params=params, tags={"distill_dir": str(out)})
    with tracker.ending(parent):  # the run shows how it ended; the next command continues it
        ckpts, notes = train_folds(cfg, prep, [k], out, tracker, parent, log)
        m = _scores(cfg, prep, ckpts[k], source, out, log)
        m.update(used)
        m["trained"] = notes[k][0]
        tracker.log_metrics(parent, {n: v for n, v in m.items() if n in (
            "val_f1", "fold_model_val_f1", "eval_f1", "ensemble_eval_f1", "fold_model_eval_f1", "eval_f1_vs_ensemble")})
        for name in ("oof.csv", "eval_probs.csv", "config.yaml", *(("submission.csv",) if m["task"] == "all" else ())):
            tracker.log_artifact(parent, out / name)
        m["alias"] = cfg.distill.alias
        m["model_version"] = registry.register(tracker.uri, parent, cfg.run.study, {k: ckpts[k]}, tta=False,
                                               alias=cfg.distill.alias,
                                               tags={"student_of": source.name, "distill_dir": str(out),
                                                     "val_f1": f"{m['val_f1']:.4f}"})
        tracker.log_text(parent, json.dumps(m, indent=2), DONE_FILE)
        write_json(out / DONE_FILE, m)
    ev = ""
    if "eval_f1" in m:
        ev = f", eval macro F1 {m['eval_f1']:.4f}"
        if "ensemble_eval_f1" in m:
            ev += f" (ensemble {m['ensemble_eval_f1']:.4f}: {100 * m['eval_f1_vs_ensemble']:.1f}%)"
    log(f"student: fold {k} macro F1 {m['val_f1']:.4f}{ev}")
    log(f"outputs in {out}; model models:/{cfg.run.study}@{cfg.distill.alias} (version {m['model_version']}); "
        f"browse: {tracker.ui_command()}")
    return m


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m search.distill",
        description="Train one fast student network on a finished finalize's ensemble (its soft probabilities and "
                    "any pseudo-labelled eval images), score it beside the ensemble and register it under the "
                    "study's model with its own alias. Run it again to continue an interrupted distillation.",
    )
    p.add_argument("--config", default=str(config_mod.DEFAULT_CONFIG), help="YAML config (default: %(default)s)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides: run.dir / run.study find the study; the rest apply to the student on "
                        "top of the ensemble's config, e.g. distill.temperature=4 train.image_size=32")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg, _ = student_config(settings.load(args.config, args.overrides), args.overrides)
    run(cfg, log=lambda s: print(s, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
