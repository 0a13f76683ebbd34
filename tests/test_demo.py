"""The demo dataset generator: real layout, real class balance, deterministic, safe CLI."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskclf import demo
from maskclf.errors import InputError
from maskclf.labels import STEM_TO_MASK, age_band, decode, encode

FOLDER = re.compile(r"^\d{6}_(male|female)_Asian_\d+$")
IMAGE_ID = re.compile(r"^[0-9a-f]{40}\.jpg$")
PEOPLE, EVAL_PEOPLE, SEED = 20, 3, 0


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "data"
    summary = demo.generate(root, PEOPLE, EVAL_PEOPLE, SEED, progress=False, workers=1)
    return root, summary


def test_train_layout(dataset):
    root, _ = dataset
    assert sorted(p.name for p in root.iterdir()) == ["eval", "train"]
    with open(root / "train" / "train.csv") as f:
        assert f.readline().strip() == "id,gender,race,age,path"
    rows = _rows(root / "train" / "train.csv")
    assert len(rows) == PEOPLE
    exts = set()
    for r in rows:
        assert FOLDER.match(r["path"]), r["path"]
        assert r["path"] == f"{r['id']}_{r['gender']}_{r['race']}_{r['age']}"
        assert re.fullmatch(r"\d{6}", r["id"]) and r["race"] == "Asian" and 18 <= int(r["age"]) <= 60
        files = sorted((root / "train" / "images" / r["path"]).iterdir())
        assert sorted(p.stem for p in files) == sorted(STEM_TO_MASK)
        for p in files:
            exts.add(p.suffix)
            with Image.open(p) as im:
                assert im.size == (384, 512) and im.mode == "RGB", p
    assert exts == {".jpg", ".jpeg", ".png"}  # mixed, as in the real data
    assert sorted(p.name for p in (root / "train" / "images").iterdir()) == sorted(r["path"] for r in rows)


def test_train_people_match_sample_people(dataset):
    root, summary = dataset
    rows = _rows(root / "train" / "train.csv")
    people = demo.sample_people(PEOPLE, SEED)
    assert [r["path"] for r in rows] == [p.folder for p in people]
    assert summary["train"]["people"] == PEOPLE and summary["train"]["images"] == 7 * PEOPLE
    assert sum(summary["train"]["classes"]) == 7 * PEOPLE
    assert summary["train"]["genders"]["female"] == sum(r["gender"] == "female" for r in rows)


def test_eval_layout_and_answers(dataset):
    root, summary = dataset
    with open(root / "eval" / "info.csv") as f:
        assert f.readline().strip() == "ImageID,ans"
    info, answers = _rows(root / "eval" / "info.csv"), _rows(root / "eval" / "answers.csv")
    n = 7 * EVAL_PEOPLE
    assert len(info) == n and all(r["ans"] == "0" for r in info)
    assert [r["ImageID"] for r in answers] == [r["ImageID"] for r in info]
    assert all(IMAGE_ID.match(r["ImageID"]) for r in info)
    assert sorted(p.name for p in (root / "eval" / "images").iterdir()) == sorted(r["ImageID"] for r in info)
    with Image.open(root / "eval" / "images" / info[0]["ImageID"]) as im:
        assert im.size == (384, 512) and im.mode == "RGB"
    labels = np.array([int(r["ans"]) for r in answers])
    assert labels.min() >= 0 and labels.max() <= 17
    mask, _, _ = decode(labels)
    assert np.bincount(mask, minlength=3).tolist() == [5 * EVAL_PEOPLE, EVAL_PEOPLE, EVAL_PEOPLE]
    assert mask.tolist() != [0, 0, 0, 0, 0, 1, 2] * EVAL_PEOPLE  # listed shuffled, not person by person
    assert sorted(labels.tolist()) == sorted(p.label(s) for p in demo.sample_people(EVAL_PEOPLE, SEED, "eval")
                                             for s in STEM_TO_MASK)
    assert summary["eval"]["images"] == n


def test_class_balance_matches_the_real_data():
    people = demo.sample_people(20000, seed=1)
    ages = np.array([p.age for p in people])
    bands = np.bincount(age_band(ages), minlength=3) / len(people)
    assert abs(np.mean([p.gender for p in people]) - 0.61) < 0.015
    assert np.allclose(bands, [0.47, 0.46, 0.07], atol=0.015)
    assert ages.min() == 18 and ages.max() == 60
    assert set(ages[ages >= 60]) == {60}  # the top band is age 60 only
    p = people[0]
    assert p.label("mask1") == encode(0, p.gender, age_band(p.age)) and p.label("normal") == p.label("mask1") + 12


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    # 8 people: enough jobs that workers=2 takes the process-pool path.
    a = demo.generate(tmp_path / "a", 6, 2, seed=5, progress=False, workers=2)
    b = demo.generate(tmp_path / "b", 6, 2, seed=5, progress=False, workers=1)
    assert a == b
    ta, tb = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert len(ta) == 1 + 6 * 7 + 2 + 2 * 7 and ta == tb  # csvs + images
    demo.generate(tmp_path / "c", 6, 2, seed=6, progress=False, workers=1)
    tc = _tree(tmp_path / "c")
    assert tc["eval/answers.csv"] != ta["eval/answers.csv"]
    assert set(tc).isdisjoint(k for k in ta if k.startswith("eval/images/"))
    assert (tmp_path / "c" / "train" / "images").is_dir()


def test_refuses_to_overwrite_a_dataset(dataset):
    root, _ = dataset
    before = (root / "train" / "train.csv").read_bytes()
    with pytest.raises(InputError, match="already holds a dataset"):
        demo.generate(root, 2, 1, seed=9, progress=False)
    assert (root / "train" / "train.csv").read_bytes() == before
    assert not (root / ".synth-partial").exists()


@pytest.mark.parametrize("people, eval_people, seed", [(0, 1, 0), (1, -1, 0), (1, 1, -3)])
def test_bad_arguments_raise_input_error(tmp_path, people, eval_people, seed):
    with pytest.raises(InputError):
        demo.generate(tmp_path / "d", people, eval_people, seed, progress=False)
    assert not (tmp_path / "d").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maskclf.demo", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args, says", [
    (["--people", "0"], "--people must be >= 1"),
    (["--people", "ten"], "--people"),
    (["--bogus"], "--bogus"),
])
@pytest.mark.integration
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, args, says):
    r = _cli("--out", str(tmp_path / "d"), *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], r.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.integration
def test_cli_writes_then_refuses(tmp_path):
    out = tmp_path / "d"
    r = _cli("--out", str(out), "--people", "1", "--eval-people", "1", "--seed", "3", "--quiet")
    assert r.returncode == 0, r.stderr
    assert (out / "train" / "train.csv").is_file() and (out / "eval" / "answers.csv").is_file()
    r = _cli("--out", str(out), "--people", "1", "--eval-people", "1", "--quiet")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "refusing" in r.stderr


@pytest.mark.integration
def test_the_earlier_command_name_still_writes_the_dataset(tmp_path):
    out = tmp_path / "d"
    r = subprocess.run([sys.executable, "-m", "maskclf.synth", "--out", str(out), "--people", "1", "--eval-people", "0",
                        "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (out / "train" / "train.csv").is_file() and len(list((out / "train" / "images").iterdir())) == 1
