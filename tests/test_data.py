import csv
import shutil
import subprocess
import sys

import pytest

from maskclf import data
from maskclf.errors import InputError


def _problems(root, **kw):
    with pytest.raises(InputError) as e:
        data.read_train(root, **kw)
    return e.value.problems


def test_reads_a_valid_layout(layout):
    t = data.read_train(layout)
    assert len(t) == 4 * 7
    assert set(t["stem"]) == {"mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"}
    assert {p.rsplit(".", 1)[1] for p in t["path"]} == {"jpg", "jpeg", "png"}
    assert "001498-1" in set(t["person"])  # ids with a suffix exist in the real data
    assert (t.groupby("person")["mask"].apply(lambda s: sorted(s.tolist())) == [[0] * 5 + [1, 2]] * 4).all()
    y = data.labels(t)
    assert y.min() >= 0 and y.max() <= 17
    ev = data.read_eval(layout)
    assert len(ev) == 3 and list(ev.columns) == ["image_id", "path"]


def test_age_cutoff_changes_training_labels(layout):
    t = data.read_train(layout)
    old = (data.labels(t) % 3 == 2).sum()
    assert (data.labels(t, age_old=45) % 3 == 2).sum() == old + 7  # the 45-year-old joins >=60


def test_hidden_files_are_ignored(layout):
    (layout / "train/images/000001_female_Asian_45/._mask1.jpg").write_bytes(b"\0\0")
    assert len(data.read_train(layout)) == 28


def test_missing_train_csv(tmp_path):
    assert _problems(tmp_path) == [f"missing file {tmp_path / 'train' / 'train.csv'}"]


def test_every_problem_is_reported_at_once(layout):
    images = layout / "train" / "images"
    next((images / "000001_female_Asian_45").glob("mask3.*")).unlink()  # missing file
    (images / "000001_female_Asian_45" / "mask9.jpg").write_bytes(b"x")  # unexpected file name
    shutil.copy(images / "000002_male_Asian_22" / "mask1.jpg", images / "000002_male_Asian_22" / "mask1.png")
    broken = next((images / "000003_female_Asian_60").glob("normal.*"))
    broken.write_bytes(b"not an image")  # unreadable
    rows = list(csv.reader(open(layout / "train/train.csv")))
    rows += [["000009", "femal", "Asian", "40", "000009_femal_Asian_40"],  # bad gender
             ["000010", "male", "Asian", "forty", "000010_male_Asian_forty"],  # non-numeric age
             ["000011", "male", "Asian", "33", "000011-male-Asian-33"],  # malformed folder name
             ["000002", "male", "Asian", "22", "000002_male_Asian_22"],  # duplicate id
             ["000012", "male", "Asian", "50", "000012_male_Asian_50"]]  # folder missing
    csv.writer(open(layout / "train/train.csv", "w", newline="")).writerows(rows)
    probs = _problems(layout)
    text = "\n".join(probs)
    assert "missing image" in text and "mask3" in text
    assert "unexpected file" in text and "mask9.jpg" in text
    assert "two files for mask1" in text
    assert "unreadable image" in text and broken.name in text
    assert "bad gender 'femal'" in text
    assert "age 'forty' is not a whole number" in text
    assert "malformed folder name '000011-male-Asian-33'" in text
    assert "duplicate id 000002" in text
    assert "missing folder" in text and "000012_male_Asian_50" in text
    assert len(probs) == 9


def test_csv_missing_columns(layout):
    (layout / "train/train.csv").write_text("id,sex,age\n1,male,3\n")
    (p,) = _problems(layout)
    assert "missing column(s) gender, race, path" in p


def test_folder_disagreeing_with_csv(layout):
    rows = list(csv.reader(open(layout / "train/train.csv")))
    rows[1][3] = "46"
    csv.writer(open(layout / "train/train.csv", "w", newline="")).writerows(rows)
    (p,) = _problems(layout)
    assert "disagrees" in p and "000001_female_Asian_45" in p


def test_eval_problems(layout):
    with open(layout / "eval/info.csv", "a") as f:
        f.write("doesnotexist.jpg,0\n")
        f.write(f"{0:040x}.jpg,0\n")
    with pytest.raises(InputError) as e:
        data.read_eval(layout)
    text = "; ".join(e.value.problems)
    assert "no image" in text and "doesnotexist.jpg" in text
    assert "duplicate ImageID" in text


def test_corrections_fix_labels(layout, tmp_path):
    fix = tmp_path / "fix.csv"
    fix.write_text("id,field,value\n000001,gender,male\n000002,age,61\n000003,swap,normal:incorrect_mask\n"
                   "999999,gender,male\n")
    t = data.read_train(layout, corrections=fix)
    p1 = t[t.person == "000001"]
    assert (p1.gender == 0).all()
    assert (t[t.person == "000002"].age == 61).all()
    p3 = t[t.person == "000003"].set_index("stem")
    assert p3.loc["normal", "mask"] == 1 and p3.loc["incorrect_mask", "mask"] == 2


def test_bad_corrections_file(layout, tmp_path):
    fix = tmp_path / "fix.csv"
    fix.write_text("id,field,value\n000001,sex,male\n000002,age,old\n")
    probs = _problems(layout, corrections=fix)
    assert len(probs) == 2 and "field 'sex'" in probs[0] and "age 'old'" in probs[1]


def test_shipped_corrections_file_is_valid():
    from pathlib import Path

    rows = data.read_corrections(Path(__file__).resolve().parent.parent / "conf" / "corrections.csv")
    assert {r["id"] for r in rows} >= {"006359", "006364", "001498-1", "004432", "000020", "004418", "005227"}


@pytest.mark.integration
def test_cli_layout_error_is_one_line_exit_2(layout, tmp_path):
    next((layout / "train/images/000001_female_Asian_45").glob("mask3.*")).unlink()
    (layout / "train/images/000002_male_Asian_22/normal.jpg").write_bytes(b"junk")
    r = subprocess.run([sys.executable, "-m", "maskclf.train", "--config", "conf/smoke.yaml",
                        f"data.root={layout}", f"run.dir={tmp_path / 'runs'}"],
                       capture_output=True, text=True, cwd=str(__import__("pathlib").Path(__file__).parent.parent))
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert err[-1].startswith("error: 2 problems:") and "mask3" in err[-1] and "normal.jpg" in err[-1]
    assert "Traceback" not in r.stderr
