"""Samples over the shared crop array: a fold, a fit and a prediction read rows of it and never copy it."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from maskclf import config, engine, faces, folds, predict
from maskclf.dataset import Prepared
from maskclf.samples import Rows
from tests.conftest import SMOKE


def test_rows_read_each_chosen_row_of_each_array_in_order():
    a = np.arange(10 * 2).reshape(10, 2)
    b = -np.arange(3 * 2).reshape(3, 2) - 1
    r = Rows((a, [7, 2, 5])) + b
    assert len(r) == 6 and r.shape == (6, 2) and r.dtype == a.dtype
    expected = np.concatenate([a[[7, 2, 5]], b])
    assert all((r[i] == expected[i]).all() for i in range(6))
    assert (r[-1] == b[2]).all() and (np.asarray(r) == expected).all()
    assert (r[1:4] == expected[1:4]).all() and (r[[5, 0]] == expected[[5, 0]]).all()
    assert (Rows((a, [3, 1]))[::-1] == a[[1, 3]]).all() and r[2:2].shape == (0, 2)
    with pytest.raises(IndexError):
        r[6]
    assert Rows.of(r) is r and (np.asarray(Rows.of(b)) == b).all()


def _prepared(root, size: int = 128) -> Prepared:
    """The smoke dataset's table with a crop array of its rows (420 crops, 20 MB at 128 px)."""
    from maskclf import data

    train = data.read_train(root, check_images=False)
    crops = np.random.default_rng(0).integers(0, 255, (len(train), size, size, 3), dtype=np.uint8)
    n = len(train)
    return Prepared(train, faces.FaceCrops(crops, np.zeros((n, 4), np.float32), np.ones(n, bool), train["path"].tolist()))


def _peak(fn) -> tuple[object, int]:
    """``fn()`` and the most memory numpy / Python allocated while it ran."""
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_fold_reads_the_shared_crops_without_copying_them(smoke_data):
    prep = _prepared(smoke_data)
    crops = prep.train_crops.images
    cfg = config.load(SMOKE)
    (tr, va), peak = _peak(lambda: prep.fold(cfg, 1))
    assert peak < crops.nbytes / 20, f"a fold allocated {peak / 1e6:.1f} MB over a {crops.nbytes / 1e6:.1f} MB array"
    rows_tr, rows_va = folds.split(prep.train, 1, cfg.folds.n, cfg.folds.seed)
    assert isinstance(tr.images, Rows) and all(base is crops for base, _ in tr.images.parts + va.images.parts)
    assert (np.asarray(tr.images) == crops[rows_tr]).all() and (np.asarray(va.images) == crops[rows_va]).all()


def test_training_and_prediction_read_rows_of_the_shared_crops_without_copying_them(smoke_data, tmp_path):
    prep = _prepared(smoke_data)
    crops = prep.train_crops.images
    cfg = config.load(SMOKE, {"train.epochs": 1, "train.augment": "light", "run.dir": str(tmp_path)})
    tr, va = prep.fold(cfg, 0)
    res, peak = _peak(lambda: engine.fit(cfg, tr, va, out_dir=tmp_path / "run"))
    assert res["history"][-1]["epoch"] == 1
    # a copy of the training rows would be 80% of the array; what is left is per-batch work
    assert peak < crops.nbytes / 4, f"fit allocated {peak / 1e6:.1f} MB over a {crops.nbytes / 1e6:.1f} MB array"

    net, ck_cfg = engine.load_model(tmp_path / "run" / "checkpoint")
    rows = folds.split(prep.train, 0, cfg.folds.n, cfg.folds.seed)[1]
    probs, peak = _peak(lambda: predict.model_probs(net, ck_cfg, Rows((crops, rows)), tta=True, batch_size=32))
    assert peak < crops.nbytes / 4, f"prediction allocated {peak / 1e6:.1f} MB"
    # the same figures as on a copy of those rows, mirrored as a whole for the flip
    copy = crops[rows]
    plain = predict.model_probs(net, ck_cfg, copy, tta=False, batch_size=32)
    mirrored = predict.model_probs(net, ck_cfg, np.ascontiguousarray(copy[:, :, ::-1]), tta=False, batch_size=32)
    np.testing.assert_allclose(probs, (plain + mirrored) / 2, rtol=0, atol=1e-6)


def test_prepared_never_changes_its_with_methods_return_a_new_one_sharing_the_arrays(smoke_data):
    import dataclasses

    prep = _prepared(smoke_data, size=16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        prep.extra = None
    eval_like = dataclasses.replace(prep, eval=prep.train.head(5), eval_crops=prep.train_crops)
    extra = eval_like.eval_samples(np.array([4, 1]), np.array([7, 2]), np.full((2, 18), 1 / 18, np.float32))
    assert (np.asarray(extra.images) == prep.train_crops.images[[4, 1]]).all() and extra.labels.tolist() == [7, 2]
    soft = np.full((len(prep.train), 18), 1 / 18, np.float32)
    taught = prep.with_extra(extra).with_soft(soft)
    assert prep.extra is None and prep.soft is None  # the original is as it was
    assert taught.extra is extra and taught.soft is soft and taught.train_crops is prep.train_crops
    tr, _ = taught.fold(config.load(SMOKE), 0)
    assert len(tr.labels) == len(folds.split(prep.train, 0, 5, config.load(SMOKE).folds.seed)[0]) + 2
    trimmed = eval_like.without_eval()
    assert trimmed.eval is None and trimmed.eval_crops is None and eval_like.eval is not None
