"""The k-fold ensemble on its own (no Ray, no MLflow): fold checkpoints and crops in, scores and files out."""

from __future__ import annotations

import pytest
import json

import numpy as np
import pandas as pd

from maskclf import config, dataset, engine, ensemble, folds, predict


@pytest.mark.integration
def test_two_fold_models_give_oof_scores_a_submission_and_the_error_files(smoke_cfg, tmp_path):
    cfg = config.apply(smoke_cfg, {"train.epochs": 1, "train.device": "cpu", "faces.device": "cpu"})
    prep = dataset.prepare(cfg, need_eval=True, log=lambda s: None, progress=False)
    ckpts = {}
    for k in (0, 1):
        train, val = prep.fold(cfg, k)
        engine.fit(config.apply(cfg, {"folds.fold": k}), train, val, out_dir=tmp_path / f"fold{k}", log=lambda s: None)
        ckpts[k] = tmp_path / f"fold{k}" / "checkpoint"

    lines: list[str] = []
    results = ensemble.fold_results(cfg, prep, ckpts, log=lines.append)
    assert sorted(results) == [0, 1]
    for k, r in results.items():
        val_rows = len(prep.fold(cfg, k)[1])
        assert r["probs"].shape == (val_rows, 18) and np.allclose(r["probs"].sum(1), 1, atol=1e-4)
        assert r["eval_probs"].shape == (len(prep.eval), 18)
        assert len(r["history"]) == 1 and 0 <= r["f1"] <= 1 and r["ckpt"] == ckpts[k]
        # each fold model as the registered ensemble scores crops; a checkpoint sent as bytes predicts the same
        net, ck_cfg = engine.load_model(ckpts[k])
        np.testing.assert_array_equal(r["eval_probs"], predict.model_probs(net, ck_cfg, prep.eval_crops.images,
                                                                           batch_size=cfg.train.batch_size * 2))
        val, ev = ensemble.predict_fold(cfg, ensemble.checkpoint_files(ckpts[k]), prep.train_crops.images,
                                        folds.split(prep.train, k, cfg.folds.n, cfg.folds.seed)[1], prep.eval_crops.images)
        np.testing.assert_array_equal(val, r["probs"])
        np.testing.assert_array_equal(ev, r["eval_probs"])
    assert lines[0].startswith("predicting with 2 fold models: ") and "flip TTA on" in lines[0]
    assert [line.split(" (")[0] for line in lines[1:]] == [
        f"fold {k}: predicted {len(prep.fold(cfg, k)[1])} train images and {len(prep.eval)} eval images" for k in (0, 1)]

    out = tmp_path / "out"
    out.mkdir()
    m = ensemble.build(cfg, prep, results, out, log=lines.append)
    assert m["folds"] == [0, 1] and m["fold_f1"] == [results[0]["f1"], results[1]["f1"]]
    assert m["images"] == sum(len(prep.fold(cfg, k)[1]) for k in (0, 1)) and 0 <= m["oof_f1"] <= 1
    assert {"eval_f1", "eval_f1_folds", "eval_f1_fold_mean"} <= set(m) and len(m["eval_f1_folds"]) == 2
    assert all((out / f).is_file() for f in ensemble.OUTPUT_FILES)
    oof = pd.read_csv(out / "oof.csv")
    assert len(oof) == m["images"] and set(oof["fold"]) == {0, 1}
    info = pd.read_csv(cfg.data.root + "/eval/info.csv")
    assert pd.read_csv(out / "submission.csv")["ImageID"].tolist() == info["ImageID"].tolist()
    json.dumps(m)  # what metrics.json holds: plain JSON
