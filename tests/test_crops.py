"""The face crop build at scale: shards as Ray tasks on a real local Ray give the crops one process gives, and a
build whose process is SIGKILLed midway resumes from its finished shards to the same crops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from maskclf import crop_cache
from search.cluster import crops
from search.study import settings
from tests.conftest import ROOT, SMOKE

PHOTO = ROOT / "tests" / "data" / "astronaut.jpg"


def _photos(smoke_data: Path, n: int) -> list[Path]:
    """The real photo (a face MTCNN finds) and the first ``n - 1`` photos of the smoke dataset."""
    return [PHOTO, *sorted((smoke_data / "train" / "images").glob("*/*"))[: n - 1]]


def test_shards_as_ray_tasks_give_the_crops_of_one_process(ray_local, smoke_data, tmp_path):
    photos = _photos(smoke_data, 40)
    kw = dict(method="cascade", shard_size=8, progress=False)  # both detectors, in the Ray tasks too
    here = crop_cache.build_crop_cache(photos, tmp_path / "here", log=lambda s: None, **kw)
    lines: list[str] = []
    cfg = settings.load(SMOKE, [f"run.dir={tmp_path / 'runs'}"])
    on_ray = crop_cache.build_crop_cache(photos, tmp_path / "ray", log=lines.append,
                                         run_shards=crops.runner(cfg, lines.append), **kw)
    assert any(line.startswith("face crops: shards as Ray tasks on 2 CPUs") for line in lines), lines
    assert on_ray.found[0] and on_ray.found.sum() == here.found.sum() > 1
    assert np.array_equal(on_ray.images, here.images) and np.array_equal(on_ray.boxes, here.boxes)
    assert on_ray.found.tolist() == here.found.tolist() and on_ray.paths == here.paths
    assert on_ray.detector.tolist() == here.detector.tolist() and {"mtcnn", "retinaface"} <= set(here.detector)


@pytest.mark.integration
def test_a_build_killed_with_sigkill_resumes_to_the_same_crops(smoke_data, tmp_path):
    photos = _photos(smoke_data, 48)
    listing = tmp_path / "photos.txt"
    listing.write_text("\n".join(map(str, photos)))
    cache = tmp_path / "cache"
    script = ("import sys; from pathlib import Path; from maskclf import crop_cache\n"
              "crop_cache.build_crop_cache(Path(sys.argv[1]).read_text().split(), Path(sys.argv[2]), shard_size=4,"
              " batch_size=4, progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(listing), str(cache)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    while len(list(cache.glob(".partial-*/shards/[0-9]*.npz"))) < 2:  # not a shard being written
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no shard was written"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    [partial] = cache.glob(".partial-*")
    finished = sorted(p.name for p in (partial / "shards").glob("[0-9]*.npz"))
    assert 2 <= len(finished) < 12 and not [p for p in cache.iterdir() if not p.name.startswith(".")]

    lines: list[str] = []
    resumed = crop_cache.build_crop_cache(photos, cache, shard_size=4, batch_size=4, progress=False, log=lines.append)
    assert any(f"{len(finished)} of 12 shards done before" in line for line in lines), lines
    assert sorted(p.name for p in cache.iterdir()) == [partial.name.removeprefix(".partial-")]  # nothing else left
    whole = crop_cache.build_crop_cache(photos, tmp_path / "whole", shard_size=4, batch_size=4, progress=False,
                                   log=lambda s: None)
    assert np.array_equal(resumed.images, whole.images) and np.array_equal(resumed.boxes, whole.boxes)
    assert resumed.found.tolist() == whole.found.tolist()
