"""Person-level stratified k-fold: one person's seven near-duplicate photos never straddle a split."""

from __future__ import annotations

import numpy as np
import pandas as pd

from maskclf.data import people
from maskclf.labels import age_band


def assign(table: pd.DataFrame, n: int = 5, seed: int = 42) -> pd.Series:
    """Fold number of every person (indexed by person id), stratified on gender x age band."""
    per = people(table)
    strata = per["gender"].to_numpy() * 3 + age_band(per["age"].to_numpy())
    if len(per) < n:
        raise ValueError(f"{len(per)} people cannot be split into {n} folds")
    return pd.Series(stratified_folds(strata, n, seed), index=per["person"].to_numpy(), name="fold")


def stratified_folds(strata: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The fold (0..n-1) of each item: every stratum spread over the folds as evenly as its size allows, in a
    shuffled order drawn from ``seed``; the folds scikit-learn's ``StratifiedKFold(n, shuffle=True,
    random_state=seed)`` gives (tests/test_folds.py checks it), without its second of import time in every
    trial."""
    strata = np.asarray(strata)
    # strata numbered in order of first appearance
    _, first, inverse = np.unique(strata, return_index=True, return_inverse=True)
    code = np.argsort(np.argsort(first))[inverse.reshape(-1)]
    counts = np.bincount(code)
    if (counts < n).all():
        raise ValueError(f"no stratum has {n} members: {len(strata)} people cannot be split into {n} "
                         "stratified folds")
    # how many of each stratum each fold gets: deal the sorted codes round-robin over the folds
    ordered = np.sort(code)
    per_fold = np.stack([np.bincount(ordered[k::n], minlength=len(counts)) for k in range(n)])
    rng = np.random.RandomState(seed)
    out = np.empty(len(code), np.int64)
    for c in range(len(counts)):
        fold_of = np.repeat(np.arange(n), per_fold[:, c])
        rng.shuffle(fold_of)
        out[code == c] = fold_of
    return out


def split(table: pd.DataFrame, fold: int, n: int = 5, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val) of ``table`` for validation fold ``fold``."""
    if not 0 <= fold < n:
        raise ValueError(f"fold {fold} is not in 0..{n - 1}")
    of_row = table["person"].map(assign(table, n, seed)).to_numpy()
    return np.flatnonzero(of_row != fold), np.flatnonzero(of_row == fold)
