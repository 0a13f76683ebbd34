"""``python -m search.tune``: Ray Tune + OptunaSearch (TPE) + ASHA over a declared space, every trial in MLflow.

The data is validated and face-cropped once, on the driver, before any trial starts; the
crops reach every trial through Ray's object store, so no trial decodes a JPEG or runs
face detection, and a trial on another node needs no shared filesystem.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from maskclf import config as config_mod
from maskclf.config import Config
from maskclf.errors import InputError, RunFailed, cli
from search import space as space_mod
from search.tracking import Tracker, tracking_uri

METRIC, MODE = "val_f1", "max"
# A study is the same study when these sections match; run.dir / tracking may move.
STUDY_SECTIONS = ("data", "faces", "folds", "model", "train", "search")


def study_dir(cfg: Config) -> Path:
    return config_mod.run_dir(cfg) / cfg.run.study


def storage_path(cfg: Config) -> str:
    return cfg.search.storage_path or str((config_mod.run_dir(cfg) / "tune").resolve())


def _check_same_study(cfg: Config) -> None:
    """Refuse to continue a study under a changed configuration: its trials would not be comparable."""
    saved = study_dir(cfg) / "study.yaml"
    if not saved.is_file():
        return
    old, new = config_mod.to_dict(config_mod.load(saved)), config_mod.to_dict(cfg)
    changed = [f"{s}.{k}" for s in STUDY_SECTIONS for k in new[s] if old[s].get(k) != new[s][k]]
    ignored = {"search.address", "search.storage_path", "search.log_in_background",
               "search.reuse_actors", "search.budget_epochs"}  # how it runs, not what it searches
    if old["search"].get("scheduler") == new["search"]["scheduler"] == "fifo":  # settings nothing reads
        ignored |= {"search.grace_period", "search.reduction_factor"}
    if old["search"].get("sampler") == new["search"]["sampler"] == "random":
        ignored.add("search.n_startup_trials")
    changed = [k for k in changed if k not in ignored]
    if changed:
        raise InputError(f"study '{cfg.run.study}' in {study_dir(cfg)} was started with a different configuration "
                         f"(changed: {', '.join(changed)}); choose a new name with run.study=NAME")


def connect(cfg: Config, log: Callable[[str], None]) -> bool:
    """Join the configured or running Ray cluster, else start a local Ray; True when a cluster was joined."""
    import ray

    if ray.is_initialized():
        return len(alive_nodes()) > 1
    address = cfg.search.address or os.environ.get("RAY_ADDRESS", "")
    joined = False
    if address not in ("", "local"):
        log(f"connecting to the Ray cluster at {address}")
        ray.init(address=address, log_to_driver=False)
        joined = True
    elif address == "":  # a Ray started on this node (ray start / ray up) is used when there is one
        try:
            ray.init(address="auto", log_to_driver=False)
            joined = True
        except ConnectionError:
            pass
    if not joined:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        log(f"started a local Ray with {int(ray.cluster_resources().get('CPU', 0))} CPUs")
        return False
    res = ray.cluster_resources()
    log(f"Ray cluster: {len(alive_nodes())} node(s), {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs")
    return True


def check_resources(cfg: Config, wait_s: float = 0, log: Callable[[str], None] = print) -> None:
    """Refuse a study the cluster cannot run. On a joined cluster, GPU workers still starting
    (or an autoscaler asked for them) get ``wait_s`` seconds to join."""
    import time

    import ray

    s = cfg.search
    deadline = time.monotonic() + wait_s
    if s.gpus_per_trial > 0 and not ray.cluster_resources().get("GPU", 0) and wait_s > 0:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[{"CPU": s.cpus_per_trial, "GPU": s.gpus_per_trial}] * max(1, s.max_concurrent))
        log(f"waiting up to {wait_s / 60:.0f} min for GPU worker nodes to join the Ray cluster")
        while not ray.cluster_resources().get("GPU", 0) and time.monotonic() < deadline:
            time.sleep(10)
    res = ray.cluster_resources()
    gpus, cpus = res.get("GPU", 0), res.get("CPU", 0)
    if s.gpus_per_trial > 0 and gpus == 0:
        raise InputError(f"search.gpus_per_trial={s.gpus_per_trial:g} but the Ray cluster has no GPUs; "
                         f"set search.gpus_per_trial=0 to train on CPUs")
    if s.cpus_per_trial > cpus:
        raise InputError(f"search.cpus_per_trial={s.cpus_per_trial:g} but the Ray cluster has {cpus:g} CPUs")


def alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def node_name() -> str:
    """This process's Ray node, as trials and folds report it: its address and a short id."""
    import ray

    ctx = ray.get_runtime_context()
    return f"{ray.util.get_node_ip_address()}/{ctx.get_node_id()[:6]}"


