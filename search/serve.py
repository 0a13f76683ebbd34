"""Serve a registered model over HTTP on Ray Serve: photos in, answers out, concurrent requests batched.

``python -m search.serve [--config C] [--model URI] [--host H] [--port P] [--replicas N] [k=v ...]``

The model is ``--model`` (any MLflow model URI), else the study's distilled student (``models:/<study>@fast``,
``distill.alias``) where one is registered, else its ensemble (``@champion``). It runs on the project's Ray (the
cluster's, or a private local one, as every command) with one replica per GPU of the cluster, or ``--replicas``
(one on a machine without GPUs). The service binds to 127.0.0.1 unless ``--host`` says otherwise and runs until
Ctrl-C. Its endpoints and answers: :mod:`search.cluster.service`.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Callable

from maskclf import config as config_mod
from maskclf.config import Config
from maskclf.errors import InputError, cli
from search.study import settings
from search.tracking import tracking_uri

APP = "maskclf"


def registry(uri: str):
    """An MLflow client of the tracking store ``uri``, which must exist: serving writes nothing there."""
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise InputError(f"no MLflow store at {uri}: run python -m search.tune and search.finalize first, or set "
                         f"tracking.uri")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def choose_model(cfg: Config, model: str, uri: str) -> tuple[str, str]:
    """The model URI to serve and its registered version ("" for a URI that is not an alias); InputError when
    there is none."""
    from mlflow.exceptions import MlflowException

    if model:
        import mlflow

        try:
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            mlflow.models.get_model_info(model)
        except Exception as e:  # an unknown name, alias, run or path
            reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise InputError(f"--model {model}: no such model ({reason})") from None
        return model, ""
    study, client = cfg.run.study, registry(uri)
    for alias in (cfg.distill.alias, settings.CHAMPION):
        try:
            version = client.get_model_version_by_alias(study, alias)
            return f"models:/{study}@{alias}", str(version.version)
        except MlflowException:
            continue
    raise InputError(f"study '{study}' has no registered model at {uri} (neither @{cfg.distill.alias} nor "
                     f"@{settings.CHAMPION}): run python -m search.finalize first, or name one with --model")


def check_address(host: str, port: int) -> None:
    """Refuse a port out of range or already taken before Ray starts."""
    if not 1 <= port <= 65535:
        raise InputError(f"--port {port}: choose a port in 1..65535")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as e:
        raise InputError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None


def replicas(requested: int) -> tuple[int, float]:
    """Replicas and GPUs per replica: ``requested`` (0 = one per GPU of the cluster, one where it has none)."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if requested > 0:
        return requested, 1.0 if gpus >= requested else 0.0
    return (gpus, 1.0) if gpus else (1, 0.0)


def run(cfg: Config, *, model: str = "", host: str = "127.0.0.1", port: int = 8000, n_replicas: int = 0,
        log: Callable[[str], None] = print, stop: threading.Event | None = None) -> None:
    """Start the service and keep it up until ``stop`` is set (Ctrl-C or SIGTERM from the command line)."""
    from search import cluster

    check_address(host, port)
    uri = tracking_uri(cfg)
    model_uri, version = choose_model(cfg, model, uri)
    cluster.connect(cfg, log)
    from ray import serve

    from search.cluster.service import Classifier

    n, gpus = replicas(n_replicas)
    serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
    app = Classifier.options(num_replicas=n, ray_actor_options={"num_cpus": cfg.search.cpus_per_trial,
                                                                "num_gpus": gpus})
    serve.run(app.bind(model_uri, uri, version), name=APP, route_prefix="/")
    where = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    log(f"serving {model_uri}{f' (version {version})' if version else ''} with {n} replica{'s' * (n != 1)} at "
        f"{where}: POST /predict (a JPEG or PNG body, or JSON {{\"photos\": [base64, ...]}}), GET /health; "
        f"Ctrl-C stops")
    stop = stop or threading.Event()
    try:
        stop.wait()
    finally:
        serve.shutdown()
        log("service stopped")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m search.serve",
        description="Serve a registered model over HTTP on Ray Serve: POST /predict takes a JPEG or PNG photo (or "
                    "JSON with base64 photos) and answers each photo's label, class and probability; concurrent "
                    "requests are batched. Runs until Ctrl-C.",
    )
    p.add_argument("--config", default=str(config_mod.DEFAULT_CONFIG), help="YAML config (default: %(default)s)")
    p.add_argument("--model", default="", help="an MLflow model URI (default: models:/<run.study>@fast where a "
                                               "distilled student is registered, else @champion)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0 for "
                                                       "every interface)")
    p.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    p.add_argument("--replicas", type=int, default=0, help="model replicas (default: one per GPU of the cluster, "
                                                           "one without GPUs)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. run.dir=runs")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.replicas < 0:
        raise InputError(f"--replicas {args.replicas}: 0 (one per GPU) or more")
    cfg = settings.load(args.config, args.overrides)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    run(cfg, model=args.model, host=args.host, port=args.port, n_replicas=args.replicas,
        log=lambda s: print(s, flush=True), stop=stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
