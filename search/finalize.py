"""``python -m search.finalize``: the study's best config on every fold in parallel on Ray, then a
soft-voting ensemble, the submission, out-of-fold scores and a registered MLflow model.

The folds are one Tune experiment of the search's own trainable (a grid over ``folds.fold``),
checkpointing every epoch to the study's Tune storage; each finished fold's checkpoint is copied
to ``<run.dir>/<study>/final/folds/fold<k>/``. Running the command again continues an interrupted
finalize: complete folds are loaded, unfinished ones resume from their last epoch. A finished
finalize (``metrics.json`` written last) is never overwritten: the next goes to ``final-2/``. All
MLflow writes come from the driver. The folds train as in ``search.cluster.folds``; the fold models' out-of-fold and
eval predictions run as Ray tasks too (``search.cluster.predictions``), where the folds trained: the driver only
averages, scores and writes them. With ``pseudo.enabled`` every fold also trains on the eval images
that a finished finalize's ensemble is confident about (``pseudo_labels.csv``; never a validation fold).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from maskclf import config as config_mod
from maskclf.config import Config
from maskclf.errors import InputError, cli
from search.cluster.experiment import epochs_done, study_dir
from search.cluster.folds import train_folds
from search.study import settings
from search.study.outputs import DONE_FILE, finished, output_dir, write_json
from search.tracking import Tracker, trial_params, tracking_uri

def load_best(config_path: str | Path | None, best: str | Path | None, overrides: list[str]) -> Config:
    """The best config of the study (``--best`` or ``<run.dir>/<study>/best_config.yaml``) with ``overrides``."""
    path = Path(best) if best else study_dir(settings.load(config_path, overrides)) / "best_config.yaml"
    if not path.is_file():
        raise InputError(f"no best config at {path}: run `python -m search.tune` first or pass --best PATH")
    return final_epochs(settings.load(path, overrides))


def final_epochs(cfg: Config) -> Config:
    """``cfg`` with ``train.epochs`` set to ``finalize.epochs`` where that is set: a search ranks configurations
    on a short budget, the fold models may train longer."""
    if cfg.finalize.epochs and cfg.finalize.epochs != cfg.train.epochs:
        return config_mod.validate(config_mod.apply(cfg, {"train.epochs": cfg.finalize.epochs}))
    return cfg


def fold_list(cfg: Config) -> list[int]:
    """The folds ``finalize.folds`` selects ("all" or a comma list such as "0,2")."""
    text = cfg.finalize.folds.strip()
    if text == "all":
        return list(range(cfg.folds.n))
    try:
        ks = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        ks = []
    if not ks or any(not 0 <= k < cfg.folds.n for k in ks):
        raise InputError(f"finalize.folds must be 'all' or a comma list of folds in 0..{cfg.folds.n - 1}, "
                         f"got '{cfg.finalize.folds}'")
    return ks


def _log_fold(tracker: Tracker, parent: str, cfg: Config, k: int, res: dict) -> None:
    """The end of the fold's child run (its epochs are logged by MlflowTrials as it trains): final F1, how
    this finalize got it, where it trained."""
    from search.tracking import run_name

    fold_cfg = config_mod.apply(cfg, {"folds.fold": k})
    run = tracker.start("fold", run_name(fold_cfg, f"fold {k} ·"), key=str(k), parent=parent,
                        params=trial_params(fold_cfg))
    if tracker.client.get_run(run).data.metrics.get("fold_f1") != res["f1"]:
        tracker.log_metrics(run, {"fold_f1": res["f1"]})
    tracker.set_tags(run, {"last_finalize": res["note"], "epochs": len(res["history"]), **(
        {"node": res["node"]} if res.get("node") else {})})
    tracker.finish(run)


def _start(cfg: Config, tracker: Tracker, ks: list[int], log: Callable[[str], None]) -> tuple[Path, str]:
    """The final dir (new or continued) with the config used, and its MLflow finalize run."""
    out = output_dir(cfg, log)
    if any(epochs_done(out / "folds" / f"fold{k}" / "checkpoint") < cfg.train.epochs for k in ks):
        from search import cluster

        joined = cluster.connect(cfg, log)
        # a cluster that cannot run a fold is refused before anything is written
        cluster.check_resources(cfg, wait_s=600 if joined else 0, log=log)
        cluster.check_storage(cfg)
    log(f"{'continuing the interrupted finalize' if out.exists() else 'finalizing'} in {out}: "
        f"folds {','.join(map(str, ks))} of {cfg.folds.n}, {cfg.train.epochs} epochs, {cfg.model.backbone}")
    out.mkdir(parents=True, exist_ok=True)
    config_mod.save(cfg, out / "config.yaml")
    params = {**trial_params(cfg), "fold": cfg.finalize.folds, "tta": cfg.finalize.tta,
              **({"pseudo_source": cfg.pseudo.source, "pseudo_min_precision": cfg.pseudo.min_precision}
                 if cfg.pseudo.enabled else {})}
    parent = tracker.start("finalize", f"finalize · {cfg.run.study} · {out.name}", key=out.name, params=params,
                           tags={"final_dir": str(out)})
    return out, parent


def run(cfg: Config, *, log: Callable[[str], None] = print) -> dict:
    """Finalize (or continue finalizing) ``cfg`` on its folds; returns what metrics.json holds."""
    from search.study import driver_lock

    cfg = final_epochs(cfg)
    ks = fold_list(cfg)
    tracker = Tracker(tracking_uri(cfg), cfg.run.study)  # a bad tracking store fails before any work
    with driver_lock(cfg, "python -m search.finalize", log):  # never beside a search or finalize of the study
        return _finalize(cfg, ks, tracker, log)


def _finalize(cfg: Config, ks: list[int], tracker: Tracker, log: Callable[[str], None]) -> dict:
    from maskclf import dataset, ensemble
    from search.cluster import crops, predictions
    from search.tracking import registry

    prep = dataset.prepare(cfg, need_eval=True, log=log, run_shards=crops.runner(cfg, log))
    pseudo = None
    if cfg.pseudo.enabled:
        prep, pseudo = _pseudo_labels(cfg, prep, log)
    out, parent = _start(cfg, tracker, ks, log)
    with tracker.ending(parent):  # the run shows how it ended; the next command continues it
        if pseudo is not None:
            pseudo.pop("table").to_csv(out / "pseudo_labels.csv", index=False)
            tracker.log_artifact(parent, out / "pseudo_labels.csv")
            tracker.log_metrics(parent, {"pseudo_images": pseudo["taken"]})
        ckpts, notes = train_folds(cfg, prep, ks, out, tracker, parent, log)
        results = ensemble.fold_results(cfg, prep, ckpts, tta=cfg.finalize.tta, run_folds=predictions.runner(cfg, log),
                                        log=log)
        for i, k in enumerate(ks):
            note, node = notes[k]
            results[k].update(note=note, node=node)
            log(f"fold {k}: {note}; val macro F1 {results[k]['f1']:.4f} ({i + 1}/{len(ks)} folds)")
            _log_fold(tracker, parent, cfg, k, results[k])
        m = ensemble.build(cfg, prep, results, out, log, tta=cfg.finalize.tta)
        m["trained_folds"] = [k for k in ks if "not retrained" not in notes[k][0]]
        m["fold_nodes"] = {str(k): notes[k][1] for k in ks if notes[k][1]}
        if pseudo is not None:
            m["pseudo"] = pseudo
        _log_results(tracker, parent, m, out)
        m["model_version"] = registry.register(tracker.uri, parent, cfg.run.study,
                                               {k: results[k]["ckpt"] for k in ks}, tta=cfg.finalize.tta,
                                               tags={"oof_f1": f"{m['oof_f1']:.4f}", "final_dir": str(out)})
        tracker.log_text(parent, json.dumps(m, indent=2), DONE_FILE)
        write_json(out / DONE_FILE, m)
        tracker.set_tags(parent, {"folds_trained": ",".join(map(str, m["trained_folds"])) or "none"})
    ev = (f", eval macro F1 {m['eval_f1']:.4f} (single folds {m['eval_f1_fold_mean']:.4f} on average)"
          if "eval_f1" in m else "")
    task = "" if cfg.model.task == "all" else f"{cfg.model.task} model: "
    log(f"{task}out-of-fold macro F1 {m['oof_f1']:.4f}{ev}")
    if cfg.model.task != "all":
        log(f"{out / 'eval_probs.csv'} holds its eval probabilities: join it with the other tasks by "
            f"`python -m search.combine mask=STUDY gender=STUDY age=STUDY`")
    log(f"outputs in {out}; model models:/{cfg.run.study}@{registry.ALIAS} (version {m['model_version']}); "
        f"browse: {tracker.ui_command()}")
    return m


def _pseudo_labels(cfg: Config, prep, log: Callable[[str], None]) -> tuple[Any, dict]:
    """``prep`` with the confident eval images of finalize ``pseudo.source`` as its ``extra``, and what was
    taken: the threshold chosen on that ensemble's out-of-fold predictions, the images per class (``table``:
    ImageID, label, prob, for pseudo_labels.csv)."""
    import numpy as np
    import pandas as pd

    from maskclf import pseudo, tasks

    source, why = finished(study_dir(cfg), cfg.pseudo.source)
    if source is None:
        raise InputError(f"pseudo.source: {why}")
    saved = settings.load_saved(source / "config.yaml")
    differ = [k for k in ("model.task", "data.root", "folds.n", "folds.seed")
              if config_mod.flat(saved)[k] != config_mod.flat(cfg)[k]]
    if differ:
        raise InputError(f"pseudo.source: {source} differs from this finalize in {', '.join(differ)}")
    oof, ev = pd.read_csv(source / "oof.csv"), pd.read_csv(source / "eval_probs.csv")
    cols = [f"p{c}" for c in range(tasks.num_classes(cfg.model.task))]
    choice = pseudo.choose_threshold(oof[cols].to_numpy(), oof["label"].to_numpy(), cfg.pseudo.min_precision)
    ev = ev.set_index("ImageID").reindex(prep.eval["image_id"].to_numpy())
    if ev[cols].isna().any(axis=None):
        raise InputError(f"pseudo.source: {source / 'eval_probs.csv'} does not cover this dataset's eval images")
    probs = ev[cols].to_numpy()
    rows, labels = pseudo.select(probs, choice.threshold)
    names = tasks.class_names(cfg.model.task)
    per_class = np.bincount(labels, minlength=len(names))
    prep = prep.with_extra(prep.eval_samples(rows, labels))
    out = {"source": source.name, "min_precision": cfg.pseudo.min_precision, "threshold": choice.threshold,
           "oof_precision": choice.precision, "oof_coverage": choice.coverage, "taken": int(len(rows)),
           "eval_images": int(len(probs)), "per_class": dict(zip(names, per_class.tolist()))}
    truth = prep.eval_labels(cfg.model.task)[rows]
    if (truth >= 0).any():  # a check of the labels taken, never used to take them
        out["eval_precision"] = float((labels[truth >= 0] == truth[truth >= 0]).mean())
    out["table"] = pd.DataFrame({"ImageID": prep.eval["image_id"].to_numpy()[rows], "label": labels,
                                 "prob": probs[rows].max(1).round(5) if len(rows) else []})
    th = "no threshold" if choice.threshold is None else f"threshold {choice.threshold:.3f}"
    log(f"pseudo-labels from {source}: {th} (out-of-fold precision {choice.precision:.3f} at coverage "
        f"{choice.coverage:.2f}, asked {cfg.pseudo.min_precision}); {len(rows)} of {len(probs)} eval images join "
        f"every fold's training set: " + ", ".join(f"{n} {c}" for n, c in zip(names, per_class) if c))
    return prep, out


def _log_results(tracker: Tracker, parent: str, m: dict, out: Path) -> None:
    tracker.log_metrics(parent, {k: v for k, v in m.items() if k in (
        "oof_f1", "oof_acc", "mask_acc", "gender_acc", "age_acc", "eval_f1", "eval_f1_fold_mean")})
    for k, f1 in zip(m["folds"], m["fold_f1"]):
        tracker.log_metrics(parent, {"fold_f1": f1}, step=k)
    for k, f1 in zip(m["folds"], m.get("eval_f1_folds", [])):
        tracker.log_metrics(parent, {"eval_f1_fold": f1}, step=k)
    from maskclf.ensemble import output_files

    for name in (*output_files(m["task"]), "config.yaml"):
        tracker.log_artifact(parent, out / name)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m search.finalize",
        description="Train the study's best config on every fold in parallel (Ray), ensemble them by soft voting, "
                    "write the submission and register the model in MLflow. Run it again to continue an "
                    "interrupted finalize.",
    )
    p.add_argument("--config", default=str(config_mod.DEFAULT_CONFIG), help="YAML config (default: %(default)s)")
    p.add_argument("--best", metavar="PATH", help="best config to finalize (default: <run.dir>/<study>/best_config.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides applied on top of the best config, e.g. finalize.tta=false")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = load_best(args.config, args.best, args.overrides)
    run(cfg, log=lambda s: print(s, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
