"""Read and validate the competition layout into tables of images.

Every problem in a dataset is collected and reported at once (``InputError``), so a
user fixes a broken download in one pass instead of one traceback at a time.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from maskclf.errors import InputError
from maskclf.labels import GENDER_TO_CODE, STEM_TO_MASK, age_band, encode

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
FOLDER_RE = re.compile(r"^(?P<id>[0-9][0-9-]*)_(?P<gender>[a-z]+)_(?P<race>[A-Za-z]+)_(?P<age>[^_]+)$")
TRAIN_COLUMNS = ("id", "gender", "race", "age", "path")
CORRECTION_FIELDS = ("gender", "age", "swap")
MAX_AGE = 120


def _read_csv(path: Path, columns: tuple[str, ...], problems: list[str]) -> list[dict[str, str]] | None:
    if not path.is_file():
        problems.append(f"missing file {path}")
        return None
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in columns if c not in header]
            if missing:
                problems.append(f"{path}: missing column(s) {', '.join(missing)} (header: {','.join(header)})")
                return None
            return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        problems.append(f"{path}: not a readable CSV ({e})")
        return None


def _check_image(path: Path, problems: list[str]) -> None:
    """Cheap header check; full decoding (and truncation) is checked when crops are built."""
    try:
        if path.stat().st_size == 0:
            problems.append(f"empty image file {path}")
            return
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # PIL raises many types for a corrupt file
        problems.append(f"unreadable image {path} ({type(e).__name__})")


def _person_files(folder: Path, problems: list[str]) -> dict[str, Path]:
    """Map each of the seven stems to its file; report missing, duplicate and unexpected names."""
    found: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.name.startswith("."):  # macOS resource forks (._mask1.jpg) ship in the real data
            continue
        stem, ext = f.stem, f.suffix.lower()
        if stem not in STEM_TO_MASK or ext not in IMAGE_EXTS:
            problems.append(f"unexpected file {f} (expected mask1..mask5, incorrect_mask, normal as .jpg/.jpeg/.png)")
        elif stem in found:
            problems.append(f"two files for {stem} in {folder}: {found[stem].name}, {f.name}")
        else:
            found[stem] = f
    for stem in STEM_TO_MASK:
        if stem not in found:
            problems.append(f"missing image {folder}/{stem}.jpg (or .jpeg/.png)")
    return found


def read_corrections(path: str | Path) -> list[dict[str, str]]:
    """Label fixes: CSV ``id,field,value`` with field gender (male/female), age (int) or swap (a:b stems)."""
    problems: list[str] = []
    rows = _read_csv(Path(path), ("id", "field", "value"), problems) or []
    for i, r in enumerate(rows, start=2):
        where = f"{path} line {i}"
        if r["field"] not in CORRECTION_FIELDS:
            problems.append(f"{where}: field '{r['field']}' is not one of {', '.join(CORRECTION_FIELDS)}")
        elif r["field"] == "gender" and r["value"] not in GENDER_TO_CODE:
            problems.append(f"{where}: gender '{r['value']}' is not male/female")
        elif r["field"] == "age" and not r["value"].isdigit():
            problems.append(f"{where}: age '{r['value']}' is not a whole number")
        elif r["field"] == "swap" and not all(s in STEM_TO_MASK for s in r["value"].split(":")):
            problems.append(f"{where}: swap '{r['value']}' must be two stems such as normal:incorrect_mask")
    if problems:
        raise InputError(problems)
    return rows


def _apply_corrections(table: pd.DataFrame, rows: list[dict[str, str]], problems: list[str]) -> pd.DataFrame:
    table = table.copy()
    ids = set(table["person"])
    for r in rows:
        if r["id"] not in ids:
            continue  # corrections for the full dataset also apply to a subset of it
        sel = table["person"] == r["id"]
        if r["field"] == "gender":
            table.loc[sel, "gender"] = GENDER_TO_CODE[r["value"]]
        elif r["field"] == "age":
            table.loc[sel, "age"] = int(r["value"])
        else:
            a, b = r["value"].split(":")
            ma, mb = STEM_TO_MASK[a], STEM_TO_MASK[b]
            sa, sb = sel & (table["stem"] == a), sel & (table["stem"] == b)
            table.loc[sa, "mask"], table.loc[sb, "mask"] = mb, ma
    return table


def read_train(root: str | Path, corrections: str | Path | None = None, check_images: bool = True) -> pd.DataFrame:
    """One row per training image: person, gender (0/1), race, age, stem, mask (0..2), path.

    Raises ``InputError`` listing every problem in the layout at once.
    """
    root = Path(root)
    problems: list[str] = []
    rows = _read_csv(root / "train" / "train.csv", TRAIN_COLUMNS, problems)
    records = []
    seen: dict[str, int] = {}
    for i, r in enumerate(rows or [], start=2):
        where = f"{root / 'train' / 'train.csv'} line {i}"
        pid, gender, age, folder = r["id"], r["gender"], r["age"], r["path"]
        if pid in seen:
            problems.append(f"{where}: duplicate id {pid} (also line {seen[pid]})")
            continue
        seen[pid] = i
        bad = len(problems)
        m = FOLDER_RE.match(folder)
        if not m:
            problems.append(f"{where}: malformed folder name '{folder}' (expected <id>_<gender>_<race>_<age>)")
        if gender not in GENDER_TO_CODE:
            problems.append(f"{where}: bad gender '{gender}' (expected male or female)")
        if not age.isdigit() or not 0 < int(age) < MAX_AGE:
            problems.append(f"{where}: age '{age}' is not a whole number of years")
        if m and len(problems) == bad:
            if (m["id"], m["gender"], m["age"]) != (pid, gender, age):
                problems.append(f"{where}: folder '{folder}' disagrees with id/gender/age {pid},{gender},{age}")
        if len(problems) > bad:
            continue
        person_dir = root / "train" / "images" / folder
        if not person_dir.is_dir():
            problems.append(f"missing folder {person_dir}")
            continue
        for stem, path in _person_files(person_dir, problems).items():
            if check_images:
                _check_image(path, problems)
            records.append((pid, GENDER_TO_CODE[gender], r["race"], int(age), stem, STEM_TO_MASK[stem], str(path)))
    if rows is not None and not rows:
        problems.append(f"{root / 'train' / 'train.csv'}: no people listed")
    table = pd.DataFrame(records, columns=["person", "gender", "race", "age", "stem", "mask", "path"])
    if corrections:
        try:
            table = _apply_corrections(table, read_corrections(corrections), problems)
        except InputError as e:
            problems += e.problems
    if problems:
        raise InputError(problems)
    return table.reset_index(drop=True)


def read_eval(root: str | Path, check_images: bool = True) -> pd.DataFrame:
    """One row per eval image in info.csv order: image_id, path. Raises InputError for every problem."""
    root = Path(root)
    problems: list[str] = []
    info = root / "eval" / "info.csv"
    rows = _read_csv(info, ("ImageID", "ans"), problems)
    seen: set[str] = set()
    records = []
    for i, r in enumerate(rows or [], start=2):
        image_id = r["ImageID"]
        if image_id in seen:
            problems.append(f"{info} line {i}: duplicate ImageID {image_id}")
            continue
        seen.add(image_id)
        path = root / "eval" / "images" / image_id
        if not path.is_file():
            problems.append(f"{info} line {i}: no image {path}")
            continue
        if check_images:
            _check_image(path, problems)
        records.append((image_id, str(path)))
    if problems:
        raise InputError(problems)
    return pd.DataFrame(records, columns=["image_id", "path"])


def read_answers(root: str | Path) -> pd.Series | None:
    """True eval labels from ``eval/answers.csv`` (the demo dataset has them), indexed by ImageID."""
    path = Path(root) / "eval" / "answers.csv"
    if not path.is_file():
        return None
    df = pd.read_csv(path, dtype={"ImageID": str})
    return df.set_index("ImageID")["ans"].astype(int)


def labels(table: pd.DataFrame, age_old: int = 60) -> np.ndarray:
    """18-class labels of a train table; ``age_old`` moves the >=60 cut-off for training labels."""
    bands = age_band(table["age"].to_numpy(), old=age_old)
    return encode(table["mask"].to_numpy(), table["gender"].to_numpy(), bands).astype(np.int64)


def people(table: pd.DataFrame) -> pd.DataFrame:
    """One row per person: person, gender, age (what folds stratify on)."""
    return table.groupby("person", sort=True)[["gender", "age"]].first().reset_index()


def summary(table: pd.DataFrame) -> dict[str, float]:
    """A few numbers describing a train table (logged with every study)."""
    per = people(table)
    bands = age_band(per["age"].to_numpy())
    return {
        "people": int(len(per)),
        "images": int(len(table)),
        "female_frac": round(float(per["gender"].mean()), 3),
        "age_lt30_frac": round(float((bands == 0).mean()), 3),
        "age_30_59_frac": round(float((bands == 1).mean()), 3),
        "age_ge60_frac": round(float((bands == 2).mean()), 3),
    }