def check_storage(cfg: Config) -> None:
    """On a multi-node cluster every trial writes its checkpoints to ``storage_path``: it must be shared.

    Cloud URIs (s3://, gs://, ...) are shared by nature; a folder is checked by writing a marker
    on the driver and looking for it from every node."""
    nodes = alive_nodes()
    path = cfg.search.storage_path
    if len(nodes) < 2 or "://" in path.removeprefix("file://"):
        return
    if not path:
        raise InputError(
            f"this Ray cluster has {len(nodes)} nodes but search.storage_path is not set: trials on the other nodes "
            f"cannot write their checkpoints to this node's {storage_path(cfg)}; set search.storage_path to shared "
            f"storage, e.g. search.storage_path=s3://BUCKET/maskclf, gs://BUCKET/maskclf or a folder every node "
            f"mounts (NFS)")
    missing = _nodes_missing(Path(path.removeprefix("file://")).expanduser(), nodes)
    if missing:
        raise InputError(f"search.storage_path={path} is not shared: the Ray node(s) {', '.join(missing)} do not see "
                         f"it; use s3://, gs:// or a folder mounted on every node")


def _nodes_missing(folder: Path, nodes: list[dict]) -> list[str]:
    """The nodes that do not see a marker file written to ``folder`` here."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".maskclf-shared-{uuid.uuid4().hex}"
    marker.write_text("")
    try:
        sees = ray.remote(num_cpus=0)(os.path.exists)
        refs = {n["NodeManagerAddress"] + "/" + n["NodeID"][:6]: sees.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(marker))
            for n in nodes}
        return [name for name, ref in refs.items() if not ray.get(ref, timeout=120)]
    finally:
        marker.unlink(missing_ok=True)


def train_trial(params: dict[str, Any], *, cfg: Config, prep, after_report: Callable[[dict], None] | None = None):
    """The Tune trainable: a thin adapter from ``engine.fit``'s report to ``ray.tune.report``."""
    from ray import tune

    from maskclf import engine

    trial_cfg = config_mod.apply(cfg, params, where="trial parameters")
    if trial_cfg.search.gpus_per_trial == 0:
        trial_cfg = config_mod.apply(trial_cfg, {"train.device": "cpu", "faces.device": "cpu"})
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
    """Crops as plain contiguous arrays: a memory map of the driver's cache file must not travel."""
    from maskclf.faces import FaceCrops

    c = prep.train_crops
    prep.train_crops = FaceCrops(np.ascontiguousarray(c.images), c.boxes, c.found, c.paths)
    return prep


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


def _trained_epochs(tuner) -> dict[str, int]:
    """Epochs each trial of a restored study has trained (its last reported epoch)."""
    try:
        results = tuner.get_results()
    except RuntimeError:  # the study was interrupted before any state was saved
        return {}
    return {r.metrics["trial_id"]: int(r.metrics.get("epoch") or 0) for r in results if r.metrics}


