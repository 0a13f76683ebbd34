"""The face crops, the search and finalize on a real multi-node Ray: a head with no CPUs and two worker nodes on
this machine (``ray.cluster_utils.Cluster``), so every trial and fold runs on a worker node.

The tests run in file order: the search's best config is what the finalize test finalizes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maskclf import config, dataset
from maskclf.errors import InputError
from search import finalize
from search.cluster import experiment
from search import tune as tune_mod
from search.study import settings
from tests.conftest import SMOKE


@pytest.fixture(scope="module")
def cluster():
    """A head (the driver's node, no CPUs: like a cluster's head) and two one-CPU worker nodes."""
    import ray
    from ray.cluster_utils import Cluster

    from ray._common.utils import reset_ray_address

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    # Cluster records its address as `ray start` does: the commands other tests run with no address set
    # would join it (and a bare ray.init() would try it after it is gone)
    reset_ray_address()
    for _ in range(2):
        c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def cluster_run(smoke_data, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("cluster")
    cache = base / "cache"  # a copy of the session's crop cache (when built yet), which a trial below deletes
    if (smoke_data.parent / "cache").is_dir():
        # not the entries another test worker is building (they appear by a rename once complete)
        shutil.copytree(smoke_data.parent / "cache", cache, ignore=shutil.ignore_patterns(".tmp-*"))
    return {"data.root": str(smoke_data), "run.dir": str(base / "runs"), "faces.cache_dir": str(cache),
            "search.storage_path": str(base / "shared" / "tune")}


def _without_cache(cache: Path):
    """The product's trainable, started only after the crop cache is gone from the disk."""
    def trainable(params, **kw):
        shutil.rmtree(cache, ignore_errors=True)
        assert not cache.exists()
        return experiment.train_trial(params, **kw)
    return trainable


def test_search_refuses_a_local_storage_path_on_a_multi_node_cluster(cluster, cluster_run, capsys):
    cfg = settings.load(SMOKE, {**cluster_run, "search.storage_path": "", "run.study": "refused"})
    with pytest.raises(InputError) as e:
        tune_mod.run(cfg)
    assert "3 nodes" in str(e.value) and "search.storage_path" in str(e.value) and "s3://" in str(e.value)
    assert not (Path(cluster_run["run.dir"]) / "refused").exists()  # nothing started, nothing written
    r = tune_mod.main(["--config", str(SMOKE), *[f"{k}={v}" for k, v in cluster_run.items() if k != "search.storage_path"],
                       f"search.address={cluster.address}", "run.study=refused"])
    assert r == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "search.storage_path is not set" in errors[0]


def test_search_on_three_nodes_spreads_trials_and_never_reads_the_crop_cache(cluster, cluster_run):
    cfg = settings.load(SMOKE, cluster_run)
    cache = Path(cluster_run["faces.cache_dir"])
    table = tune_mod.run(cfg, trainable=_without_cache(cache), log=lambda s: None)
    assert not cache.exists()  # the trials deleted it before training, and trained
    assert len(table) == 2 and (table["status"] != "error").all() and table["best_val_f1"].notna().all()
    assert table["node"].nunique() == 2, table[["trial", "node"]]
    head = cluster.head_node.node_id[:6]
    assert not any(n.endswith(head) for n in table["node"])  # the CPU-less head ran no trial
    trials = pd.read_csv(Path(cluster_run["run.dir"]) / "smoke" / "trials.csv")
    assert set(trials["node"]) == set(table["node"])
    assert any((Path(cluster_run["search.storage_path"]) / "smoke").iterdir())  # Tune's records on shared storage


def _noting_node(fn, folder: Path):
    """``fn``, which also leaves a file named after the Ray node it ran on in ``folder``."""
    def shard(*args, **kwargs):
        import ray

        (folder / ray.get_runtime_context().get_node_id()).touch()
        return fn(*args, **kwargs)
    return shard


def test_face_crops_on_three_nodes_run_on_every_worker_and_give_the_crops_of_one_process(cluster, smoke_data,
                                                                                       tmp_path):
    from maskclf import crop_cache
    from search.cluster import crops

    photos = sorted((smoke_data / "train" / "images").glob("*/*"))[:32]
    here = crop_cache.build_crop_cache(photos, tmp_path / "here", shard_size=4, progress=False, log=lambda s: None)
    nodes, lines = tmp_path / "nodes", []
    nodes.mkdir()
    run = crops.runner(settings.load(SMOKE, {"run.dir": str(tmp_path / "runs")}), lines.append)
    spread = crop_cache.build_crop_cache(photos, tmp_path / "cluster", shard_size=4, progress=False, log=lines.append,
                                         run_shards=lambda fn, jobs: run(_noting_node(fn, nodes), jobs))
    assert any(line.startswith("face crops: shards as Ray tasks on 2 CPUs") for line in lines), lines
    workers = {n.node_id for n in cluster.worker_nodes}
    assert {p.name for p in nodes.iterdir()} == workers  # both one-CPU workers cropped; the CPU-less head did not
    assert np.array_equal(spread.images, here.images) and np.array_equal(spread.boxes, here.boxes)
    assert spread.found.tolist() == here.found.tolist() and spread.paths == here.paths
    assert spread.detector.tolist() == here.detector.tolist()


def test_finalize_on_three_nodes_spreads_folds(cluster, cluster_run, smoke_data):
    best = Path(cluster_run["run.dir"]) / "smoke" / "best_config.yaml"
    cfg = finalize.load_best(SMOKE, best, [f"{k}={v}" for k, v in cluster_run.items()] + ["train.epochs=2"])
    assert not Path(cluster_run["faces.cache_dir"]).exists()  # a trial of the search deleted it
    lines: list[str] = []
    m = finalize.run(cfg, log=lines.append)
    # the train and eval crops were cut, and the fold models predicted, on the worker nodes: the head has no CPU
    assert sum(line.startswith("face crops: shards as Ray tasks on 2 CPUs") for line in lines) == 2, lines
    assert any(line.startswith("fold models as Ray tasks, 1 CPU each, on 2 CPUs") for line in lines), lines
    on_workers = dataset.prepare(cfg, log=lambda s: None, progress=False).train_crops
    here = dataset.prepare(config.apply(cfg, {"faces.cache_dir": str(smoke_data.parent / "cache")}),
                           log=lambda s: None, progress=False).train_crops  # the session's, cut on one node
    assert np.array_equal(on_workers.images, here.images) and on_workers.found.tolist() == here.found.tolist()
    assert on_workers.detector.tolist() == here.detector.tolist()  # the smoke config's cascade, on the workers too
    assert m["folds"] == [0, 1, 2, 3, 4] and 0 <= m["oof_f1"] <= 1
    assert len(set(m["fold_nodes"].values())) == 2, m["fold_nodes"]
    out = Path(cluster_run["run.dir"]) / "smoke" / "final"
    assert json.loads((out / "metrics.json").read_text())["fold_nodes"] == m["fold_nodes"]
    for k in range(5):  # every checkpoint trained on a worker node is back on the driver
        assert (out / "folds" / f"fold{k}" / "checkpoint").is_dir()
    assert (out / "submission.csv").is_file()
