"""The k-fold ensemble: from fold checkpoints and face crops to out-of-fold scores, the eval
submission (soft voting of the fold models, with flip TTA) and the plots of its errors.

No Ray and no MLflow here: ``search.finalize`` trains the folds, calls these, logs and registers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from maskclf.config import Config
from maskclf.labels import AGE_NAMES as AGE_BANDS
from maskclf.samples import Rows

ANALYSIS_FILES = ("per_class_f1.png", "errors.png", "errors.csv")
OUTPUT_FILES = ("submission.csv", "eval_probs.csv", "oof.csv", "confusion_matrix.png", *ANALYSIS_FILES)


def output_files(task: str = "all") -> tuple[str, ...]:
    """The files :func:`build` writes for a model of ``task``: a task model has no 18-class submission (its
    eval probabilities go to ``search.combine``)."""
    return OUTPUT_FILES if task == "all" else tuple(f for f in OUTPUT_FILES if f != "submission.csv")


# One fold model's predictions: (its validation probabilities, its eval probabilities or None).
FoldProbs = tuple[np.ndarray, "np.ndarray | None"]
# Runs :func:`predict_fold` for every fold: (cfg, {fold: checkpoint}, train crops, {fold: its validation rows},
# eval crops or None, log) -> {fold: FoldProbs}. :func:`predict_here` runs them one after the other in this
# process; ``search.finalize`` passes one that runs them as Ray tasks on the cluster's workers.
FoldRunner = Callable[..., dict[int, FoldProbs]]


def predict_fold(cfg: Config, ckpt: Path | dict[str, bytes], images, rows: np.ndarray, eval_images=None,
                 device: str | None = None, tta: bool = True) -> FoldProbs:
    """One fold model's probabilities (with flip TTA where ``tta``) on its validation ``rows`` of the train crops
    ``images`` (read batch by batch, never copied) and on ``eval_images`` where given. ``ckpt`` is a checkpoint
    folder, or its files as bytes (:func:`checkpoint_files`) where the folder is on another machine. With ``train.threads`` set, the
    figures are the same bit for bit wherever this runs (a Ray task, the driver); with torch's default they may
    differ in the last digits between processes with different thread counts."""
    import tempfile

    import torch

    from maskclf import engine, inputs, predict

    device = str(inputs.resolve_device(device or cfg.train.device))
    with tempfile.TemporaryDirectory(prefix="maskclf-fold-") as tmp:
        if isinstance(ckpt, dict):
            for name, data in ckpt.items():
                (Path(tmp) / name).write_bytes(data)
            ckpt = Path(tmp)
        net, ck_cfg = engine.load_model(ckpt, device)
    kw = {"tta": tta, "batch_size": cfg.train.batch_size * 2, "device": device}
    threads = torch.get_num_threads()
    if cfg.train.threads > 0:  # as the fold trained: the same figures in any process with the same setting
        torch.set_num_threads(cfg.train.threads)
    try:
        val = predict.model_probs(net, ck_cfg, Rows((images, rows)), **kw)
        ev = predict.model_probs(net, ck_cfg, eval_images, **kw) if eval_images is not None else None
    finally:
        torch.set_num_threads(threads)
    return val, ev


def checkpoint_files(ckpt: Path) -> dict[str, bytes]:
    """A checkpoint folder's files as bytes, to load it where the folder is not (:func:`predict_fold`)."""
    return {f.name: f.read_bytes() for f in sorted(Path(ckpt).iterdir()) if f.is_file()}


def predicted_line(k: int, rows, eval_images, done: int, of: int) -> str:
    """The line that says a fold model's predictions are in."""
    ev = f" and {len(eval_images)} eval images" if eval_images is not None else ""
    return f"fold {k}: predicted {len(rows)} train images{ev} ({done}/{of} folds)"


def predict_here(cfg: Config, ckpts: dict[int, Path], images, rows: dict[int, np.ndarray], eval_images,
                 log: Callable[[str], None], tta: bool = True) -> dict[int, FoldProbs]:
    """:func:`predict_fold` for every fold, in this process."""
    out = {}
    for i, k in enumerate(sorted(ckpts)):
        out[k] = predict_fold(cfg, ckpts[k], images, rows[k], eval_images, tta=tta)
        log(predicted_line(k, rows[k], eval_images, i + 1, len(ckpts)))
    return out


def fold_results(cfg: Config, prep, ckpts: dict[int, Path], *, tta: bool = True,
                 run_folds: FoldRunner | None = None, log: Callable[[str], None] = lambda s: None) -> dict[int, dict]:
    """Each fold model's validation probabilities (``probs``), eval probabilities (``eval_probs``, where ``prep``
    holds eval crops), training ``history``, val macro F1 (``f1``), ``ckpt``; with flip TTA where ``tta``.
    ``run_folds`` runs the predictions (default :func:`predict_here`); the results are the same wherever they
    run."""
    from maskclf import engine, folds, metrics

    rows = {k: folds.split(prep.train, k, cfg.folds.n, cfg.folds.seed)[1] for k in ckpts}
    eval_images = prep.eval_crops.images if prep.eval_crops is not None else None
    log(f"predicting with {len(ckpts)} fold models: {sum(map(len, rows.values()))} out-of-fold images"
        + (f", {len(eval_images)} eval images" if eval_images is not None else "")
        + f" (flip TTA {'on' if tta else 'off'})")
    got = (run_folds or predict_here)(cfg, ckpts, prep.train_crops.images, rows, eval_images, log, tta)
    results = {}
    for k in sorted(ckpts):
        probs, ev = got[k]
        results[k] = {"probs": probs, "eval_probs": ev, "history": engine.load_state(ckpts[k])["history"],
                      "ckpt": ckpts[k], "f1": metrics.macro_f1(prep.labels(rows[k], cfg.model.task), probs.argmax(1))}
    return results


