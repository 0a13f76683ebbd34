"""maskclf.predict: soft voting, flip TTA, the submission and out-of-fold files (tiny models, no Ray/MLflow)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from maskclf import config, engine, predict
from maskclf.engine import Samples
from tests.conftest import SMOKE


@pytest.fixture(scope="module")
def cfg() -> config.Config:
    return config.load(SMOKE, {"train.device": "cpu", "train.epochs": 1, "train.threads": 1})


def _member(cfg: config.Config, seed: int) -> predict.Member:
    import torch

    torch.manual_seed(seed)
    return engine.build_model(cfg).eval(), cfg


def _crops(n: int = 6, size: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def test_soft_voting_averages_the_models_probabilities(cfg):
    a, b = _member(cfg, 1), _member(cfg, 2)
    crops = _crops()
    pa = predict.model_probs(*a, crops, tta=False)
    pb = predict.model_probs(*b, crops, tta=False)
    assert pa.shape == (6, 18) and not np.allclose(pa, pb)
    both = predict.predict_crops([a, b], crops, tta=False)
    np.testing.assert_allclose(both, (pa + pb) / 2, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(both.sum(1), 1, rtol=1e-5)
    np.testing.assert_allclose(predict.soft_vote([pa, pb]), both, rtol=1e-6, atol=1e-7)


def test_flip_tta_averages_the_crop_and_its_mirror(cfg):
    m = _member(cfg, 3)
    crops = _crops(4)
    mirrored = np.ascontiguousarray(crops[:, :, ::-1])
    plain = predict.model_probs(*m, crops, tta=False)
    flipped = predict.model_probs(*m, mirrored, tta=False)
    tta = predict.model_probs(*m, crops, tta=True)
    np.testing.assert_allclose(tta, (plain + flipped) / 2, rtol=1e-5, atol=1e-7)
    # TTA sees both orientations, so it scores a photo and its mirror image the same
    np.testing.assert_allclose(predict.model_probs(*m, mirrored, tta=True), tta, rtol=1e-5, atol=1e-7)
    assert predict.predict_crops([m], crops[:0], tta=True).shape == (0, 18)


def test_load_ensemble_rebuilds_trained_checkpoints(cfg, tmp_path):
    rng = np.random.default_rng(0)
    samples = Samples(_crops(16), rng.integers(0, 18, 16))
    for k in range(2):
        engine.fit(config.apply(cfg, {"train.seed": k}), samples, samples, out_dir=tmp_path / f"fold{k}",
                   log=lambda s: None)
    members = predict.load_ensemble([tmp_path / "fold0" / "checkpoint", tmp_path / "fold1" / "checkpoint"])
    assert len(members) == 2 and members[0][1].model.backbone == cfg.model.backbone
    probs = predict.predict_crops(members, samples.images, tta=True, batch_size=5)
    assert probs.shape == (16, 18) and np.allclose(probs.sum(1), 1, rtol=1e-5)
    with pytest.raises(ValueError):
        predict.load_ensemble([])


def test_write_submission_keeps_info_csv_order(tmp_path):
    info = tmp_path / "info.csv"
    pd.DataFrame({"ImageID": ["c.jpg", "a.jpg", "b.jpg"], "ans": [0, 0, 0]}).to_csv(info, index=False)
    table = pd.DataFrame({"image_id": ["a.jpg", "b.jpg", "c.jpg"], "path": ["x", "y", "z"]})
    probs = np.eye(18)[[5, 17, 2]]  # a -> 5, b -> 17, c -> 2
    out = predict.write_submission(table, probs, info, tmp_path / "sub" / "submission.csv")
    written = pd.read_csv(tmp_path / "sub" / "submission.csv", dtype={"ImageID": str})
    assert list(written.columns) == ["ImageID", "ans"]
    assert written["ImageID"].tolist() == ["c.jpg", "a.jpg", "b.jpg"]
    assert written["ans"].tolist() == [2, 5, 17] == out["ans"].tolist()
    with pytest.raises(ValueError, match="c.jpg"):
        predict.write_submission(table.iloc[:2], probs[:2], info, tmp_path / "bad.csv")


def test_oof_table_and_confusion_png(tmp_path):
    train = pd.DataFrame({"person": ["1", "1", "2", "2"], "path": list("abcd")})
    probs = np.eye(18)[[3, 0, 1, 2]]
    rows, labels = np.array([2, 0, 3, 1]), np.array([3, 0, 1, 2])  # row i of probs/labels is train row rows[i]
    table = predict.oof_table(train, rows, np.array([1, 0, 1, 0]), probs, labels)
    assert table["path"].tolist() == list("abcd") and table["fold"].tolist() == [0, 0, 1, 1]
    assert table["pred"].tolist() == table["label"].tolist() == [0, 2, 3, 1]
    assert {"prob", "p0", "p17"} <= set(table.columns)
    predict.save_confusion(table["label"].to_numpy(), table["pred"].to_numpy(), tmp_path / "cm.png", "test")
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"
