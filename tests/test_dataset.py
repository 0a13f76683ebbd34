"""Preparing a run: demo generation on first use, validation, the face-crop cache, the train CLI."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskclf import config, dataset
from maskclf.errors import InputError
from tests.conftest import ROOT, SMOKE


@pytest.mark.integration
def test_demo_dataset_is_generated_on_first_use_then_cached(tmp_path):
    cfg = config.load(SMOKE, {"data.root": str(tmp_path / "demo"), "data.demo_people": 8,
                              "data.demo_eval_people": 2, "run.dir": str(tmp_path / "runs")})
    logs: list[str] = []
    prep = dataset.prepare(cfg, need_eval=True, log=logs.append, progress=False)
    assert (tmp_path / "demo" / "train" / "train.csv").is_file()
    assert len(prep.train) == 8 * 7 and prep.train_crops.images.shape == (56, 48, 48, 3)
    assert len(prep.eval) == 14 and prep.answers is not None and len(prep.answers) == 14
    assert any("generating the demo dataset" in s for s in logs)
    assert not list(tmp_path.glob(".demo.tmp-*"))
    logs.clear()
    again = dataset.prepare(cfg, log=logs.append, progress=False)
    assert not any("generating" in s for s in logs) and any("cache hit" in s for s in logs)
    np.testing.assert_array_equal(np.asarray(again.train_crops.images), np.asarray(prep.train_crops.images))


@pytest.mark.integration
def test_fold_samples_use_the_age_cutoff_only_for_training(tmp_path, smoke_cfg):
    cfg = config.apply(smoke_cfg, {"data.age_old": 50})
    prep = dataset.prepare(cfg, log=lambda s: None, progress=False)
    tr, va = prep.fold(cfg)
    tr60, va60 = prep.fold(config.apply(cfg, {"data.age_old": 60}))
    assert (tr.labels % 3 == 2).sum() > (tr60.labels % 3 == 2).sum()
    np.testing.assert_array_equal(va.labels, va60.labels)


def test_truncated_image_is_reported_with_its_path(layout, tmp_path):
    p = next((layout / "train/images/000002_male_Asian_22").glob("normal.*"))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (512, 384, 3), dtype=np.uint8)).save(
        p.with_suffix(".jpg"))
    if p.suffix != ".jpg":
        p.unlink()
        p = p.with_suffix(".jpg")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    cfg = config.load(SMOKE, {"data.root": str(layout), "run.dir": str(tmp_path / "runs"), "faces.method": "center"})
    with pytest.raises(InputError) as e:
        dataset.prepare(cfg, log=lambda s: None, progress=False)
    assert str(p.resolve()) in e.value.message()


def test_existing_folder_without_dataset_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    cfg = config.load(SMOKE, {"data.root": str(tmp_path / "d"), "run.dir": str(tmp_path / "runs")})
    with pytest.raises(InputError, match="holds no train/train.csv"):
        dataset.prepare(cfg, log=lambda s: None, progress=False)
    assert (tmp_path / "d" / "notes.txt").read_text() == "mine"


def _train(args, **kw):
    return subprocess.run([sys.executable, "-m", "maskclf.train", "--config", str(SMOKE), "--quiet", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=600, **kw)


@pytest.mark.integration
def test_train_cli_learns_and_resumes(smoke_cfg):
    common = [f"data.root={smoke_cfg.data.root}", f"run.dir={smoke_cfg.run.dir}",
              f"faces.cache_dir={smoke_cfg.faces.cache_dir}"]
    r = _train(common)
    assert r.returncode == 0, r.stderr[-2000:]
    f1 = float(re.search(r"final val macro F1 (\d\.\d+)", r.stdout).group(1))
    assert f1 > 0.15  # chance for 18 classes is about 0.056
    assert len(re.findall(r"^epoch ", r.stdout, re.M)) == smoke_cfg.train.epochs
    out = Path(smoke_cfg.run.dir) / "smoke" / "train" / "fold0"
    assert (out / "checkpoint" / "state.pt").is_file() and (out / "config.yaml").is_file()

    again = _train(common)  # a second run never overwrites the first
    assert again.returncode == 0 and (out.parent / "fold0-2" / "checkpoint").is_dir()

    more = _train(["--resume", str(out), f"train.epochs={smoke_cfg.train.epochs + 1}"])
    assert more.returncode == 0, more.stderr[-2000:]
    assert re.findall(r"^epoch\s+(\d+)", more.stdout, re.M) == [str(smoke_cfg.train.epochs + 1)]
