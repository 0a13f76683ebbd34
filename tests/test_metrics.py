"""The competition metric and its per-class and confusion figures, against scikit-learn's on random labels."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score

from maskclf import metrics

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("n,size,classes", [(18, 500, 18), (18, 40, 18), (3, 200, 3), (18, 60, 5), (2, 7, 2)])
def test_f1_and_confusion_equal_scikit_learns(n, size, classes):
    rng = np.random.default_rng(size + classes)
    for _ in range(20):
        y = rng.integers(0, classes, size)
        # predictions right about half the time, wrong ones anywhere in 0..n-1 (classes absent from y too)
        p = np.where(rng.random(size) < 0.5, y, rng.integers(0, n, size))
        assert metrics.macro_f1(y, p) == pytest.approx(f1_score(y, p, average="macro"), abs=1e-12)
        np.testing.assert_allclose(metrics.per_class_f1(y, p, n),
                                   f1_score(y, p, labels=list(range(n)), average=None, zero_division=0), atol=1e-12)
        np.testing.assert_array_equal(metrics.confusion(y, p, n), confusion_matrix(y, p, labels=list(range(n))))


def test_edge_cases():
    assert metrics.macro_f1(np.array([1, 1]), np.array([1, 1])) == 1.0
    assert metrics.macro_f1(np.array([0, 1]), np.array([1, 0])) == 0.0
    # a class only predicted counts, with F1 0: two classes present, one right
    assert metrics.macro_f1(np.array([0, 0]), np.array([0, 2])) == pytest.approx(f1_score([0, 0], [0, 2], average="macro"))
    assert metrics.per_class_f1(np.array([0]), np.array([0]), 3).tolist() == [1.0, 0.0, 0.0]
