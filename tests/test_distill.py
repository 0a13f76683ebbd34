"""Confident pseudo-labels (a finalize round) and search.distill on the smoke dataset, with a real local Ray,
a real SQLite MLflow store and the student loaded from the registry in a fresh process.

The run's shared 5-fold finalize (2 epochs a fold), copied, is the teacher; the tests run in file order: a
pseudo-label finalize on two folds, then the student of that one, then a second student and an interrupted third.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from maskclf import config, data, dataset, metrics, pseudo
from maskclf.dataset import Prepared
from maskclf.engine import Samples
from search import distill, finalize
from search.study import settings
from search.tracking import KIND_TAG, Tracker, tracking_uri
from tests.conftest import ROOT, SMOKE, copy_run_dir

P = [f"p{c}" for c in range(18)]


def test_eval_images_join_every_training_set_and_never_a_validation_fold(smoke_data):
    from maskclf import faces

    train = data.read_train(smoke_data)
    n = len(train)
    # each "crop" is its row number; the five extra images are -1
    crops = faces.FaceCrops(np.arange(n)[:, None], np.zeros((n, 4)), np.ones(n, bool), train["path"].tolist())
    extra = Samples(np.full((5, 1), -1), np.arange(5), np.full((5, 18), 1 / 18, np.float32))
    prep = Prepared(train, crops, extra=extra, soft=np.full((n, 18), 0.5 / 18, np.float32))
    cfg = settings.load(SMOKE)
    for k in range(cfg.folds.n):
        tr, va = prep.fold(cfg, k)
        assert (tr.images[-5:] == -1).all() and (tr.labels[-5:] == np.arange(5)).all()
        assert (np.asarray(va.images) >= 0).all() and va.soft is None  # a validation fold holds train rows only
        assert sorted(np.concatenate([tr.images[:-5], va.images]).ravel()) == list(range(n))
        assert tr.soft.shape == (len(tr), 18)
        assert np.allclose(tr.soft[:-5].sum(1), 0.5) and np.allclose(tr.soft[-5:].sum(1), 1)
    with pytest.raises(ValueError, match="soft targets"):
        Prepared(train, crops, extra=Samples(extra.images, extra.labels), soft=prep.soft).fold(cfg, 0)


def test_the_threshold_is_the_lowest_whose_out_of_fold_predictions_are_precise_enough():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.35, 0.65], [0.6, 0.4], [0.45, 0.55]])
    labels = np.array([0, 0, 1, 1, 1])  # the 0.6 prediction is wrong
    curve = pseudo.precision_curve(probs, labels, np.array([0.5, 0.6, 0.61, 0.9]))
    assert curve["precision"].round(3).tolist() == [0.8, 0.75, 1.0, 1.0]
    assert curve["coverage"].tolist() == [1.0, 0.8, 0.6, 0.2]
    choice = pseudo.choose_threshold(probs, labels, 0.95, np.array([0.5, 0.6, 0.61, 0.9]))
    assert (choice.threshold, choice.precision, choice.coverage) == (0.61, 1.0, 0.6)
    assert pseudo.choose_threshold(probs, labels, 0.95, np.array([0.5])).threshold is None
    rows, taken = pseudo.select(np.array([[0.7, 0.3], [0.4, 0.6], [0.2, 0.8]]), 0.65)
    assert rows.tolist() == [0, 2] and taken.tolist() == [0, 1]
    assert len(pseudo.select(probs, None)[0]) == 0


@pytest.mark.integration
def test_distill_settings_are_checked_and_a_study_without_finalize_is_one_line_exit_2(tmp_path):
    with pytest.raises(Exception, match="distill.alpha must be in"):
        settings.load(SMOKE, {"distill.alpha": 1.5, "distill.alias": "champion"})
    r = subprocess.run([sys.executable, "-m", "search.distill", "--config", str(SMOKE), f"run.dir={tmp_path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "distill.source" in r.stderr and "python -m search.finalize" in r.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.fixture(scope="module")
def teacher(ray_local, smoke_final, tmp_path_factory):
    """The run's shared smoke study and its five-fold finalize (2 epochs), in a copy the tests below add to."""
    run_dir = copy_run_dir(smoke_final.run_dir, tmp_path_factory.mktemp("distill") / "runs")
    data = smoke_final.data
    overrides = [f"data.root={data}", f"run.dir={run_dir}", f"faces.cache_dir={data.parent / 'cache'}"]
    cfg = finalize.load_best(SMOKE, None, overrides)
    m = json.loads((run_dir / "smoke" / "final" / "metrics.json").read_text())
    return SimpleNamespace(cfg=cfg, overrides=overrides, metrics=m, study=run_dir / "smoke", data=data)


