"""maskclf.analysis: per-class F1 bars, the table and sheet of mistakes (hand-made arrays, no model)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from maskclf import analysis
from maskclf.labels import NUM_CLASSES, class_name


def _probs(pred: list[int], conf: list[float]) -> np.ndarray:
    """One row per sample: ``conf`` on the predicted class, the rest spread evenly."""
    probs = np.full((len(pred), NUM_CLASSES), 0.0)
    for i, (c, p) in enumerate(zip(pred, conf)):
        probs[i] = (1 - p) / (NUM_CLASSES - 1)
        probs[i, c] = p
    return probs


# Three samples 4 -> 5 (30-59 taken for >=60), one 0 -> 1, two right.
TRUE = [4, 4, 4, 0, 2, 7]
PRED = [5, 5, 5, 1, 2, 7]
CONF = [0.5, 0.9, 0.7, 0.95, 0.8, 0.6]


def _crops(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (n, 24, 24, 3), dtype=np.uint8)


def _opens(path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_error_table_puts_the_most_frequent_confusion_first_most_confident_first():
    paths = [f"images/p{i}/mask1.jpg" for i in range(6)]
    table = analysis.error_table(np.array(TRUE), _probs(PRED, CONF), paths, [f"p{i}" for i in range(6)])
    assert list(table.columns) == analysis.ERROR_COLUMNS
    assert table.index.tolist() == [1, 2, 0, 3]  # 4->5 (3 times) by confidence, then 0->1
    assert table["pair_count"].tolist() == [3, 3, 3, 1]
    assert table["true"].iloc[0] == class_name(4) == "wear/female/30-59" and table["pred"].iloc[0] == class_name(5)
    assert table["prob"].tolist() == [0.9, 0.7, 0.5, 0.95]
    assert table["path"].iloc[0] == "images/p1/mask1.jpg" and table["person"].iloc[0] == "p1"
    assert (table["p_true"] < table["prob"]).all()


def test_the_sheets_are_pngs_and_the_csv_lists_the_mistakes(tmp_path):
    y, probs = np.array(TRUE), _probs(PRED, CONF)
    f1 = analysis.save_per_class_f1(y, probs.argmax(1), tmp_path / "per_class_f1.png", "demo")
    assert f1 == tmp_path / "per_class_f1.png" and min(_opens(f1)) > 100
    # The crop store holds more rows than samples: crop_rows picks each sample's crop.
    sheet = analysis.save_error_sheet(y, probs, _crops(20), tmp_path / "errors.png", crop_rows=np.arange(6) + 10,
                                      captions=[f"p{i}" for i in range(6)], groups=4, per_group=8)
    assert sheet == tmp_path / "errors.png" and _opens(sheet)[1] > 300  # two rows of crops
    csv = analysis.save_error_table(y, probs, tmp_path / "errors.csv", [f"x{i}.jpg" for i in range(6)])
    assert pd.read_csv(csv)["path"].tolist() == ["x1.jpg", "x2.jpg", "x0.jpg", "x3.jpg"]


def test_no_mistakes_give_an_empty_table_and_a_sheet_saying_so(tmp_path):
    y = np.array([0, 5, 17])
    probs = np.eye(NUM_CLASSES)[y]
    assert analysis.error_table(y, probs).empty
    assert pd.read_csv(analysis.save_error_table(y, probs, tmp_path / "errors.csv")).empty
    assert _opens(analysis.save_error_sheet(y, probs, _crops(3), tmp_path / "errors.png"))[0] > 0
    assert _opens(analysis.save_per_class_f1(y, y, tmp_path / "f1.png"))[0] > 0
    empty = np.zeros((0, NUM_CLASSES))
    assert _opens(analysis.save_error_sheet(np.zeros(0, int), empty, _crops(0), tmp_path / "none.png"))[0] > 0
