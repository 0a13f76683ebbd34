"""``python -m search.finalize``: the study's best config on every fold in parallel on Ray, then a
soft-voting ensemble, the submission, out-of-fold scores and a registered MLflow model.

Folds checkpoint every epoch into ``<run.dir>/<study>/final/folds/fold<k>/``, so running the
command again continues an interrupted finalize: complete folds are loaded, unfinished ones
resume. A finished finalize (``metrics.json`` written last) is never overwritten: the next goes
to ``final-2/``. All MLflow writes come from the driver.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from maskclf import config as config_mod
from maskclf.config import Config
from maskclf.errors import InputError, cli
from search.tracking import Tracker, trial_params, tracking_uri
from search.tune import study_dir

DONE_FILE = "metrics.json"  # written last: its presence marks a finished finalize
ANALYSIS_FILES = ("per_class_f1.png", "errors.png", "errors.csv")
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


def _fold_cfg(cfg: Config, k: int) -> Config:
    values = {"folds.fold": k}
    if cfg.search.gpus_per_trial == 0:
        values["train.device"] = "cpu"
    return config_mod.apply(cfg, values)


def _epochs_done(ckpt: Path) -> int:
    from maskclf import engine

    try:
        return int(engine.load_state(ckpt)["epoch"]) + 1
    except Exception:  # missing or unreadable: the fold starts over
        return 0


def _val_probs(cfg: Config, ckpt: Path, images: np.ndarray, device: str) -> tuple[np.ndarray, list]:
    from maskclf import engine, predict

    net, ck_cfg = engine.load_model(ckpt, device)
    probs = predict.model_probs(net, ck_cfg, images, tta=cfg.finalize.tta, batch_size=cfg.train.batch_size * 2,
                                device=device)
    return probs, engine.load_state(ckpt)["history"]


def _read_files(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    """Replace ``folder`` by ``files`` atomically (a checkpoint trained on another node)."""
    import shutil

    tmp = folder.with_name(folder.name + ".recv")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, blob in files.items():
        (tmp / name).write_bytes(blob)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _fold_task(cfg: Config, prep, k: int, out_dir: str, resume: dict[str, bytes] | None, driver_node: str) -> dict:
    """One fold on a Ray worker: train (or resume) to the full budget, then score its validation rows."""
    import ray

    from maskclf import engine

    ckpt = Path(out_dir) / "checkpoint"
    if resume and _epochs_done(ckpt) == 0:  # the driver's partial checkpoint, when this is another node
        _write_files(ckpt, resume)
    fold_cfg = _fold_cfg(cfg, k)
    train, val = prep.fold(fold_cfg)
    engine.fit(fold_cfg, train, val, out_dir=out_dir, resume=ckpt if ckpt.is_dir() else None, log=lambda s: None)
    probs, history = _val_probs(fold_cfg, ckpt, val.images, fold_cfg.train.device)
    from search.tune import node_name

    remote = ray.get_runtime_context().get_node_id() != driver_node
    return {"fold": k, "probs": probs, "history": history, "node": node_name(),
            "files": _read_files(ckpt) if remote else None}


def _log_fold(tracker: Tracker, parent: str, cfg: Config, k: int, res: dict) -> None:
    """The fold's child run: params, the epochs not logged yet (a resumed fold logs each once), final F1."""
    from search.tracking import run_name

    fold_cfg = config_mod.apply(cfg, {"folds.fold": k})
    run = tracker.start("fold", run_name(fold_cfg, f"fold {k} ·"), key=str(k), parent=parent,
                        params=trial_params(fold_cfg))
    logged = {m.step for m in tracker.client.get_metric_history(run, "val_f1")}
    for m in res["history"]:
        if m["epoch"] not in logged:
            tracker.log_metrics(run, {n: v for n, v in m.items() if n != "epoch"}, step=m["epoch"])
    if tracker.client.get_run(run).data.metrics.get("fold_f1") != res["f1"]:
        tracker.log_metrics(run, {"fold_f1": res["f1"]})
    tracker.set_tags(run, {"last_finalize": res["note"], "epochs": len(res["history"]), **(
        {"node": res["node"]} if res.get("node") else {})})
    tracker.finish(run)


def _train_folds(cfg: Config, prep, ks: list[int], out: Path, on_done: Callable[[int, dict], None],
                 log: Callable[[str], None]) -> dict[int, dict]:
    """Every selected fold's validation probabilities and history; only unfinished folds train."""
    from maskclf import data, folds, metrics

    ckpt = {k: out / "folds" / f"fold{k}" / "checkpoint" for k in ks}
    done = {k: _epochs_done(ckpt[k]) for k in ks}
    results: dict[int, dict] = {}

    def finished(k: int, res: dict, what: str, trained: bool) -> None:
        labels = data.labels(prep.train.iloc[folds.split(prep.train, k, cfg.folds.n, cfg.folds.seed)[1]])
        res.update(f1=metrics.macro_f1(labels, res["probs"].argmax(1)), note=what, trained=trained, ckpt=ckpt[k])
        results[k] = res
        log(f"fold {k}: {what}; val macro F1 {res['f1']:.4f} ({len(results)}/{len(ks)} folds)")
        on_done(k, res)

    for k in [k for k in ks if done[k] >= cfg.train.epochs]:
        rows = folds.split(prep.train, k, cfg.folds.n, cfg.folds.seed)[1]
        probs, history = _val_probs(cfg, ckpt[k], prep.train_crops.images[rows], cfg.train.device)
        finished(k, {"probs": probs, "history": history}, "checkpoint complete, not retrained", False)
    todo = [k for k in ks if k not in results]
    if todo:
        _run_on_ray(cfg, prep, todo, ckpt, done, finished, log)
    return results


