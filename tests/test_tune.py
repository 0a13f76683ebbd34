"""search.tune on the smoke config with a real local Ray and a real SQLite MLflow store."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maskclf import config
from search.cluster import experiment
from search import tune as tune_mod
from search.study import settings
from search.tracking import Tracker, tracking_uri
from tests.conftest import SMOKE
from tests.faults import _check_optuna_matches

ROOT = Path(__file__).resolve().parent.parent


def _runs(cfg, kind):
    t = Tracker(tracking_uri(cfg), cfg.run.study)
    return t, t.find(kind)


def _history(tracker, run_id, key="val_f1"):
    return [m.step for m in tracker.client.get_metric_history(run_id, key)]


def test_smoke_search_tracks_every_trial(smoke_final, tmp_path):
    """The run's shared smoke study (``python -m search.tune``, 2 trials of 2 epochs): its files, its printed
    progress and its MLflow runs."""
    import pandas as pd

    smoke_cfg = settings.load(SMOKE, smoke_final.overrides)
    study = Path(smoke_cfg.run.dir) / "smoke"
    table = pd.read_csv(study / "trials.csv")
    assert len(table) == 2 and set(table["status"]) <= {"done", "stopped"}
    assert (study / "best_config.yaml").is_file()
    out = "\n".join(smoke_final.tune_lines)
    assert "[1/2 done] trial " in out and "[2/2 done] trial " in out, out[-3000:]
    assert re.search(r"val_f1 \d\.\d{3} after \d+ epochs \((stopped by ASHA|full budget)\)", out)
    # two trials are too few to rank parameters by importance: that plot alone is skipped
    assert "plot 'parameter importances' skipped" in out
    plots = {"history.png", "parallel_coordinates.png", "learning_curves.png"}
    assert {p.name for p in (study / "plots").iterdir()} == plots

    tracker, parents = _runs(smoke_cfg, "search")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    logged = tracker.client.list_artifacts(parent.info.run_id, "plots")
    assert {Path(a.path).name for a in logged} == plots and all(a.file_size > 0 for a in logged)
    assert parent.data.params["num_samples"] == "2" and "space.train.lr" in parent.data.params
    p = parent.data.params  # what cut the crops, per detector, beside the dataset's summary
    by = [int(p.get(f"data.faces_{k}", 0)) for k in ("mtcnn", "retinaface", "box")]
    assert by[0] > 0 and by[1] > 0 and sum(by) == 420 and int(p["data.faces_found"]) == by[0] + by[1], by
    exp = tracker.client.get_experiment(tracker.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    trials = tracker.find("trial", parent=parent.info.run_id)
    assert len(trials) == 2
    for r in trials:
        assert r.info.status == "FINISHED"
        p = r.data.params
        assert p["backbone"] in ("test_resnet", "test_efficientnet") and p["optimizer"] in ("adamw", "sgd")
        assert float(p["lr"]) > 0 and p["scheduler"] in ("cosine", "step")
        assert r.info.run_name.startswith("#") and p["backbone"] in r.info.run_name
        steps = _history(tracker, r.info.run_id)
        assert steps == sorted(set(steps)) and steps[0] == 1
        for key in ("val_loss", "train_loss", "lr", "images_per_s", "epoch_time"):
            assert key in r.data.metrics

    best = settings.load(study / "best_config.yaml")
    assert best.model.backbone in ("test_resnet", "test_efficientnet")
    from maskclf import train

    assert train.main(["--config", str(study / "best_config.yaml"), "--quiet", "train.epochs=1",
                       f"run.dir={tmp_path / 'retrain'}"]) == 0


class _Trial:
    def __init__(self, trial_id, status, epochs, f1, config, error_file=None):
        self.trial_id, self.status, self.config, self.error_file = trial_id, status, config, error_file
        self.last_result = {"epoch": epochs, "val_f1": f1} if epochs else {}
        self.metric_analysis = {"val_f1": {"max": f1}} if epochs else {}


def test_live_table_prints_a_line_per_trial_and_the_top_trials(tmp_path, capsys):
    import pickle

    from search.cluster.progress import LiveTable

    cfg = settings.load(ROOT / "conf" / "smoke.yaml")
    live = pickle.loads(pickle.dumps(LiveTable(cfg, every=2)))  # Tune pickles its callbacks
    cfg = {"model.backbone": "test_resnet", "train.lr": 0.01}
    a = _Trial("t_00000", "RUNNING", 6, 0.41, cfg)
    b = _Trial("t_00001", "RUNNING", 2, 0.2, cfg)
    err = tmp_path / "error.txt"
    err.write_text("Traceback (most recent call last):\nRuntimeError: out of memory\n")
    c = _Trial("t_00002", "RUNNING", 0, None, cfg, error_file=str(err))
    live.on_trial_complete(0, [a, b, c], a)
    a.status = "TERMINATED"
    live.on_trial_complete(0, [a, b, c], b)
    b.status = "TERMINATED"
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[1/2 done] trial t_00000: val_f1 0.410 after 6 epochs (full budget)"
    assert out[1] == "[2/2 done] trial t_00001: val_f1 0.200 after 2 epochs (stopped by ASHA)"
    assert len(out) == 2  # no table after the last trial: the final one follows right away
    live.total = 3
    live.shown = 1
    live.on_trial_error(0, [a, b, c], c)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[3/3 done] trial t_00002: val_f1 - after 0 epochs (error: RuntimeError: out of memory)"
    live.total = 4
    live.shown = 1
    live.on_trial_complete(0, [a, b], a)
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("top 2 of 2 trials") and out[3].startswith("t_00000")


def test_trial_that_raises_once_resumes_from_its_checkpoint(ray_local, smoke_cfg, tmp_path):
    cfg = config.apply(smoke_cfg, {"search.num_samples": 1, "run.study": "retry", "train.epochs": 3,
                                   "search.grace_period": 3})
    marker = str(tmp_path / "failed-once")

    def flaky(params, **kw):
        def fail_once(metrics):
            if metrics["epoch"] == 2 and not os.path.exists(marker):
                open(marker, "w").close()
                raise RuntimeError("injected failure after epoch 2")
        return experiment.train_trial(params, after_report=fail_once, **kw)

    table = tune_mod.run(cfg, trainable=flaky)
    assert os.path.exists(marker)
    assert table.loc[0, "status"] == "done" and table.loc[0, "epochs"] == 3
    tracker, trials = _runs(cfg, "trial")
    assert len(trials) == 1 and trials[0].data.tags.get("retried") == "yes"
    assert _history(tracker, trials[0].info.run_id) == [1, 2, 3]  # epoch 1 and 2 were not trained again


@pytest.mark.integration
def test_interrupted_study_resumes_without_duplicates(smoke_cfg):
    args = [sys.executable, "-m", "search.tune", "--config", str(ROOT / "conf" / "smoke.yaml"),
            f"data.root={smoke_cfg.data.root}", f"run.dir={smoke_cfg.run.dir}",
            f"faces.cache_dir={smoke_cfg.faces.cache_dir}", "run.study=resume", "search.num_samples=3",
            # a process per trial (the default, not the smoke config's reuse): trials that start in milliseconds
            # could all finish between the first one's end and the interrupt
            "search.max_concurrent=1", "search.reuse_actors=false"]
    cfg = settings.load(ROOT / "conf" / "smoke.yaml", [a for a in args if "=" in a and not a.startswith("--")])
    env = {**os.environ, "RAY_ADDRESS": "local"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail("the search ended before it could be interrupted:\n" + proc.stdout.read()[-3000:])
            try:
                done = [r for r in _runs(cfg, "trial")[1] if r.info.status == "FINISHED"]
            except Exception:
                done = []
            if done:
                break
            time.sleep(1)
        else:
            pytest.fail("no trial finished in time")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = len([r for r in _runs(cfg, "trial")[1] if r.info.status == "FINISHED"])
    assert 1 <= first < 3

    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resuming study 'resume'" in r.stdout
    tracker, trials = _runs(cfg, "trial")
    assert len(trials) == 3 and len({t.data.tags["maskclf.key"] for t in trials}) == 3
    assert all(t.info.status == "FINISHED" for t in trials)
    for t in trials:
        steps = _history(tracker, t.info.run_id)
        assert steps == sorted(set(steps))
    assert len(tracker.find("search")) == 1
    assert "top 3 of 3 trials" in r.stdout
    _check_optuna_matches(cfg, planned=3)


@pytest.mark.integration
def test_bad_tracking_uri_fails_fast_before_ray(smoke_cfg, tmp_path):
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "search.tune", "--config", str(ROOT / "conf" / "smoke.yaml"),
                        f"data.root={smoke_cfg.data.root}", f"run.dir={tmp_path}",
                        "tracking.uri=http://127.0.0.1:9"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "http://127.0.0.1:9" in r.stderr and "Traceback" not in r.stderr
    assert time.time() - t0 < 60
    assert not (tmp_path / "tune").exists()


def test_bad_search_space_is_reported(smoke_cfg):
    cfg = config.apply(smoke_cfg, {"search.space": {"train.lrr": {"loguniform": [1e-4, 1e-2]},
                                                    "train.optimizer": {"choice": ["adamw", "adamx"]},
                                                    "train.lr": {"loguniform": [0, 1]}}})
    from maskclf.errors import InputError

    with pytest.raises(InputError) as e:
        tune_mod.run(cfg)
    msg = e.value.message()
    assert "train.lrr" in msg and "adamx" in msg and "low > 0" in msg


def test_relative_pretrained_file_means_the_same_file_in_every_trial(ray_local, smoke_cfg, tmp_path, monkeypatch):
    import timm
    import torch

    monkeypatch.chdir(tmp_path)  # Ray runs trials in folders of their own, not here
    Path("weights").mkdir()
    torch.save(timm.create_model("test_resnet").state_dict(), "weights/test_resnet.pth")
    cfg = settings.load(SMOKE, {"data.root": smoke_cfg.data.root, "run.dir": "runs", "run.study": "relative",
                                   "faces.cache_dir": smoke_cfg.faces.cache_dir, "search.num_samples": 1,
                                   "search.max_failures": 0, "train.epochs": 1, "search.grace_period": 1,
                                   "search.space": {"model.backbone": {"choice": ["test_resnet"]}},
                                   "model.pretrained_file": "weights/test_resnet.pth"})
    assert cfg.model.pretrained_file == str(tmp_path / "weights" / "test_resnet.pth")
    table = tune_mod.run(cfg)
    assert table["status"].tolist() == ["done"], table.get("error")
    best = settings.load(tmp_path / "runs" / "relative" / "best_config.yaml")
    assert best.model.pretrained_file == str(tmp_path / "weights" / "test_resnet.pth")


@pytest.mark.integration
def test_a_study_whose_every_trial_fails_ends_with_one_line(smoke_cfg, tmp_path):
    r = subprocess.run([sys.executable, "-m", "search.tune", "--config", str(SMOKE),
                        f"data.root={smoke_cfg.data.root}", f"faces.cache_dir={smoke_cfg.faces.cache_dir}",
                        f"run.dir={tmp_path}", "search.num_samples=2", "search.max_failures=0", "train.epochs=1", "search.grace_period=1",
                        "search.space={train.optimizer: {choice: [sgd]}}", "train.lr=1e9"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-3000:]
    # Ray logs each failed trial's own traceback as it happens; the command itself ends without one
    assert ", in main" not in r.stderr and "maskclf/errors.py" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: all 2 trial(s) of study 'smoke' failed; the first: "), last
    assert "training loss is nan" in last and "lr 1e+09 too high?" in last
    error_file = Path(last.split("(full error: ", 1)[1].rstrip(")"))
    assert error_file.is_file() and "FloatingPointError" in error_file.read_text()
    cfg = settings.load(SMOKE, {"run.dir": str(tmp_path)})
    tracker, searches = _runs(cfg, "search")
    assert [r.info.status for r in searches] == ["FAILED"] and "training loss is nan" in searches[0].data.tags["error"]
    assert {r.info.status for r in tracker.find("trial")} == {"FAILED"}
