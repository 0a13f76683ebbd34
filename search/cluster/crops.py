"""Face crops built on the Ray cluster: each shard of photos a Ray task, wherever there is a free CPU (or GPU).

``maskclf.crop_cache.build_crop_cache`` cuts the photos into shards and keeps every finished shard on disk; the runner
here decides where the shards run. The driver reads each shard's photos as bytes and ships them with the task,
so the workers need no copy of the dataset and no shared disk; the crops come back through Ray's object store
and the driver writes them into the cache. A killed build resumes from its finished shards, as it does in one
process.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

from maskclf import faces
from maskclf.config import Config


def runner(cfg: Config, log: Callable[[str], None]) -> Callable:
    """A ``run_shards`` for :func:`maskclf.crop_cache.build_crop_cache` that runs the shards as Ray tasks on the
    study's Ray (joined or started as every command does, and only when a crop cache entry is missing)."""

    def run(fn: Callable, jobs: Iterable) -> Iterator[tuple[int, dict]]:
        import ray

        from search import cluster

        cluster.connect(cfg, log)
        res = ray.cluster_resources()
        cpus, gpus = int(res.get("CPU", 1)), int(res.get("GPU", 0))
        # MTCNN runs where faces.device says; RetinaFace (and the fixed box) only on CPUs
        on_gpu = gpus > 0 and cfg.faces.device != "cpu" and "mtcnn" in faces.detectors(cfg.faces.method)
        # MTCNN is small: four shards share a GPU; on CPUs each shard takes one core
        task = ray.remote(fn).options(num_cpus=1, num_gpus=0.25 if on_gpu else 0, max_retries=2)
        device = "cuda" if on_gpu else "cpu"
        # two shards per slot: the next one is queued while a slot works, and no more are held in memory
        in_flight = 2 * max(1, 4 * gpus if on_gpu else cpus)
        log(f"face crops: shards as Ray tasks on {cpus} CPUs" + (f" and {gpus} GPUs" if on_gpu else ""))
        pending: dict = {}
        jobs = iter(jobs)
        while True:
            while len(pending) < in_flight:
                job = next(jobs, None)
                if job is None:
                    break
                i, args, kwargs = job
                pending[task.remote(*args, **{**kwargs, "device": device})] = i
            if not pending:
                return
            [ref], _ = ray.wait(list(pending), num_returns=1)
            yield pending.pop(ref), ray.get(ref)

    return run
