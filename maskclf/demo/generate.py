"""Demo dataset in the competition layout: drawn faces with masks, gender and age cues.

``python -m maskclf.demo --out DIR --people N --eval-people M --seed S``

Each person gets one identity (face, skin, hair, clothes, background) shared by
their 7 photos, which differ only by mask state and small pose/lighting changes,
so a split by image leaks identity exactly as on the real data. Gender and age
are shown by overlapping, noisy cues, so the 30 and 60 boundaries stay hard.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from maskclf.demo import portrait
from maskclf.demo.draw import H, W
from maskclf.demo.people import STEMS, Person, person_rng, sample_people, sample_person
from maskclf.errors import InputError, cli
from maskclf.labels import age_band

# Extensions are mixed in the real train set; eval images are all .jpg.
_EXTS = (".jpg", ".jpeg", ".png")
_P_EXT = (0.82, 0.10, 0.08)


# ---------------------------------------------------------------- dataset

def _image_id(seed: int, index: int, stem: str) -> str:
    # Eval names look like the real sha1 names and reveal nothing about the label.
    return hashlib.sha1(f"maskclf-synth:{seed}:{index}:{stem}".encode()).hexdigest() + ".jpg"


def _render_person(job: tuple[int, str, int, Path]) -> None:
    seed, split, index, root = job
    p = sample_person(seed, split, index)
    rng = person_rng(seed, split, index, 1)
    d = portrait.identity(p, rng)
    base, bg = portrait.person_layer(d, rng), portrait.background(rng)
    noise = rng.standard_normal((H + 32, W + 32, 3), dtype=np.float32)
    folder = root / "train" / "images" / p.folder
    if split == "train":
        folder.mkdir(parents=True, exist_ok=True)
    for stem in STEMS:
        img = portrait.photo(d, base, bg, noise, stem, rng)
        if split == "train":
            path = folder / (stem + _EXTS[rng.choice(3, p=_P_EXT)])
        else:
            path = root / "eval" / "images" / _image_id(seed, index, stem)
        if path.suffix == ".png":
            img.save(path, compress_level=1)
        else:
            img.save(path, quality=int(rng.integers(70, 96)))


def _render_all(jobs: list, workers: int, progress: bool) -> None:
    bar = tqdm(total=len(jobs) * len(STEMS), unit="img", desc="synth", disable=not progress, file=sys.stderr)
    with bar:
        if workers <= 1 or len(jobs) < 4 * workers:
            for job in jobs:
                _render_person(job)
                bar.update(len(STEMS))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(_render_person, jobs, chunksize=4):
                    bar.update(len(STEMS))


def _write_csvs(root: Path, train: list[Person], evals: list[Person], seed: int) -> None:
    with open(root / "train" / "train.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "gender", "race", "age", "path"])
        for p in train:
            w.writerow([p.folder[:6], ("male", "female")[p.gender], "Asian", p.age, p.folder])
    rows = [(_image_id(seed, p.index, s), p.label(s)) for p in evals for s in STEMS]
    order = np.random.default_rng([seed, 99]).permutation(len(rows))
    for name, keep in (("info.csv", False), ("answers.csv", True)):
        with open(root / "eval" / name, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["ImageID", "ans"])
            w.writerows((rows[i][0], rows[i][1] if keep else 0) for i in order)


def _summary(people: list[Person]) -> dict:
    labels = [p.label(s) for p in people for s in STEMS]
    return {
        "people": len(people), "images": len(labels),
        "classes": np.bincount(labels, minlength=18).tolist() if labels else [0] * 18,
        "bands": np.bincount([age_band(p.age) for p in people], minlength=3).tolist() if people else [0] * 3,
        "genders": {"male": sum(p.gender == 0 for p in people), "female": sum(p.gender == 1 for p in people)},
    }


def _check(out: Path, people: int, eval_people: int, seed: int, workers: int) -> None:
    problems = []
    if people < 1:
        problems.append(f"--people must be >= 1 (got {people})")
    if eval_people < 0:
        problems.append(f"--eval-people must be >= 0 (got {eval_people})")
    if seed < 0:
        problems.append(f"--seed must be >= 0 (got {seed})")
    if workers < 1:
        problems.append(f"--workers must be >= 1 (got {workers})")
    if out.exists() and not out.is_dir():
        problems.append(f"{out} exists and is not a directory")
    held = [f"{name}/" for name in ("train", "eval") if (out / name).is_dir() and any((out / name).iterdir())]
    if held:
        problems.append(f"{out} already holds a dataset ({', '.join(held)}); refusing to overwrite it: "
                        f"choose a new or empty --out")
    if problems:
        raise InputError(problems)


def generate(out: Path, people: int, eval_people: int, seed: int, progress: bool = True,
             workers: int | None = None) -> dict:
    """Write a demo dataset in the competition layout under ``out``; return counts.

    The result holds, for "train" and "eval": people, images, per-class image counts
    (18), per-age-band people counts (3) and people per gender. Raises InputError for
    bad arguments or when ``out`` already holds a dataset.

    Same seed -> byte-identical files, whatever ``workers`` is. The dataset is built
    in ``out/.synth-partial`` and moved into place at the end, so an interrupted run
    never leaves a half dataset that looks complete.
    """
    out = Path(out)
    if workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        workers = min(cores or 1, 8)
    _check(out, people, eval_people, seed, workers)
    stage = out / ".synth-partial"
    if stage.exists():
        shutil.rmtree(stage)
    for name in ("train", "eval"):
        (stage / name / "images").mkdir(parents=True)
    train, evals = sample_people(people, seed, "train"), sample_people(eval_people, seed, "eval")
    _render_all([(seed, p.split, p.index, stage) for p in train + evals], workers, progress)
    _write_csvs(stage, train, evals, seed)
    for name in ("train", "eval"):
        if (out / name).exists():
            (out / name).rmdir()  # empty: _check refused non-empty ones
        os.replace(stage / name, out / name)
    stage.rmdir()
    return {"train": _summary(train), "eval": _summary(evals)}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        # One stderr line and exit 2 (via cli), like every other bad input.
        raise InputError(message)


@cli
def main(argv: list[str] | None = None) -> int:
    """``python -m maskclf.demo``: write the demo dataset."""
    ap = _Parser(prog="python -m maskclf.demo", description="Write the demo dataset in the competition layout.")
    ap.add_argument("--out", type=Path, required=True, help="dataset root (gets train/ and eval/)")
    ap.add_argument("--people", type=int, default=300, help="train people (7 photos each)")
    ap.add_argument("--eval-people", type=int, default=100, help="eval people (7 photos each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None, help="processes (default: available cores)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    s = generate(a.out, a.people, a.eval_people, a.seed, progress=not a.quiet, workers=a.workers)
    t, e = s["train"], s["eval"]
    print(f"wrote {a.out}: train {t['people']} people / {t['images']} images ({t['genders']['female']} female, "
          f"age bands {t['bands']}), eval {e['people']} people / {e['images']} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
