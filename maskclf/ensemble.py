"""The k-fold ensemble: from fold checkpoints and face crops to out-of-fold scores, the eval
submission (soft voting of the fold models, with flip TTA) and the plots of its errors.

No Ray and no MLflow here: ``search.finalize`` trains the folds, calls these, logs and registers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from maskclf.config import Config

ANALYSIS_FILES = ("per_class_f1.png", "errors.png", "errors.csv")
OUTPUT_FILES = ("submission.csv", "oof.csv", "confusion_matrix.png", *ANALYSIS_FILES)


def fold_results(cfg: Config, prep, ckpts: dict[int, Path]) -> dict[int, dict]:
    """Each fold model's validation probabilities (``probs``), training ``history``, val macro F1 (``f1``), ``ckpt``."""
    from maskclf import data, engine, folds, metrics, predict

    device = str(engine.resolve_device(cfg.train.device))
    results = {}
    for k in sorted(ckpts):
        rows = folds.split(prep.train, k, cfg.folds.n, cfg.folds.seed)[1]
        net, ck_cfg = engine.load_model(ckpts[k], device)
        probs = predict.model_probs(net, ck_cfg, prep.train_crops.images[rows], tta=cfg.finalize.tta,
                                    batch_size=cfg.train.batch_size * 2, device=device)
        results[k] = {"probs": probs, "history": engine.load_state(ckpts[k])["history"], "ckpt": ckpts[k],
                      "f1": metrics.macro_f1(data.labels(prep.train.iloc[rows]), probs.argmax(1))}
    return results


def build(cfg: Config, prep, results: dict[int, dict], out: Path, log: Callable[[str], None] = print) -> dict:
    """Score the folds of ``results`` (from :func:`fold_results`) and write the ensemble's files to ``out``
    (:data:`OUTPUT_FILES`); returns the scores (what metrics.json holds, less how the folds were trained)."""
    from maskclf import predict

    table, labels, probs, rows = _oof(cfg, prep, results)
    m = _scores(cfg, results, labels, probs)
    m.update(_evaluate(cfg, prep, results, out, log))
    table.to_csv(out / "oof.csv", index=False)
    predict.save_confusion(labels, probs.argmax(1), out / "confusion_matrix.png",
                           f"{cfg.run.study}: out-of-fold confusion ({len(labels)} images, macro F1 {m['oof_f1']:.3f})")
    _save_analysis(cfg, prep, table, labels, probs, rows, out)
    return m


def _oof(cfg: Config, prep, results: dict[int, dict]) -> tuple:
    """Out-of-fold table, labels (real 30/60 bands), probabilities and train rows of the selected folds, in train
    order."""
    from maskclf import data, folds, predict

    ks = sorted(results)
    rows = np.concatenate([folds.split(prep.train, k, cfg.folds.n, cfg.folds.seed)[1] for k in ks])
    fold = np.concatenate([np.full(len(results[k]["probs"]), k) for k in ks])
    probs = np.concatenate([results[k]["probs"] for k in ks])
    order = np.argsort(rows)
    rows, fold, probs = rows[order], fold[order], probs[order]
    labels = data.labels(prep.train.iloc[rows])
    return predict.oof_table(prep.train, rows, fold, probs, labels), labels, probs, rows


def _evaluate(cfg: Config, prep, results: dict[int, dict], out: Path, log: Callable[[str], None]) -> dict:
    """The ensemble on the eval images: submission.csv, and scores where answers exist."""
    from maskclf import engine, metrics, predict

    ks = sorted(results)
    device = str(engine.resolve_device(cfg.train.device))
    members = predict.load_ensemble([results[k]["ckpt"] for k in ks], device)
    log(f"predicting {len(prep.eval)} eval images with {len(ks)} fold models (flip TTA {'on' if cfg.finalize.tta else 'off'})")
    each = predict.predict_each(members, prep.eval_crops.images, tta=cfg.finalize.tta,
                                batch_size=cfg.train.batch_size * 2, device=device, log=log)
    probs = predict.soft_vote(each)
    info = Path(cfg.data.root).expanduser() / "eval" / "info.csv"
    predict.write_submission(prep.eval, probs, info, out / "submission.csv")
    if prep.answers is None:
        return {}
    y = prep.answers.reindex(prep.eval["image_id"].to_numpy())
    known = y.notna().to_numpy()
    y = y[known].to_numpy().astype(np.int64)
    folds_f1 = [metrics.macro_f1(y, p[known].argmax(1)) for p in each]
    return {"eval_f1": metrics.macro_f1(y, probs[known].argmax(1)), "eval_f1_folds": folds_f1,
            "eval_f1_fold_mean": float(np.mean(folds_f1))}


def _scores(cfg: Config, results: dict[int, dict], labels: np.ndarray, probs: np.ndarray) -> dict:
    from maskclf import metrics
    from maskclf.labels import class_name

    ks = sorted(results)
    oof = metrics.scores(probs, labels)
    per_class = metrics.per_class_f1(labels, probs.argmax(1)).round(4).tolist()
    return {"oof_f1": oof["val_f1"], "oof_acc": oof["val_acc"], "mask_acc": oof["mask_acc"],
            "gender_acc": oof["gender_acc"], "age_acc": oof["age_acc"], "folds": ks,
            "fold_f1": [results[k]["f1"] for k in ks],
            "per_class_f1": {class_name(c): f for c, f in enumerate(per_class)},
            "tta": cfg.finalize.tta, "epochs": cfg.train.epochs, "images": int(len(labels))}


def _save_analysis(cfg: Config, prep, table, labels: np.ndarray, probs: np.ndarray, rows: np.ndarray,
                   out: Path) -> None:
    """per_class_f1.png, errors.png and errors.csv of the out-of-fold predictions."""
    from maskclf import analysis

    n = len(labels)
    analysis.save_per_class_f1(labels, probs.argmax(1), out / "per_class_f1.png",
                               f"{cfg.run.study}: out-of-fold per-class F1 ({n} images)")
    paths, persons = table["path"].astype(str).tolist(), table["person"].astype(str).tolist()
    analysis.save_error_table(labels, probs, out / "errors.csv", paths, persons)
    # The whole crop store goes in with the rows: only the crops shown are read, never a copy of all.
    analysis.save_error_sheet(labels, probs, prep.train_crops.images, out / "errors.png", crop_rows=rows,
                              captions=[f"{p} · {Path(f).stem}" for p, f in zip(persons, paths)],
                              title=f"{cfg.run.study}: most frequent out-of-fold confusions ({n} images)")