def _run_on_ray(cfg: Config, prep, todo: list[int], ckpt: dict[int, Path], done: dict[int, int],
                finished: Callable, log: Callable[[str], None]) -> None:
    import ray

    from maskclf.dataset import Prepared
    from search.tune import object_store_ready

    s = cfg.search
    # SPREAD: one fold per node first, so a cluster's GPUs train the folds side by side
    task = ray.remote(num_cpus=s.cpus_per_trial, num_gpus=s.gpus_per_trial, max_retries=s.max_failures,
                      retry_exceptions=True, scheduling_strategy="SPREAD")(_fold_task)
    prep_ref = ray.put(object_store_ready(Prepared(prep.train, prep.train_crops)))  # once, shared by every fold
    node = ray.get_runtime_context().get_node_id()
    pending, t0 = {}, time.perf_counter()
    for k in todo:
        start = f"resuming after epoch {done[k]}" if done[k] else "training"
        log(f"fold {k}: {start} ({cfg.train.epochs} epochs) -> {ckpt[k].parent}")
        resume = _read_files(ckpt[k]) if done[k] else None
        pending[task.remote(cfg, prep_ref, k, str(ckpt[k].parent), resume, node)] = k
    failed = []
    while pending:
        [ref], _ = ray.wait(list(pending))
        k = pending.pop(ref)
        try:
            res = ray.get(ref)
        except Exception as e:  # the other folds still finish and keep their checkpoints
            failed.append(f"fold {k} failed ({type(e).__name__}: {str(e).strip().splitlines()[-1][:300]})")
            log(failed[-1])
            continue
        files = res.pop("files")
        if files:  # trained on another node: keep the checkpoint on the driver too
            _write_files(ckpt[k], files)
        finished(k, res, f"trained epochs {done[k] + 1}-{cfg.train.epochs} on node {res['node']} "
                         f"(done after {time.perf_counter() - t0:.0f} s)", True)
    if failed:
        raise RuntimeError("; ".join(failed) + " -- run the same command again to resume")


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


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


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
            "tta": cfg.finalize.tta, "epochs": cfg.train.epochs, "images": int(len(labels)),
            "trained_folds": [k for k in ks if results[k]["trained"]],
            "fold_nodes": {str(k): results[k]["node"] for k in ks if results[k].get("node")}}


def _start(cfg: Config, tracker: Tracker, ks: list[int], log: Callable[[str], None]) -> tuple[Path, str]:
    """The final dir (new or continued) with the config used, and its MLflow finalize run."""
    out = final_dir(cfg, log)
    if any(_epochs_done(out / "folds" / f"fold{k}" / "checkpoint") < cfg.train.epochs for k in ks):
        from search.tune import check_resources, connect

        joined = connect(cfg, log)
        # a cluster that cannot run a fold is refused before anything is written
        check_resources(cfg, wait_s=600 if joined else 0, log=log)
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
    from maskclf import dataset, predict
    from search import registry

    cfg = final_epochs(cfg)
    ks = fold_list(cfg)
    tracker = Tracker(tracking_uri(cfg), cfg.run.study)  # a bad tracking store fails before any work
    prep = dataset.prepare(cfg, need_eval=True, log=log)
    out, parent = _start(cfg, tracker, ks, log)
    try:
        results = _train_folds(cfg, prep, ks, out, lambda k, r: _log_fold(tracker, parent, cfg, k, r), log)
        table, labels, probs, rows = _oof(cfg, prep, results)
        m = _scores(cfg, results, labels, probs)
        m.update(_evaluate(cfg, prep, results, out, log))
        table.to_csv(out / "oof.csv", index=False)
        predict.save_confusion(labels, probs.argmax(1), out / "confusion_matrix.png",
                               f"{cfg.run.study}: out-of-fold confusion ({len(labels)} images, "
                               f"macro F1 {m['oof_f1']:.3f})")
        _save_analysis(cfg, prep, table, labels, probs, rows, out)
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
    log(f"out-of-fold macro F1 {m['oof_f1']:.4f}{ev}")
    log(f"outputs in {out}; model models:/{cfg.run.study}@{registry.ALIAS} (version {m['model_version']}); "
        f"browse: {tracker.ui_command()}")
    return m


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


def _log_results(tracker: Tracker, parent: str, m: dict, out: Path) -> None:
    tracker.log_metrics(parent, {k: v for k, v in m.items() if k in (
        "oof_f1", "oof_acc", "mask_acc", "gender_acc", "age_acc", "eval_f1", "eval_f1_fold_mean")})
    for k, f1 in zip(m["folds"], m["fold_f1"]):
        tracker.log_metrics(parent, {"fold_f1": f1}, step=k)
    for k, f1 in zip(m["folds"], m.get("eval_f1_folds", [])):
        tracker.log_metrics(parent, {"eval_f1_fold": f1}, step=k)
    for name in ("submission.csv", "oof.csv", "confusion_matrix.png", *ANALYSIS_FILES, "config.yaml"):
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
