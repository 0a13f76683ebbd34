"""search.finalize on the smoke dataset with a real local Ray and a real SQLite MLflow store.

The run's shared finalize of five folds (2 epochs each), copied, is continued by the tests below, which run in
file order: the interruption test leaves the study finished again for the final-2 test.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from maskclf import config, ensemble
from maskclf import labels as labels_mod
from maskclf.errors import InputError
from search import finalize
from search.study import settings
from search.tracking import Tracker, tracking_uri
from tests.conftest import SMOKE, copy_run_dir, free_port

ROOT = Path(__file__).resolve().parent.parent
METRIC_KEYS = {"oof_f1", "fold_f1", "per_class_f1", "mask_acc", "gender_acc", "age_acc", "eval_f1",
               "eval_f1_folds", "eval_f1_fold_mean"}


@pytest.fixture(scope="module")
def study(ray_local, smoke_final, tmp_path_factory):
    """The run's shared finalize of a best_config.yaml as search.tune writes it (the smoke config, 2 epochs), in a
    copy of its own: the tests below continue it and finalize it again."""
    run_dir = copy_run_dir(smoke_final.run_dir, tmp_path_factory.mktemp("finalize") / "runs")
    data = smoke_final.data
    overrides = [f"data.root={data}", f"run.dir={run_dir}", f"faces.cache_dir={data.parent / 'cache'}"]
    cfg = finalize.load_best(SMOKE, None, overrides)  # found at <run.dir>/<study>/best_config.yaml
    assert cfg.folds.n == 5
    final = run_dir / "smoke" / "final"
    return SimpleNamespace(cfg=cfg, overrides=overrides, metrics=json.loads((final / "metrics.json").read_text()),
                           lines=smoke_final.lines, data=data, final=final, best=run_dir / "smoke" / "best_config.yaml")


def _tracker(cfg) -> Tracker:
    return Tracker(tracking_uri(cfg), cfg.run.study)


def _steps(tracker: Tracker, run_id: str, key: str = "val_f1") -> list[int]:
    return [m.step for m in tracker.client.get_metric_history(run_id, key)]


def test_outputs_of_a_five_fold_finalize(study):
    out, m = study.final, study.metrics
    assert study.cfg.train.epochs == 2 and m["folds"] == [0, 1, 2, 3, 4]
    info = pd.read_csv(study.data / "eval" / "info.csv", dtype=str)
    sub = pd.read_csv(out / "submission.csv", dtype={"ImageID": str})
    assert list(sub.columns) == list(info.columns)
    assert sub["ImageID"].tolist() == info["ImageID"].tolist() and sub["ImageID"].is_unique
    assert sub["ans"].between(0, 17).all()

    saved = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(saved) and saved["oof_f1"] == pytest.approx(m["oof_f1"])
    assert len(saved["fold_f1"]) == 5 and len(saved["eval_f1_folds"]) == 5 and len(saved["per_class_f1"]) == 18
    assert 0 <= saved["eval_f1"] <= 1 and "wear/female/<30" in saved["per_class_f1"]
    assert saved["trained_folds"] == [0, 1, 2, 3, 4]

    oof = pd.read_csv(out / "oof.csv", dtype={"person": str})
    assert len(oof) == saved["images"] == 7 * 60 and set(oof["fold"]) == set(range(5))
    assert {"person", "path", "fold", "label", "pred", "prob", "p0", "p17"} <= set(oof.columns)
    assert oof.groupby("person")["fold"].nunique().max() == 1  # folds split by person
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    for png in ("per_class_f1.png", "errors.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    errors = pd.read_csv(out / "errors.csv", dtype={"person": str})
    assert len(errors) == (oof["label"] != oof["pred"]).sum()
    assert {"path", "person", "true", "pred", "prob"} <= set(errors.columns)
    assert errors["pair_count"].is_monotonic_decreasing and set(errors["path"]) <= set(oof["path"])
    assert settings.load(out / "config.yaml").train.epochs == 2
    for k in range(5):
        assert (out / "folds" / f"fold{k}" / "checkpoint" / "state.pt").is_file()
    assert sum("trained epochs 1-2" in line for line in study.lines) == 5
    assert any(line.startswith("out-of-fold macro F1") and "eval macro F1" in line for line in study.lines)


def test_mlflow_holds_the_finalize_run_its_folds_and_the_model(study):
    tracker = _tracker(study.cfg)
    [parent] = tracker.find("finalize")
    assert parent.info.status == "FINISHED" and parent.data.tags["maskclf.key"] == "final"
    assert parent.data.params["backbone"] == study.cfg.model.backbone and parent.data.params["tta"] == "True"
    assert {"oof_f1", "eval_f1", "eval_f1_fold_mean"} <= set(parent.data.metrics)
    artifacts = {a.path for a in tracker.client.list_artifacts(parent.info.run_id)}
    assert {"submission.csv", "oof.csv", "metrics.json", "confusion_matrix.png", "config.yaml"} <= artifacts
    assert {"per_class_f1.png", "errors.png", "errors.csv"} <= artifacts
    folds = tracker.find("fold", parent=parent.info.run_id)
    assert sorted(int(r.data.tags["maskclf.key"]) for r in folds) == [0, 1, 2, 3, 4]
    for r in folds:
        assert r.info.status == "FINISHED" and r.data.params["fold"] == r.data.tags["maskclf.key"]
        assert _steps(tracker, r.info.run_id) == [1, 2] and _steps(tracker, r.info.run_id, "train_loss") == [1, 2]
        assert "fold_f1" in r.data.metrics
    version = tracker.client.get_model_version_by_alias("smoke", "champion")
    assert version.run_id == parent.info.run_id and int(version.version) == study.metrics["model_version"]


def test_registered_model_predicts_in_a_fresh_process(study):
    """Photos in as bytes and as base64, answers out (label, class, probability); file paths only for a caller
    that loads the model with ``paths``; a bad photo is one line naming it."""
    sub = pd.read_csv(study.final / "submission.csv", dtype={"ImageID": str}).head(3)
    paths = [str(study.data / "eval" / "images" / i) for i in sub["ImageID"]]
    tiny = study.final.parent / "tiny.jpg"  # smaller than the smallest face MTCNN looks for
    Image.open(paths[0]).resize((20, 30)).save(tiny)
    script = ("import base64, json, sys, mlflow\n"
              "m = mlflow.pyfunc.load_model('models:/smoke@champion')\n"
              "photos = [open(p, 'rb').read() for p in sys.argv[1:]]\n"
              "a = m.predict(photos)\n"
              "b = m.predict([base64.b64encode(x).decode() for x in photos])\n"
              "on_files = mlflow.pyfunc.load_model('models:/smoke@champion', model_config={'paths': True})\n"
              "c = on_files.predict(sys.argv[1:])\n"
              "try:\n"
              "    m.predict([sys.argv[1], 'bm90IGFuIGltYWdl'])\n"
              "    bad = 'accepted'\n"
              "except mlflow.exceptions.MlflowException as e:\n"
              "    bad = e.message\n"
              "print('OUT', json.dumps([a.to_dict('list'), b.to_dict('list'), c.to_dict('list'), bad]))\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(study.cfg)}
    r = subprocess.run([sys.executable, "-c", script, *paths, str(tiny)], cwd=study.final, env=env, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    as_bytes, as_base64, as_paths, bad = json.loads(r.stdout.split("OUT", 1)[1])
    labels = as_bytes["label"]
    assert len(labels) == 4 and all(0 <= v < 18 for v in labels)
    assert labels[:3] == sub["ans"].tolist()  # the served model crops and votes exactly as finalize did
    assert as_base64 == as_bytes and as_paths == as_bytes
    assert as_bytes["class"] == [labels_mod.class_name(v) for v in labels]
    assert all(1 / 18 <= p <= 1 for p in as_bytes["probability"])  # the top class of 18
    assert bad == ("2 problems: photo 1: a file path? the model opens no file it is sent: send the photo's bytes, "
                   "base64-encoded; photo 2: not a JPEG or PNG image")


def test_mlflow_models_serve_answers_base64_photos_and_refuses_a_path_with_one_line(study):
    """``mlflow models serve`` of the registered model: base64 JPEGs in, the submission's labels out; a path is
    HTTP 400 with the one-line reason and no stack trace, and the next request is answered."""
    sub = pd.read_csv(study.final / "submission.csv", dtype={"ImageID": str}).head(2)
    photos = [base64.b64encode((study.data / "eval" / "images" / i).read_bytes()).decode() for i in sub["ImageID"]]
    port = free_port()
    # it runs uvicorn from PATH, as in an activated environment
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(study.cfg),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/smoke@champion",
                             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            env=env, cwd=study.final, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)

    def post(body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    try:
        deadline = time.time() + 150
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
                time.sleep(1)
        status, answer = post({"inputs": photos})
        assert status == 200 and [p["label"] for p in answer["predictions"]] == sub["ans"].tolist()
        status, answer = post({"inputs": ["/etc/passwd"]})
        assert status == 400 and "photo 1: a file path?" in answer["message"]
        assert "stack_trace" not in answer and "Traceback" not in json.dumps(answer)
        status, answer = post({"inputs": photos[:1]})
        assert status == 200 and answer["predictions"][0]["label"] == sub["ans"].iloc[0]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_fold_models_predict_as_ray_tasks_exactly_as_in_one_process(study, monkeypatch):
    from maskclf import dataset, engine
    from search.cluster import predictions

    cfg = study.cfg
    prep = dataset.prepare(cfg, need_eval=True, log=lambda s: None, progress=False)
    ckpts = {k: study.final / "folds" / f"fold{k}" / "checkpoint" for k in (0, 3)}
    lines: list[str] = []
    with monkeypatch.context() as m:  # the driver never loads a fold model: the Ray tasks' processes do
        m.setattr(engine, "load_model", lambda *a, **k: pytest.fail("a fold model was loaded in the driver"))
        on_ray = ensemble.fold_results(cfg, prep, ckpts, run_folds=predictions.runner(cfg, lines.append),
                                       log=lines.append)
    assert any(line.startswith("fold models as Ray tasks, 1 CPU each") for line in lines), lines
    assert sum(line.startswith("fold ") and " predicted 84 train images and 70 eval images" in line
               for line in lines) == 2, lines
    here = ensemble.fold_results(cfg, prep, ckpts)
    for k in ckpts:
        assert on_ray[k]["probs"].shape == (84, 18) and on_ray[k]["eval_probs"].shape == (70, 18)
        np.testing.assert_array_equal(on_ray[k]["probs"], here[k]["probs"])
        np.testing.assert_array_equal(on_ray[k]["eval_probs"], here[k]["eval_probs"])
        assert on_ray[k]["f1"] == here[k]["f1"]
    # the shared finalize wrote what its own Ray tasks predicted: the same out-of-fold probabilities
    oof = pd.read_csv(study.final / "oof.csv")
    for k in ckpts:
        written = oof[oof["fold"] == k][[f"p{c}" for c in range(18)]].to_numpy()
        np.testing.assert_allclose(written, here[k]["probs"], atol=6e-6)


def test_interrupted_finalize_retrains_only_the_unfinished_fold(study):
    ckpts = {k: study.final / "folds" / f"fold{k}" / "checkpoint" / "state.pt" for k in range(5)}
    before = {k: p.stat().st_mtime_ns for k, p in ckpts.items()}
    ckpts[3].unlink()
    (study.final / "metrics.json").unlink()
    lines: list[str] = []
    m = finalize.run(study.cfg, log=lines.append)

    assert m["trained_folds"] == [3] and (study.final / "metrics.json").is_file()
    assert not (study.final.parent / "final-2").exists()
    assert any(line.startswith("continuing the interrupted finalize") for line in lines)
    assert sum("not retrained" in line for line in lines) == 4
    assert any(line.startswith("fold 3: trained epochs 1-2") for line in lines)
    for k in (0, 1, 2, 4):
        assert ckpts[k].stat().st_mtime_ns == before[k]
    assert ckpts[3].is_file()
    assert len(pd.read_csv(study.final / "submission.csv")) == len(pd.read_csv(study.data / "eval" / "info.csv"))

    tracker = _tracker(study.cfg)
    [parent] = tracker.find("finalize")  # continued, not duplicated
    assert parent.info.status == "FINISHED" and parent.data.tags["folds_trained"] == "3"
    folds = tracker.find("fold", parent=parent.info.run_id)
    assert len(folds) == 5
    for r in folds:
        assert _steps(tracker, r.info.run_id) == [1, 2]  # no epoch logged twice
        retrained = r.data.tags["maskclf.key"] == "3"
        assert ("not retrained" not in r.data.tags["last_finalize"]) == retrained


def test_second_finalize_writes_final_2_and_keeps_final(study, capsys):
    files = ("submission.csv", "metrics.json", "oof.csv")
    before = {f: (study.final / f).read_bytes() for f in files}
    rc = finalize.main(["--config", str(SMOKE), "--best", str(study.best), *study.overrides, "finalize.folds=0",
                        "finalize.tta=false"])
    out = capsys.readouterr().out
    assert rc == 0, out
    second = study.final.parent / "final-2"
    m = json.loads((second / "metrics.json").read_text())
    assert m["folds"] == [0] and m["trained_folds"] == [0] and m["tta"] is False and "eval_f1" in m
    assert all((second / f).is_file() for f in ensemble.ANALYSIS_FILES)  # one fold: a subset of the crops
    assert {f: (study.final / f).read_bytes() for f in files} == before
    assert str(second) in out and "out-of-fold macro F1" in out
    tracker = _tracker(study.cfg)
    assert sorted(r.data.tags["maskclf.key"] for r in tracker.find("finalize")) == ["final", "final-2"]


def test_a_cluster_without_gpus_is_refused_before_anything_is_written(study, capsys):
    rc = finalize.main(["--config", str(SMOKE), "--best", str(study.best), *study.overrides, "run.study=gpu",
                        "search.gpus_per_trial=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "search.gpus_per_trial" in err[0]
    assert not (study.final.parent.parent / "gpu" / "final").exists()


@pytest.mark.integration
def test_missing_best_config_is_one_line_and_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "search.finalize", "--config", str(SMOKE), f"run.dir={tmp_path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert str(tmp_path / "smoke" / "best_config.yaml") in r.stderr and "python -m search.tune" in r.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_bad_fold_selection_is_reported(smoke_cfg):
    with pytest.raises(InputError, match="finalize.folds"):
        finalize.fold_list(config.apply(smoke_cfg, {"finalize.folds": "0,7"}))
    assert finalize.fold_list(config.apply(smoke_cfg, {"finalize.folds": "3, 1"})) == [1, 3]


def test_finalize_epochs_replace_the_searchs_budget(smoke_cfg, tmp_path):
    assert finalize.final_epochs(smoke_cfg).train.epochs == smoke_cfg.train.epochs  # 0: the search's budget
    longer = finalize.final_epochs(config.apply(smoke_cfg, {"finalize.epochs": 7}))
    assert longer.train.epochs == 7 and longer.finalize.epochs == 7
    best = config.save(config.apply(smoke_cfg, {"finalize.epochs": 4}), tmp_path / "best.yaml")
    assert finalize.load_best(SMOKE, best, []).train.epochs == 4
    assert finalize.load_best(SMOKE, best, ["finalize.epochs=0"]).train.epochs == smoke_cfg.train.epochs
    with pytest.raises(InputError, match="finalize.epochs must be >= 0"):
        settings.load(SMOKE, {"finalize.epochs": -1})
