"""Task studies end to end on the smoke dataset, through the real commands with a real local Ray and a real SQLite
MLflow store (``bench/tasks.py --quick``, run once per test run): mask, gender and age studies searched and
finalized, and ``python -m search.combine`` joining the three into 18 classes (files, MLflow run, registered model
in a fresh process, refusals)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from maskclf import data, labels, metrics, tasks
from search import combine
from search.study import settings
from search.tracking import Tracker, tracking_uri
from tests.conftest import SMOKE, copy_run_dir

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def studies(tasks_quick, tmp_path_factory):
    """A copy of the run's ``bench/tasks.py --quick``: an 18-way study ``all`` and mask, gender and age studies
    (one trial each), each finalized on folds 0 and 1, and ``python -m search.combine mask=mask gender=gender
    age=age`` of the three, as that benchmark runs it."""
    run_dir = copy_run_dir(tasks_quick.run_dir, tmp_path_factory.mktemp("tasks") / "runs")
    overrides = [*(o for o in tasks_quick.overrides if not o.startswith("run.dir=")), f"run.dir={run_dir}"]
    base = settings.load(SMOKE, overrides)
    table = pd.read_csv(run_dir / "age" / "trials.csv")
    finals = {task: json.loads((run_dir / task / "final" / "metrics.json").read_text())
              for task in ("mask", "gender", "age")}
    return SimpleNamespace(run_dir=run_dir, overrides=overrides, table=table, finals=finals,
                           lines=tasks_quick.stdout.splitlines(), stdout=tasks_quick.stdout, data=tasks_quick.data,
                           cfg=base)


def _combine(studies, *items: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.combine", "--config", str(SMOKE), *items, *studies.overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_an_age_study_searches_and_finalizes_its_own_task(studies):
    run_dir = studies.run_dir
    assert len(studies.table) == 1 and studies.table["best_val_f1"].between(0, 1).all()
    best = settings.load(run_dir / "age" / "best_config.yaml")
    assert best.model.task == "age"
    tracker = Tracker(tracking_uri(studies.cfg), "age")
    names = sorted(r.info.run_name for r in tracker.find("trial"))
    assert len(names) == 1 and all(n.split(" ", 2)[1:2] == ["age"] for n in names), names  # "#1 age · test_..."
    trial = tracker.find("trial")[0]
    assert trial.data.params["task"] == "age" and {"val_f1", "age_acc", "f1_lt30", "f1_30_59"} <= set(trial.data.metrics)

    final = run_dir / "age" / "final"
    saved = studies.finals["age"]
    assert saved["task"] == "age" and saved["folds"] == [0, 1]
    assert list(saved["per_class_f1"]) == ["<30", "30-59", ">=60"] and set(saved["band_f1"]) == {"<30", "30-59", ">=60"}
    assert "eval_f1" in saved and "mask_acc" not in saved
    oof = pd.read_csv(final / "oof.csv")
    assert {"p0", "p1", "p2"} <= set(oof.columns) and "p3" not in oof.columns and set(oof["fold"]) == {0, 1}
    assert saved["oof_f1"] == pytest.approx(metrics.macro_f1(oof["label"], oof[["p0", "p1", "p2"]].to_numpy().argmax(1)))
    assert list(pd.read_csv(final / "eval_probs.csv").columns) == ["ImageID", "p0", "p1", "p2"]
    assert not (final / "submission.csv").exists()
    parent = Tracker(tracking_uri(studies.cfg), "age").find("finalize")[0]
    assert parent.data.metrics["oof_f1"] == pytest.approx(saved["oof_f1"])
    assert {a.path for a in tracker.client.list_artifacts(parent.info.run_id)} >= {"eval_probs.csv", "oof.csv"}


def test_combine_writes_the_submission_scores_and_a_registered_model(studies):
    # the benchmark ran `python -m search.combine ... mask=mask gender=gender age=age` and failed had it failed
    assert "== tasks/combine: python -m search.combine" in studies.stdout
    out = studies.run_dir / "combined"
    m = json.loads((out / "metrics.json").read_text())
    info = pd.read_csv(studies.data / "eval" / "info.csv", dtype=str)
    sub = pd.read_csv(out / "submission.csv", dtype={"ImageID": str})
    assert list(sub.columns) == list(info.columns) and sub["ImageID"].tolist() == info["ImageID"].tolist()
    assert sub["ans"].between(0, 17).all()

    # out of fold: the truth is each image's real 18-class label, and the figures follow from the file
    oof = pd.read_csv(out / "oof.csv")
    train = data.read_train(studies.data, check_images=False).set_index("path")
    assert oof["label"].tolist() == data.labels(train.loc[oof["path"]]).tolist()
    probs = oof[[f"p{c}" for c in range(18)]].to_numpy()
    assert m["oof_f1"] == pytest.approx(metrics.macro_f1(oof["label"], probs.argmax(1)))
    assert m["images"] == len(oof) and set(oof["fold"]) == {0, 1}
    for t in tasks.PARTS:
        assert m["task_f1"][t] == pytest.approx(metrics.macro_f1(tasks.targets(oof["label"].to_numpy(), t),
                                                                 tasks.targets(probs.argmax(1), t)))
    # each 18-class probability is the product of the three ensembles' out-of-fold probabilities
    parts = {t: pd.read_csv(studies.run_dir / t / "final" / "oof.csv").set_index("path") for t in tasks.PARTS}
    row = oof.iloc[5]
    mk, gd, ag = (int(tasks.targets(np.array([row["label"]]), t)[0]) for t in tasks.PARTS)
    product = parts["mask"].loc[row["path"], f"p{mk}"] * parts["gender"].loc[row["path"], f"p{gd}"] * \
        parts["age"].loc[row["path"], f"p{ag}"]
    assert row[f"p{labels.encode(mk, gd, ag)}"] == pytest.approx(product, abs=2e-5)
    # on eval: the submission against the demo's answers
    answers = pd.read_csv(studies.data / "eval" / "answers.csv", dtype={"ImageID": str}).set_index("ImageID")["ans"]
    assert m["eval_f1"] == pytest.approx(metrics.macro_f1(answers.loc[sub["ImageID"]].to_numpy(), sub["ans"].to_numpy()))
    assert {s["study"] for s in m["sources"].values()} == {"mask", "gender", "age"}
    assert "models:/combined@champion" in studies.stdout

    tracker = Tracker(tracking_uri(studies.cfg), combine.EXPERIMENT)
    [run] = tracker.find("combine")
    assert run.info.status == "FINISHED" and run.data.params["age"] == "age"
    assert run.data.metrics["oof_f1"] == pytest.approx(m["oof_f1"]) and "age_f1" in run.data.metrics
    assert {"submission.csv", "metrics.json", "oof.csv"} <= {a.path for a in tracker.client.list_artifacts(run.info.run_id)}
    version = tracker.client.get_model_version_by_alias(combine.EXPERIMENT, "champion")
    assert version.run_id == run.info.run_id and int(version.version) == m["model_version"]


def test_the_combined_model_predicts_18_classes_in_a_fresh_process(studies):
    sub = pd.read_csv(studies.run_dir / "combined" / "submission.csv", dtype={"ImageID": str}).head(3)
    paths = [str(studies.data / "eval" / "images" / i) for i in sub["ImageID"]]
    script = ("import sys, mlflow\n"
              "m = mlflow.pyfunc.load_model('models:/combined@champion')\n"
              "print('LABELS', *m.predict([open(p, 'rb').read() for p in sys.argv[1:]])['label'])\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(studies.cfg)}
    r = subprocess.run([sys.executable, "-c", script, *paths], cwd=studies.run_dir, env=env, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [int(v) for v in r.stdout.split("LABELS", 1)[1].split()] == sub["ans"].tolist()


def test_a_second_combine_goes_to_combined_2_and_an_18_way_study_may_stand_for_a_task(studies):
    first = (studies.run_dir / "combined" / "metrics.json").read_text()
    all_final = studies.run_dir / "all" / "final"  # the benchmark's 18-way study, finalized on the same folds
    m = combine.run(studies.cfg, {"mask": "all", "gender": str(all_final), "age": "age"}, log=lambda s: None)
    assert (studies.run_dir / "combined-2" / "metrics.json").is_file()
    assert (studies.run_dir / "combined" / "metrics.json").read_text() == first
    assert m["sources"]["mask"]["task"] == "all" and m["sources"]["gender"]["final_dir"] == str(all_final)
    assert not list(studies.run_dir.glob(".combined*"))


def _copy_study(studies, src: str, dest: str) -> Path:
    shutil.copytree(studies.run_dir / src / "final", studies.run_dir / dest / "final",
                    ignore=shutil.ignore_patterns("folds"))
    return studies.run_dir / dest / "final"


def test_missing_studies_other_folds_and_wrong_tasks_exit_2_with_one_line(studies):
    seeded = _copy_study(studies, "gender", "gender-seed7")
    saved = yaml.safe_load((seeded / "config.yaml").read_text())
    saved["folds"]["seed"] = 7
    (seeded / "config.yaml").write_text(yaml.safe_dump(saved))
    moved = _copy_study(studies, "gender", "gender-folds")
    oof = pd.read_csv(moved / "oof.csv")
    oof["fold"] = 1 - oof["fold"]
    oof.to_csv(moved / "oof.csv", index=False)
    before = sorted(p.name for p in studies.run_dir.iterdir())

    r = _combine(studies, "mask=mask", "gender=gender-seed7", "age=nope")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    [line] = r.stderr.strip().splitlines()
    assert "age=nope: no study folder" in line and "differ in folds.seed 42 vs 7" in line

    r = _combine(studies, "mask=mask", "gender=gender-folds", "age=mask")
    assert r.returncode == 2
    [line] = r.stderr.strip().splitlines()
    assert "used different folds" in line and "age=mask: " in line and "is a mask model" in line

    r = _combine(studies, "mask=mask", "age=age")
    assert r.returncode == 2 and r.stderr.strip() == "error: gender=STUDY is missing"
    assert sorted(p.name for p in studies.run_dir.iterdir()) == before  # nothing written
