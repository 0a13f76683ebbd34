"""Fold models' predictions on the Ray cluster: each fold model a Ray task, where the trials ran (a GPU where
the folds trained on GPUs), never in the driver process on the head.

``maskclf.ensemble.fold_results`` says what to predict (each fold's validation rows, the eval crops); the runner
here says where. The train and eval crops go into Ray's object store once and every task reads them from there
(zero-copy on a node, batch by batch); each fold's checkpoint travels as bytes, so a worker needs no shared disk.
The probabilities come back to the driver, which only averages, scores and writes them.
"""

from __future__ import annotations

from typing import Callable

from maskclf.config import Config


def runner(cfg: Config, log: Callable[[str], None]) -> Callable:
    """A ``run_folds`` for :func:`maskclf.ensemble.fold_results` that runs one Ray task per fold model on the
    command's Ray (joined or started as every command does), with the resources of a trial."""

    def run(run_cfg: Config, ckpts: dict, images, rows: dict, eval_images, run_log: Callable[[str], None],
            tta: bool = True) -> dict:
        import numpy as np
        import ray

        from maskclf import ensemble
        from search import cluster

        cluster.connect(cfg, log)
        s = cfg.search
        task = ray.remote(ensemble.predict_fold).options(num_cpus=s.cpus_per_trial, num_gpus=s.gpus_per_trial,
                                                         max_retries=2)
        device = "cuda" if s.gpus_per_trial > 0 else "cpu"
        res = ray.cluster_resources()
        run_log(f"fold models as Ray tasks, {s.cpus_per_trial:g} CPU" + (f" and {s.gpus_per_trial:g} GPU"
                if s.gpus_per_trial else "") + f" each, on {res.get('CPU', 0):g} CPUs"
                + (f" and {res.get('GPU', 0):g} GPUs" if res.get("GPU") else ""))
        # a memory map of the driver's cache travels as its bytes, put once: every task reads the same copy
        images_ref = ray.put(np.asarray(images))
        eval_ref = ray.put(np.asarray(eval_images)) if eval_images is not None else None
        pending = {task.remote(run_cfg, ensemble.checkpoint_files(ckpts[k]), images_ref, rows[k], eval_ref,
                               device, tta): k for k in sorted(ckpts)}
        out = {}
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            k = pending.pop(ref)
            out[k] = ray.get(ref)
            run_log(ensemble.predicted_line(k, rows[k], eval_images, len(out), len(ckpts)))
        return out

    return run
