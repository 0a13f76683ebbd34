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


def _heap() -> int:
    """This process's anonymous memory (its own; not a file's pages, not shared memory), in bytes."""
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Anonymous:"))


@pytest.mark.integration
def test_a_trial_trains_from_the_shared_crops_without_copying_them(smoke_cfg, tmp_path):
    """A fold's training reads its rows of the shared crop array batch by batch: the process's own memory never
    grows by the fold's share of the crops (a copy of the 80% would add 150 MB here)."""
    import threading

    from maskclf import data, engine, faces

    cfg = config.apply(smoke_cfg, {"train.epochs": 1})
    train = data.read_train(cfg.data.root, None, check_images=False)
    n, size = len(train), 384  # 420 crops of 384 px: 186 MB in a memory-mapped file, as the crop cache keeps them
    crops = np.lib.format.open_memmap(tmp_path / "crops.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    crops[:] = (np.arange(n, dtype=np.uint8) * 37)[:, None, None, None]
    crops.flush()
    del crops
    shared = np.load(tmp_path / "crops.npy", mmap_mode="r")
    prep = dataset.Prepared(train, faces.FaceCrops(shared, np.zeros((n, 4), np.float32), np.zeros(n, bool),
                                                   train["path"].tolist()))
    peak, done = [0], threading.Event()

    def watch() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], _heap())

    tr, va = prep.fold(cfg)
    engine.fit(cfg, va, va, out_dir=tmp_path / "warm-up", log=lambda s: None)  # imports, torch's first buffers
    before = _heap()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        tr, va = prep.fold(cfg)
        engine.fit(cfg, tr, va, out_dir=tmp_path / "trial", log=lambda s: None)
    finally:
        done.set()
        watcher.join()
    share = shared[: len(tr)].nbytes
    assert len(tr) + len(va) == n and share > 140 * 2**20
    assert peak[0] - before < share / 3, f"the heap grew by {(peak[0] - before) / 2**20:.0f} MB while training"