def _answers(root: Path, ids) -> np.ndarray:
    return data.read_answers(root).reindex(list(ids)).to_numpy().astype(np.int64)


@pytest.mark.integration
def test_a_pseudo_label_finalize_takes_the_confident_eval_images_into_training_only(teacher):
    cfg = config.apply(teacher.cfg, {"pseudo.enabled": True, "pseudo.min_precision": 0.5, "finalize.folds": "0,1"})
    m = finalize.run(cfg, log=print)
    out, source = teacher.study / "final-2", teacher.study / "final"
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(m))
    p = m["pseudo"]
    oof, ev = pd.read_csv(source / "oof.csv"), pd.read_csv(source / "eval_probs.csv")
    # the threshold is chosen on the source's out-of-fold predictions, where the labels are known
    choice = pseudo.choose_threshold(oof[P].to_numpy(), oof["label"].to_numpy(), 0.5)
    assert p["source"] == "final" and p["threshold"] == choice.threshold and p["oof_precision"] == choice.precision
    taken = pd.read_csv(out / "pseudo_labels.csv")
    confident = ev[ev[P].max(axis=1) >= choice.threshold]
    assert 0 < p["taken"] == len(taken) == len(confident) and sum(p["per_class"].values()) == p["taken"]
    assert set(taken["ImageID"]) == set(confident["ImageID"])
    # with the ensemble's labels
    assert taken.set_index("ImageID")["label"].reindex(confident["ImageID"]).tolist() == \
        confident[P].to_numpy().argmax(1).tolist()
    truth = _answers(teacher.data, taken["ImageID"])
    assert p["eval_precision"] == pytest.approx((taken["label"].to_numpy() == truth).mean())
    # its validation folds scored train images only: no eval image is in its out-of-fold table
    scored = pd.read_csv(out / "oof.csv")
    assert not scored["path"].str.contains("/eval/").any()
    assert set(scored["path"]) == set(oof.loc[oof["fold"].isin([0, 1]), "path"])
    teacher.pseudo = m