def build(cfg: Config, prep, results: dict[int, dict], out: Path, log: Callable[[str], None] = print,
          tta: bool = True) -> dict:
    """Score the folds of ``results`` (from :func:`fold_results`, with flip TTA where ``tta``) and write the
    ensemble's files to ``out`` (:func:`output_files`); returns the scores (what metrics.json holds, less how the
    folds were trained)."""
    from maskclf import predict, tasks

    table, labels, probs, rows = _oof(cfg, prep, results)
    m = _scores(cfg, results, labels, probs, tta)
    m.update(_evaluate(cfg, prep, results, out, log))
    table.to_csv(out / "oof.csv", index=False)
    predict.save_confusion(labels, probs.argmax(1), out / "confusion_matrix.png",
                           f"{cfg.run.study}: out-of-fold confusion ({len(labels)} images, macro F1 {m['oof_f1']:.3f})",
                           tasks.class_names(cfg.model.task))
    _save_analysis(cfg, prep, table, labels, probs, rows, out)
    return m


def _oof(cfg: Config, prep, results: dict[int, dict]) -> tuple:
    """Out-of-fold table, labels (of the task, real 30/60 bands), probabilities and train rows of the selected
    folds, in train order."""
    from maskclf import folds, predict

    ks = sorted(results)
    rows = np.concatenate([folds.split(prep.train, k, cfg.folds.n, cfg.folds.seed)[1] for k in ks])
    fold = np.concatenate([np.full(len(results[k]["probs"]), k) for k in ks])
    probs = np.concatenate([results[k]["probs"] for k in ks])
    order = np.argsort(rows)
    rows, fold, probs = rows[order], fold[order], probs[order]
    labels = prep.labels(rows, cfg.model.task)
    return predict.oof_table(prep.train, rows, fold, probs, labels), labels, probs, rows


def _evaluate(cfg: Config, prep, results: dict[int, dict], out: Path, log: Callable[[str], None]) -> dict:
    """The ensemble on the eval images (each fold model's ``eval_probs``): eval_probs.csv, submission.csv
    (18 classes only), and scores where answers exist."""
    from maskclf import metrics, predict

    each = [results[k]["eval_probs"] for k in sorted(results)]
    probs = predict.soft_vote(each)
    predict.write_probs(prep.eval, probs, out / "eval_probs.csv")
    if cfg.model.task == "all":
        info = Path(cfg.data.root).expanduser() / "eval" / "info.csv"
        predict.write_submission(prep.eval, probs, info, out / "submission.csv")
    if prep.answers is None:
        return {}
    y = prep.eval_labels(cfg.model.task)
    known = y >= 0
    y = y[known]
    folds_f1 = [metrics.macro_f1(y, p[known].argmax(1)) for p in each]
    return {"eval_f1": metrics.macro_f1(y, probs[known].argmax(1)), "eval_f1_folds": folds_f1,
            "eval_f1_fold_mean": float(np.mean(folds_f1))}


def _scores(cfg: Config, results: dict[int, dict], labels: np.ndarray, probs: np.ndarray, tta: bool) -> dict:
    from maskclf import metrics, tasks

    ks, task = sorted(results), cfg.model.task
    names = tasks.class_names(task)
    oof = metrics.scores(probs, labels, task)
    per_class = metrics.per_class_f1(labels, probs.argmax(1), len(names)).round(4).tolist()
    return {"task": task, "oof_f1": oof["val_f1"], "oof_acc": oof["val_acc"],
            **{k: v for k, v in oof.items() if k.endswith("_acc") and k != "val_acc"},
            **({"band_f1": dict(zip(AGE_BANDS, (oof[b] for b in metrics.BANDS)))} if metrics.BANDS[0] in oof else {}),
            **({"task_f1": task_f1(labels, probs)} if task == "all" else {}),
            "folds": ks, "fold_f1": [results[k]["f1"] for k in ks],
            "per_class_f1": dict(zip(names, per_class)),
            "tta": tta, "epochs": cfg.train.epochs, "images": int(len(labels))}


def task_f1(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Each task's macro F1 of 18-class probabilities summed down to it: what separate mask, gender and age
    models (``search.combine``) have to beat."""
    from maskclf import metrics, tasks

    return {t: metrics.macro_f1(tasks.targets(labels, t), tasks.marginal(probs, t).argmax(1)) for t in tasks.PARTS}


def _save_analysis(cfg: Config, prep, table, labels: np.ndarray, probs: np.ndarray, rows: np.ndarray,
                   out: Path) -> None:
    """per_class_f1.png, errors.png and errors.csv of the out-of-fold predictions."""
    from maskclf import analysis

    n = len(labels)
    task = cfg.model.task
    analysis.save_per_class_f1(labels, probs.argmax(1), out / "per_class_f1.png",
                               f"{cfg.run.study}: out-of-fold per-class F1 ({n} images)", task=task)
    paths, persons = table["path"].astype(str).tolist(), table["person"].astype(str).tolist()
    analysis.save_error_table(labels, probs, out / "errors.csv", paths, persons, task=task)
    # The whole crop store goes in with the rows: only the crops shown are read, never a copy of all.
    analysis.save_error_sheet(labels, probs, prep.train_crops.images, out / "errors.png", crop_rows=rows, task=task,
                              captions=[f"{p} · {Path(f).stem}" for p, f in zip(persons, paths)],
                              title=f"{cfg.run.study}: most frequent out-of-fold confusions ({n} images)")
