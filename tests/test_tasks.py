"""Task models (model.task: mask | gender | age) in the core, without Ray or MLflow: labels, heads, metrics,
training, the k-fold ensemble's files, and the algebra that multiplies three tasks into 18 classes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from maskclf import config, dataset, engine, ensemble, labels, metrics, model, tasks
from maskclf.errors import InputError
from search import combine
from search.study import space


def _all_labels() -> np.ndarray:
    return np.arange(labels.NUM_CLASSES)


def test_task_labels_are_the_parts_of_the_18_class_code():
    y = _all_labels()
    assert tasks.targets(y, "all").tolist() == y.tolist()
    assert tasks.targets(y, "mask").tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert tasks.targets(y, "gender").tolist() == ([0] * 3 + [1] * 3) * 3
    assert tasks.targets(y, "age").tolist() == [0, 1, 2] * 6
    assert labels.encode(*(tasks.targets(y, t) for t in tasks.PARTS)).tolist() == y.tolist()
    assert [tasks.num_classes(t) for t in tasks.TASKS] == [18, 3, 2, 3]
    assert tasks.class_names("age") == ["<30", "30-59", ">=60"] and tasks.class_names("all")[4] == "wear/female/30-59"
    with pytest.raises(ValueError, match="unknown task 'ages'"):
        tasks.num_classes("ages")


def test_three_tasks_multiply_into_18_classes_and_sum_back():
    rng = np.random.default_rng(0)
    pm, pg, pa = (rng.dirichlet(np.ones(n), size=5) for n in (3, 2, 3))
    p = tasks.combine(pm, pg, pa)
    assert p.shape == (5, 18) and np.allclose(p.sum(1), 1)
    # p(label) = p(mask) p(gender) p(age) at label = mask * 6 + gender * 3 + age
    assert p[2, labels.encode(2, 1, 0)] == pytest.approx(pm[2, 2] * pg[2, 1] * pa[2, 0])
    for t, part in zip(tasks.PARTS, (pm, pg, pa)):
        assert np.allclose(tasks.marginal(p, t), part)
    # one-hot tasks give the one-hot class, and the 18 classes' marginals are each task's label
    onehot = tasks.combine(np.eye(3)[[1]], np.eye(2)[[0]], np.eye(3)[[2]])
    assert onehot.argmax(1).tolist() == [labels.encode(1, 0, 2)]
    with pytest.raises(ValueError, match="rows"):
        tasks.combine(pm, pg[:3], pa)


def test_age_scores_keep_the_age_band_f1s_and_mask_scores_only_their_accuracy():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.9 + 0.1 / 3
    s = metrics.scores(probs, y, "age")
    assert s["val_f1"] == pytest.approx(metrics.macro_f1(y, probs.argmax(1)))
    assert s["age_acc"] == s["val_acc"] == pytest.approx(4 / 6)
    assert [s["f1_lt30"], s["f1_30_59"], s["f1_ge60"]] == pytest.approx(
        metrics.per_class_f1(y, probs.argmax(1), 3).tolist())
    assert "mask_acc" not in s and "gender_acc" not in s
    m = metrics.scores(np.eye(3)[[0, 2, 1]], np.array([0, 2, 2]), "mask")
    assert set(m) == {"val_f1", "val_acc", "val_loss", "mask_acc"}


def test_a_task_model_has_one_head_of_its_classes_whatever_model_head_says():
    for task, n in (("mask", 3), ("gender", 2), ("age", 3), ("all", 18)):
        net = model.create("test_resnet", head="multitask", task=task).eval()
        assert net.num_classes == n and net(torch.zeros(2, 3, 32, 32)).shape == (2, n)
    assert model.create("test_resnet", head="multitask").head.out_features == 8  # 18-way multitask: 3 + 2 + 3


def test_unknown_task_is_a_config_error_and_task_studies_leave_out_what_they_ignore(smoke_cfg):
    with pytest.raises(InputError, match="model.task: unknown 'gendr'"):
        config.validate(config.apply(smoke_cfg, {"model.task": "gendr"}))
    cfg = config.apply(smoke_cfg, {"search.space": {"model.head": {"choice": ["joint", "multitask"]},
                                                    "data.age_old": {"choice": [58, 60]},
                                                    "train.lr": {"loguniform": [1e-3, 1e-2]}}})
    lines: list[str] = []
    assert space.for_task(cfg, lines.append) is cfg and not lines  # all 18 classes: every parameter matters
    age = space.for_task(config.apply(cfg, {"model.task": "age"}), lines.append)
    assert list(age.search.space) == ["data.age_old", "train.lr"]
    mask = space.for_task(config.apply(cfg, {"model.task": "mask"}), lines.append)
    assert list(mask.search.space) == ["train.lr"]
    assert lines[-1] == "search.space: model.head, data.age_old left out (no effect on a mask model)"


@pytest.mark.integration
def test_age_training_labels_use_the_cut_off_and_validation_the_real_bands(smoke_cfg):
    cfg = config.apply(smoke_cfg, {"model.task": "age", "data.age_old": 45})
    prep = dataset.prepare(cfg, log=lambda s: None, progress=False)
    train, val = prep.fold(cfg)
    all_train, all_val = prep.fold(config.apply(cfg, {"model.task": "all"}))
    assert set(train.labels) <= {0, 1, 2} and train.labels.tolist() == tasks.targets(all_train.labels, "age").tolist()
    assert val.labels.tolist() == tasks.targets(all_val.labels, "age").tolist()
    assert (train.labels == 2).sum() > (tasks.targets(prep.fold(config.apply(cfg, {"data.age_old": 60}))[0].labels,
                                                      "age") == 2).sum()  # 45 moves people into the top band


@pytest.mark.integration
def test_gender_fold_models_give_a_two_column_ensemble_without_a_submission(smoke_cfg, tmp_path):
    cfg = config.apply(smoke_cfg, {"model.task": "gender", "train.epochs": 1, "train.device": "cpu",
                                   "faces.device": "cpu", "train.loss": "soft_f1", "train.sampler": "weighted"})
    prep = dataset.prepare(cfg, need_eval=True, log=lambda s: None, progress=False)
    ckpts = {}
    for k in (0, 1):
        train, val = prep.fold(cfg, k)
        r = engine.fit(config.apply(cfg, {"folds.fold": k}), train, val, out_dir=tmp_path / f"fold{k}",
                       log=lambda s: None)
        assert {"val_f1", "gender_acc"} <= set(r) and "mask_acc" not in r and "f1_ge60" not in r
        ckpts[k] = tmp_path / f"fold{k}" / "checkpoint"
    results = ensemble.fold_results(cfg, prep, ckpts)
    assert results[0]["probs"].shape[1] == 2
    out = tmp_path / "out"
    out.mkdir()
    m = ensemble.build(cfg, prep, results, out, log=lambda s: None)
    json.dumps(m)
    assert m["task"] == "gender" and list(m["per_class_f1"]) == ["male", "female"] and "band_f1" not in m
    assert {"gender_acc", "eval_f1"} <= set(m) and "mask_acc" not in m
    assert all((out / f).is_file() for f in ensemble.output_files("gender"))
    assert not (out / "submission.csv").exists() and "submission.csv" not in ensemble.output_files("gender")
    oof = pd.read_csv(out / "oof.csv")
    assert {"p0", "p1"} <= set(oof.columns) and "p2" not in oof.columns and set(oof["label"]) <= {0, 1}
    assert m["oof_f1"] == pytest.approx(metrics.macro_f1(oof["label"], oof["pred"]))
    probs = pd.read_csv(out / "eval_probs.csv")
    info = pd.read_csv(cfg.data.root + "/eval/info.csv")
    assert probs["ImageID"].tolist() == prep.eval["image_id"].tolist() and set(probs["ImageID"]) == set(info["ImageID"])
    assert list(probs.columns) == ["ImageID", "p0", "p1"] and np.allclose(probs[["p0", "p1"]].sum(axis=1), 1, atol=1e-4)
    answers = pd.read_csv(cfg.data.root + "/eval/answers.csv").set_index("ImageID")["ans"]
    truth = tasks.targets(answers.reindex(probs["ImageID"]).to_numpy(), "gender")
    assert m["eval_f1"] == pytest.approx(metrics.macro_f1(truth, probs[["p0", "p1"]].to_numpy().argmax(1)), abs=1e-6)


def test_combine_arguments_split_studies_from_overrides():
    assert combine.split_args(["mask=a", "gender=runs/b", "age=c", "run.dir=/tmp/x"]) == (
        {"mask": "a", "gender": "runs/b", "age": "c"}, ["run.dir=/tmp/x"])
    with pytest.raises(InputError) as e:
        combine.split_args(["mask=", "age=a", "age=b"])
    assert e.value.problems == ["mask=: name a study after mask=", "age= is given twice"]


def test_a_models_probabilities_as_a_task_are_its_own_or_summed_from_18_classes():
    rng = np.random.default_rng(1)
    p18, p3 = rng.dirichlet(np.ones(18), size=4), rng.dirichlet(np.ones(3), size=4)
    assert tasks.as_task(p3, "age", "age") is not None and np.array_equal(tasks.as_task(p3, "age", "age"), p3)
    assert np.allclose(tasks.as_task(p18, "all", "gender"), tasks.marginal(p18, "gender"))
    with pytest.raises(ValueError, match="a mask model's probabilities are not age probabilities"):
        tasks.as_task(p3, "mask", "age")


def test_an_18_way_ensemble_reports_each_tasks_macro_f1_of_its_summed_probabilities():
    y = np.array([labels.encode(0, 1, 2), labels.encode(2, 0, 0), labels.encode(1, 1, 1)])
    probs = np.full((3, 18), 0.01)
    probs[[0, 1, 2], [labels.encode(0, 1, 2), labels.encode(2, 0, 1), labels.encode(1, 0, 1)]] = 1.0
    probs /= probs.sum(1, keepdims=True)
    f1 = ensemble.task_f1(y, probs)
    assert f1["mask"] == 1.0 and f1["age"] == pytest.approx(metrics.macro_f1([2, 0, 1], [2, 1, 1]))
    assert f1["gender"] == pytest.approx(metrics.macro_f1([1, 0, 1], [1, 0, 0]))
