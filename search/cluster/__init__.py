"""The Ray cluster a study or a finalize runs on: joining it, refusing what it cannot run, its shared storage.

``search.tune`` and ``search.finalize`` call these on the driver before any data work, so a
cluster that cannot run the job is refused at once, with nothing written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from maskclf import config as config_mod
from maskclf.config import Config
from maskclf.errors import InputError


def storage_path(cfg: Config) -> str:
    """Where Tune keeps its experiments (trial checkpoints, state): ``search.storage_path`` or ``<run.dir>/tune``."""
    return cfg.search.storage_path or str((config_mod.run_dir(cfg) / "tune").resolve())


def connect(cfg: Config, log: Callable[[str], None]) -> bool:
    """Join the configured Ray cluster, or one started on this node to last (``ray start``, ``ray up``), else
    start a private local Ray; True when a cluster was joined.

    Another command's private Ray is never joined: it stops when that command ends, and a driver joined to it
    would die with it."""
    import ray

    if ray.is_initialized():
        return len(alive_nodes()) > 1
    address = cfg.search.address or os.environ.get("RAY_ADDRESS", "")
    if address == "":
        address = started_ray() or "local"
    if address == "local":
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        log(f"started a local Ray with {int(ray.cluster_resources().get('CPU', 0))} CPUs")
        return False
    log(f"connecting to the Ray cluster at {address}")
    ray.init(address=address, log_to_driver=False)
    res = ray.cluster_resources()
    log(f"Ray cluster: {len(alive_nodes())} node(s), {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs")
    watch(ray.get_runtime_context().gcs_address)
    return True


def watch(gcs_address: str, every_s: float = 2.0, lost_after_s: float = 20.0) -> None:
    """End this command with one line when the joined cluster's head stops answering.

    Ray ends a driver whose cluster is gone on its own, about a minute later, with exit code 1 and only its
    log's words, if any; this thread says it first: which cluster, since when, and that a rerun resumes.
    The command's files are as a kill leaves them, which every command resumes from."""
    import socket
    import sys
    import threading
    import time

    host, _, port = gcs_address.rpartition(":")

    def answering() -> bool:
        try:
            socket.create_connection((host, int(port)), timeout=every_s).close()
            return True
        except OSError:
            return False

    def run() -> None:
        since = None
        while True:
            time.sleep(every_s)
            if answering():
                since = None
                continue
            since = since or time.monotonic()
            if time.monotonic() - since >= lost_after_s:
                print(f"error: the Ray cluster at {gcs_address} stopped answering {lost_after_s:.0f} s ago (stopped or "
                      f"unreachable); run the command again once it is back: it resumes where it stopped",
                      file=sys.stderr, flush=True)
                os._exit(1)

    threading.Thread(target=run, name="ray-cluster-watch", daemon=True).start()


def started_ray() -> str | None:
    """The address of the Ray that ``ray start`` last started on this node, while it runs; None otherwise.

    ``ray start`` (and so ``ray up``) records its address in Ray's temp folder, and a plain ``ray.init()``
    does not: so a private Ray another command started is not found here, while ``address="auto"``
    would join any Ray running on the node."""
    from search.cluster.private_api import recorded_ray_address

    return recorded_ray_address()


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


def remove_experiment(cfg: Config, name: str) -> None:
    """Delete the Tune experiment ``name`` from the storage (a folder or a cloud URI) once its results are kept
    elsewhere; a failure leaves it, which costs only space."""
    import shutil

    path = os.path.join(storage_path(cfg), name)
    try:
        if "://" in path.removeprefix("file://"):
            import pyarrow.fs

            fs, inner = pyarrow.fs.FileSystem.from_uri(path)
            fs.delete_dir(inner)
        else:
            shutil.rmtree(Path(path.removeprefix("file://")), ignore_errors=True)
    except Exception:
        pass
