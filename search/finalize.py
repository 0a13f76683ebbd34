"""``python -m search.finalize``: the study's best config on every fold in parallel on Ray, then a
soft-voting ensemble, the submission, out-of-fold scores and a registered MLflow model.

The folds are one Tune experiment of the search's own trainable (a grid over ``folds.fold``),
checkpointing every epoch to the study's Tune storage; each finished fold's checkpoint is copied
to ``<run.dir>/<study>/final/folds/fold<k>/``. Running the command again continues an interrupted
finalize: complete folds are loaded, unfinished ones resume from their last epoch. A finished
finalize (``metrics.json`` written last) is never overwritten: the next goes to ``final-2/``. All
MLflow writes come from the driver.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

from maskclf import config as config_mod
from maskclf.config import Config
from maskclf.errors import InputError, RunFailed, cli
from search.tracking import Tracker, trial_params, tracking_uri
from search.experiment import epochs_done, study_dir

DONE_FILE = "metrics.json"  # written last: its presence marks a finished finalize
# Keys that change where or how fast a fold trains, not the model it yields.
_RUNTIME_KEYS = {"folds.fold", "train.device", "train.num_workers", "train.threads", "faces.device",
                 "faces.batch_size", "faces.cache_dir"}


def load_best(config_path: str | Path | None, best: str | Path | None, overrides: list[str]) -> Config:
    """The best config of the study (``--best`` or ``<run.dir>/<study>/best_config.yaml``) with ``overrides``."""
    path = Path(best) if best else study_dir(config_mod.load(config_path, overrides)) / "best_config.yaml"
    if not path.is_file():
        raise InputError(f"no best config at {path}: run `python -m search.tune` first or pass --best PATH")
    return final_epochs(config_mod.load(path, overrides))


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


def _model_keys(cfg: Config) -> dict:
    return {k: v for k, v in config_mod.flat(cfg).items()
            if k.split(".")[0] in ("data", "faces", "folds", "model", "train") and k not in _RUNTIME_KEYS}


def final_dir(cfg: Config, log: Callable[[str], None] = print) -> Path:
    """``final/``, or ``final-2/``, ...: the first that is new or an interrupted finalize of the same models."""
    base, n = study_dir(cfg) / "final", 1
    while True:
        path = base if n == 1 else base.with_name(f"final-{n}")
        if not path.exists():
            return path
        if not (path / DONE_FILE).is_file():
            saved = path / "config.yaml"
            if not saved.is_file() or _model_keys(config_mod.load(saved)) == _model_keys(cfg):
                return path
            log(f"{path} holds an interrupted finalize of another configuration; leaving it as it is")
        n += 1


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


def _train_folds(cfg: Config, prep, ks: list[int], out: Path, tracker: Tracker, parent: str,
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

    from maskclf.dataset import Prepared
    from search import cluster, experiment
    from search.callback import MlflowTrials
    from search.progress import FoldCheckpoints

    name = f"{cfg.run.study}-{out.name}-folds{'_'.join(map(str, ks))}"
    for k in todo:
        log(f"fold {k}: training ({cfg.train.epochs} epochs) -> {out / 'folds' / f'fold{k}'}")
    callbacks = [MlflowTrials(tracker.uri, cfg, parent=parent, folds=True), FoldCheckpoints(out, cfg.train.epochs)]
    results = experiment.fit(
        cfg, name, experiment.trainable(cfg, experiment.object_store_ready(Prepared(prep.train, prep.train_crops))),
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


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def _start(cfg: Config, tracker: Tracker, ks: list[int], log: Callable[[str], None]) -> tuple[Path, str]:
    """The final dir (new or continued) with the config used, and its MLflow finalize run."""
    out = final_dir(cfg, log)
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
    params = {**trial_params(cfg), "fold": cfg.finalize.folds, "tta": cfg.finalize.tta}
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
    from search import registry

    prep = dataset.prepare(cfg, need_eval=True, log=log)
    out, parent = _start(cfg, tracker, ks, log)
    try:
        ckpts, notes = _train_folds(cfg, prep, ks, out, tracker, parent, log)
        results = ensemble.fold_results(cfg, prep, ckpts)
        for i, k in enumerate(ks):
            note, node = notes[k]
            results[k].update(note=note, node=node)
            log(f"fold {k}: {note}; val macro F1 {results[k]['f1']:.4f} ({i + 1}/{len(ks)} folds)")
            _log_fold(tracker, parent, cfg, k, results[k])
        m = ensemble.build(cfg, prep, results, out, log)
        m["trained_folds"] = [k for k in ks if "not retrained" not in notes[k][0]]
        m["fold_nodes"] = {str(k): notes[k][1] for k in ks if notes[k][1]}
        _log_results(tracker, parent, m, out)
        m["model_version"] = registry.register(tracker.uri, parent, cfg.run.study,
                                               {k: results[k]["ckpt"] for k in ks}, tta=cfg.finalize.tta,
                                               tags={"oof_f1": f"{m['oof_f1']:.4f}", "final_dir": str(out)})
        tracker.log_text(parent, json.dumps(m, indent=2), DONE_FILE)
        _write_json(out / DONE_FILE, m)
    except BaseException as e:  # the run shows how it ended; the next command continues it
        tracker.finish(parent, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    tracker.set_tags(parent, {"folds_trained": ",".join(map(str, m["trained_folds"])) or "none"})
    tracker.finish(parent)
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