@pytest.mark.integration
def test_the_student_learns_from_the_ensemble_scores_beside_it_and_serves_from_the_registry(teacher):
    cfg, source = distill.student_config(settings.load(SMOKE, teacher.overrides), teacher.overrides)
    assert source.name == "final-2" and cfg.finalize.tta is False  # the newest finished finalize
    m = distill.run(cfg, log=print)
    out = teacher.study / "distill"
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(m))
    assert m["pseudo_labelled_eval_images"] == teacher.pseudo["pseudo"]["taken"]
    # the soft vote of the source's two fold models on every training image, with flip TTA as it used
    from maskclf import predict

    assert m["targets"] == "ensemble" and m["train_rows_with_ensemble_targets"] == 420
    prep = dataset.prepare(cfg, progress=False, log=lambda s: None)
    vote = predict.predict_crops(predict.load_ensemble([source / "folds" / f"fold{k}" / "checkpoint" for k in (0, 1)]),
                                 prep.train_crops.images, tta=True)
    assert np.allclose(np.load(out / "teacher_probs.npy"), vote, atol=1e-5)
    # every figure recomputed from the files
    oof = pd.read_csv(out / "oof.csv")
    assert set(oof["fold"]) == {0} and m["val_f1"] == pytest.approx(
        metrics.macro_f1(oof["label"].to_numpy(), oof[P].to_numpy().argmax(1)), abs=1e-4)
    ev = pd.read_csv(out / "eval_probs.csv")
    truth = _answers(teacher.data, ev["ImageID"])
    assert m["eval_f1"] == pytest.approx(metrics.macro_f1(truth, ev[P].to_numpy().argmax(1)), abs=1e-4)
    src = json.loads((source / "metrics.json").read_text())
    assert m["ensemble_eval_f1"] == src["eval_f1"] and m["fold_model_eval_f1"] == src["eval_f1_folds"][0]
    assert m["eval_f1_vs_ensemble"] == pytest.approx(m["eval_f1"] / src["eval_f1"])
    sub = pd.read_csv(out / "submission.csv", dtype={"ImageID": str})
    assert sub.set_index("ImageID")["ans"].reindex(ev["ImageID"]).tolist() == ev[P].to_numpy().argmax(1).tolist()
    # registered under the study's model with its own alias; the champion stays the finalize's
    tracker = Tracker(tracking_uri(cfg), "smoke")
    fast = tracker.client.get_model_version_by_alias("smoke", "fast")
    assert int(fast.version) == m["model_version"]
    assert int(tracker.client.get_model_version_by_alias("smoke", "champion").version) == \
        teacher.pseudo["model_version"]
    run = tracker.client.get_run(fast.run_id)
    assert run.data.tags[KIND_TAG] == "distill" and run.data.params["source"] == "final-2"
    assert run.data.metrics["eval_f1"] == pytest.approx(m["eval_f1"])
    paths = [str(teacher.data / "eval" / "images" / i) for i in sub["ImageID"].head(4)]
    script = ("import sys, mlflow\n"
              "m = mlflow.pyfunc.load_model('models:/smoke@fast')\n"
              "print('LABELS', *m.predict([open(p, 'rb').read() for p in sys.argv[1:]])['label'])\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(cfg)}
    r = subprocess.run([sys.executable, "-c", script, *paths], cwd=out, env=env, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    labels = [int(v) for v in r.stdout.split("LABELS", 1)[1].split()]
    assert labels == sub["ans"].head(4).tolist()  # the served student crops and predicts as distill scored it
    teacher.student = m


@pytest.mark.integration
def test_a_finished_distillation_is_never_overwritten_and_an_interrupted_one_continues(teacher):
    first = teacher.study / "distill" / "metrics.json"
    before = first.stat().st_mtime_ns
    over = [*teacher.overrides, "distill.temperature=4", "distill.targets=oof"]
    cfg, _ = distill.student_config(settings.load(SMOKE, over), over)
    m = distill.run(cfg, log=print)
    second = teacher.study / "distill-2"
    assert first.stat().st_mtime_ns == before and (second / "metrics.json").is_file()
    assert m["temperature"] == 4 and "trained epochs 1-2" in m["trained"]
    # out-of-fold targets: the two folds the source finalized; the other rows learn from their labels
    assert m["train_rows_with_ensemble_targets"] == 2 * 84 and m["train_rows_with_labels_only"] == 3 * 84
    ckpt = second / "folds" / "fold0" / "checkpoint" / "state.pt"
    trained = ckpt.stat().st_mtime_ns
    (second / "metrics.json").unlink()  # killed after training, before its end
    again = distill.run(cfg, log=print)
    assert again["trained"] == "checkpoint complete, not retrained" and ckpt.stat().st_mtime_ns == trained
    assert again["val_f1"] == m["val_f1"] and not (teacher.study / "distill-3").exists()
    assert again["model_version"] == m["model_version"] + 1


@pytest.mark.integration
def test_the_benchmark_scores_and_times_the_ensembles_the_fold_model_and_every_student(teacher, tmp_path):
    results = tmp_path / "RESULTS.md"
    r = subprocess.run([sys.executable, "bench/distill.py", "--quick", "--config", str(SMOKE),
                        "--results", str(results), *teacher.overrides], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line.split(" | ") for line in results.read_text().splitlines() if line.startswith("| 20")]
    got = {row[2]: row[3] for row in rows}
    final, pseudo_final = (json.loads((teacher.study / d / "metrics.json").read_text()) for d in ("final", "final-2"))
    # the figures of the runs, recomputed by the benchmark from their eval probabilities
    assert got["ensemble of 5 (final) / flip TTA"] == f"{final['eval_f1']:.4f}"
    assert got["one fold model (fold 0 of final) / flip TTA"] == f"{final['eval_f1_folds'][0]:.4f}"
    assert any(k.startswith(f"ensemble of 2 + {pseudo_final['pseudo']['taken']} pseudo") and
               v == f"{pseudo_final['eval_f1']:.4f}" for k, v in got.items())
    for d, targets in (("distill", "soft vote"), ("distill-2", "out-of-fold")):
        m = json.loads((teacher.study / d / "metrics.json").read_text())
        name = (f"student ({d}: {teacher.cfg.model.backbone} 32px, 2 epochs, seed 0, {targets} of {m['source']}, "
                f"T {m['temperature']:g})")  # a student is the ensemble's own configuration unless told otherwise
        assert got[name] == f"{m['eval_f1']:.4f}"
    # the fold model without TTA is scored by the benchmark itself, from its checkpoint
    from maskclf import engine, predict

    net, ck_cfg = engine.load_model(teacher.study / "final" / "folds" / "fold0" / "checkpoint")
    prep = dataset.prepare(teacher.cfg, need_eval=True, progress=False, log=lambda s: None)
    probs = predict.model_probs(net, ck_cfg, prep.eval_crops.images, tta=False)
    truth = _answers(teacher.data, prep.eval["image_id"])
    assert got["one fold model (fold 0 of final), no TTA"] == f"{metrics.macro_f1(truth, probs.argmax(1)):.4f}"
    measured = [row for row in rows if not row[6].startswith("(as the")]
    assert len(measured) == 4 and rows[-1][6] == "(as the first)"  # the second student is the first's network
    assert all(float(row[c].removesuffix("/s")) > 0 for row in measured for c in (6, 7, 8, 9))
    assert all(len(row[5].split(" / ")) == 3 for row in rows)
