"""MLflow: one experiment per study, a parent run per search / finalize, a child run per trial / fold.

Everything goes through an explicit ``MlflowClient`` and run ids (no global active run),
because many trials report concurrently into one driver. Runs are found again by tags,
so a resumed search continues its runs instead of logging them twice.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

from maskclf import config as config_mod
from maskclf.config import Config
from maskclf.errors import InputError

# Without this tag the MLflow 3 UI opens an experiment on its GenAI traces view, not the runs.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
KIND_TAG = "maskclf.kind"  # search | trial | finalize | fold
KEY_TAG = "maskclf.key"  # the Tune trial id or fold number a child run belongs to


def tracking_uri(cfg: Config) -> str:
    """The config's URI, else MLFLOW_TRACKING_URI, else a SQLite file in the run dir."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(config_mod.run_dir(cfg) / 'mlflow.db').resolve()}"


@contextlib.contextmanager
def _quick_http(timeout: int) -> Iterator[None]:
    """MLflow retries an unreachable server for minutes by default; a start-up check should not."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _one_at_a_time(folder: Path | None) -> Iterator[None]:
    """Holds an exclusive lock on a SQLite store's folder: two processes that open a new store at once
    (a search and its MLflow UI, two commands of one study) would both create its tables, and the
    second would fail with "table ... already exists"; the same for the study's experiment."""
    if folder is None:
        yield
        return
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def param_value(v: Any) -> str:
    s = f"{v:.4g}" if isinstance(v, float) else str(v)
    return s[:500]


def trial_params(cfg: Config) -> dict[str, str]:
    """Flat params named after what they are: backbone, optimizer, lr, scheduler, ... plus data/fold keys."""
    d = config_mod.to_dict(cfg)
    out = {k: param_value(v) for sec in ("model", "train") for k, v in d[sec].items()}
    out.update({"age_old": str(cfg.data.age_old), "fold": str(cfg.folds.fold), "folds": str(cfg.folds.n),
                "face_method": cfg.faces.method, "face_size": str(cfg.faces.size)})
    return out


def run_name(cfg: Config, prefix: str = "") -> str:
    """A name a person can read, e.g. ``#3 efficientnet_b0 · adamw · 3e-04 · cosine`` (``#3 age ·
    efficientnet_b0 · ...`` for a task model)."""
    t = cfg.train
    name = f"{cfg.model.backbone} · {t.optimizer} · {t.lr:.0e} · {t.scheduler}"
    if cfg.model.task != "all":
        name = f"{cfg.model.task} · {name}"
    return f"{prefix} {name}".strip()


class Tracker:
    """The MLflow experiment of one study."""

    def __init__(self, uri: str, study: str, timeout: int = 10):
        import mlflow
        from mlflow import MlflowClient

        self.uri = uri
        artifacts = folder = None
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///"):])
            db.parent.mkdir(parents=True, exist_ok=True)
            folder = db.parent
            # beside the database, not MLflow's default ./mlruns in whatever folder the command ran from
            artifacts = (db.parent / "mlartifacts").resolve().as_uri()
        try:
            with _quick_http(timeout), _one_at_a_time(folder):
                self.client = MlflowClient(tracking_uri=uri)
                exp = self.client.get_experiment_by_name(study)
                self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
                    study, artifact_location=f"{artifacts}/{study}" if artifacts else None, tags=EXPERIMENT_TAGS)
        except Exception as e:  # any failure to reach the store must stop a search before it starts
            reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise InputError(f"MLflow tracking store {uri} is not usable: {reason}") from None
        for k, v in EXPERIMENT_TAGS.items():
            self.client.set_experiment_tag(self.experiment_id, k, v)
        self._mlflow = mlflow

    def find(self, kind: str, key: str | None = None, parent: str | None = None) -> list:
        """Runs of this experiment with the given kind (and key / parent), newest first."""
        flt = [f"tags.`{KIND_TAG}` = '{kind}'"]
        if key is not None:
            flt.append(f"tags.`{KEY_TAG}` = '{key}'")
        if parent is not None:
            flt.append(f"tags.`mlflow.parentRunId` = '{parent}'")
        return list(self.client.search_runs([self.experiment_id], " and ".join(flt),
                                            order_by=["attributes.start_time DESC"], max_results=5000))

    def start(self, kind: str, name: str, *, key: str | None = None, parent: str | None = None,
              params: dict[str, str] | None = None, tags: dict[str, str] | None = None,
              reuse: bool = True) -> str:
        """A run of ``kind``; an existing one with the same kind/key/parent is reused (resume)."""
        if reuse:
            found = self.find(kind, key, parent)
            if found:
                run = found[0]
                if run.info.status != "RUNNING":
                    self.client.update_run(run.info.run_id, status="RUNNING")
                return run.info.run_id
        all_tags = {KIND_TAG: kind, **(tags or {})}
        if key is not None:
            all_tags[KEY_TAG] = key
        if parent is not None:
            all_tags["mlflow.parentRunId"] = parent
        run_id = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name).info.run_id
        if params:
            self.log_params(run_id, params)
        return run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        if items:
            self.client.log_batch(run_id, metrics=items)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v)[:5000])

    def log_artifact(self, run_id: str, path: str | Path, subdir: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), subdir)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    @contextlib.contextmanager
    def ending(self, run_id: str) -> Iterator[str]:
        """A command's parent run for the block: FINISHED when the block ends, else KILLED (Ctrl-C, a signal)
        or FAILED; its ``end_reason`` tag says how the last attempt ended (``finished``, ``interrupted`` or the
        error's first line). The block's error is raised as it was (a tracking store that fails too does not
        hide it)."""
        try:
            yield run_id
        except BaseException as e:
            killed = isinstance(e, KeyboardInterrupt)
            reason = "interrupted" if killed else (f"{type(e).__name__}: {e}".splitlines() or ["?"])[0][:500]
            with contextlib.suppress(Exception):
                self.set_tags(run_id, {"end_reason": reason})
                self.finish(run_id, "KILLED" if killed else "FAILED")
            raise
        self.set_tags(run_id, {"end_reason": "finished"})
        self.finish(run_id)

    def status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    def ui_url(self, base: str = "http://127.0.0.1:5000") -> str:
        """The experiment's runs in the MLflow UI (its "model training" view, not the GenAI one)."""
        return f"{base}/#/experiments/{self.experiment_id}?workflowType=machine_learning"

    def ui_command(self) -> str:
        if self.uri.startswith(("http://", "https://")):
            return f"open {self.ui_url(self.uri.rstrip('/'))}"
        return f"mlflow ui --backend-store-uri {self.uri}  then open {self.ui_url()}"