def _make_tuner(cfg: Config, trainable, callbacks: list, log: Callable[[str], None]):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    exp_path = os.path.join(storage_path(cfg), cfg.run.study)
    if tune.Tuner.can_restore(exp_path):
        log(f"resuming study '{cfg.run.study}' from {exp_path}")
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        # Tune would reuse the callbacks pickled when the study started (an old tracking URI, old code);
        # this run's callbacks are the ones whose results run() reads afterwards.
        restored = tuner._local_tuner.get_run_config()
        restored.callbacks, restored.verbose = callbacks, 0
        if cfg.search.budget_epochs:  # the pickled stopper has forgotten the epochs trained so far
            restored.stop = epoch_budget(cfg.search.budget_epochs, _trained_epochs(tuner))
        return tuner
    s = cfg.search
    sampler = optuna.samplers.TPESampler(seed=s.seed, multivariate=True, constant_liar=True,
                                         n_startup_trials=s.n_startup_trials)
    if s.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=s.seed)
    searcher = OptunaSearch(space=space_mod.DefineByRun(s.space), metric=METRIC, mode=MODE, sampler=sampler)
    scheduler = ASHAScheduler(time_attr="epoch", metric=METRIC, mode=MODE, max_t=cfg.train.epochs,
                              grace_period=s.grace_period, reduction_factor=s.reduction_factor)
    if s.scheduler == "fifo":  # no early stopping: every trial trains train.epochs
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=s.num_samples,
                                    max_concurrent_trials=s.max_concurrent, reuse_actors=s.reuse_actors),
        run_config=tune.RunConfig(
            # verbose=0: Tune's per-trial status boxes flood the terminal; LiveTable prints a line per trial
            name=cfg.run.study, storage_path=storage_path(cfg), callbacks=callbacks, verbose=0,
            stop=epoch_budget(s.budget_epochs) if s.budget_epochs else None,
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def run(cfg: Config, *, trainable: Callable | None = None, log: Callable[[str], None] = print):
    """Run (or resume) the study of ``cfg``; returns the summary table of its trials (a DataFrame)."""
    from maskclf import dataset
    from search import report as report_mod
    from search.callback import LiveTable, MlflowTrials

    space_mod.validate(cfg)
    _check_same_study(cfg)
    # MLflow's HTTP client retries a lost server for minutes per call; a search should not stall on it
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    uri = tracking_uri(cfg)
    tracker = Tracker(uri, cfg.run.study)  # a bad tracking store fails here, before any data or Ray work
    from ray import tune

    # Tune warns whenever per-epoch checkpoints snapshot the experiment often; that is intended here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    joined = connect(cfg, log)
    check_resources(cfg, wait_s=600 if joined else 0, log=log)
    check_storage(cfg)  # a cluster that cannot run the study is refused before any data work
    prep = object_store_ready(dataset.prepare(cfg, log=log))
    study = study_dir(cfg)
    study.mkdir(parents=True, exist_ok=True)
    if not (study / "study.yaml").is_file():
        config_mod.save(cfg, study / "study.yaml")
    fn = tune.with_parameters(trainable or train_trial, cfg=cfg, prep=prep)
    fn = tune.with_resources(fn, {"cpu": cfg.search.cpus_per_trial, "gpu": cfg.search.gpus_per_trial})
    callback = MlflowTrials(uri, cfg, dataset_summary=_summary(prep))
    results = _make_tuner(cfg, fn, [callback, LiveTable(cfg)], log).fit()
    table = report_mod.trials_table(results, cfg)
    if table.empty or table["best_val_f1"].isna().all():
        error = no_result(results, cfg)
        callback.sync(results)  # every trial run ends FAILED with its error, and so does the search run
        callback.fail_search(str(error))
        raise error
    best = report_mod.best_config(table, cfg)
    best_path = config_mod.save(best, study / "best_config.yaml")
    table.to_csv(study / "trials.csv", index=False)
    callback.sync(results)
    callback.close_search(table, best_path, plots=_plots(table, results, cfg, study, log))
    log(report_mod.top_table(table))
    log(f"best config: {best_path}")
    log(f"browse the results: {tracker.ui_command()}")
    return table


# Trial errors that come from what the user asked for (a missing file, a value a backbone refuses, a
# learning rate that diverges), not from the machine or the code: every trial failing so is exit code 2.
_INPUT_ERRORS = (InputError, OSError, ValueError, FloatingPointError)


def no_result(results, cfg: Config) -> Exception:
    """The error to end a study with when no trial reported a result: the first trial's error in one
    line, with the file that holds its whole traceback."""
    failed = [r for r in results if r.error is not None]
    if not failed:
        return RunFailed(f"no trial of study '{cfg.run.study}' reported a result")
    first = failed[0]
    text = str(first.error).strip().splitlines()
    reason = (text[-1] if text else type(first.error).__name__)[:300]
    where = Path(first.path or "", "error.txt") if first.path else None
    msg = (f"all {len(failed)} trial(s) of study '{cfg.run.study}' failed; the first: {reason}"
           + (f" (full error: {where})" if where is not None and where.is_file() else ""))
    return InputError(msg) if isinstance(first.error, _INPUT_ERRORS) else RunFailed(msg)


def _plots(table, results, cfg: Config, study: Path, log: Callable[[str], None]) -> list[Path]:
    """The study's plots under ``<study>/plots``; they only show results, so any failure is a warning."""
    from search import plots
    from search import report as report_mod

    try:
        return plots.write_all(table, cfg.search.space, report_mod.curves(results), study / "plots", log=log,
                               order=report_mod.start_order(results))
    except Exception as e:
        warnings.warn(f"the study's plots were not drawn: {e}")
        return []


def _summary(prep) -> dict:
    from maskclf import data

    s = data.summary(prep.train)
    s["faces_found"] = int(prep.train_crops.found.sum())
    s["faces_fallback"] = int((~prep.train_crops.found).sum())
    return s


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m search.tune",
        description="Search hyperparameters with Ray Tune + Optuna (TPE) + ASHA; every trial logged to MLflow. "
                    "Run the same command again to resume the study.",
    )
    p.add_argument("--config", default=str(config_mod.DEFAULT_CONFIG), help="YAML config (default: %(default)s)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. run.study=s2")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = config_mod.load(args.config, args.overrides)
    run(cfg, log=lambda s: print(s, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
