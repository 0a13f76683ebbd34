"""Person-level stratified k-fold: one person's seven near-duplicate photos never straddle a split."""

from __future__ import annotations

import warnings

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
    fold = np.empty(len(per), dtype=np.int64)
    from sklearn.model_selection import StratifiedKFold  # here: scikit-learn takes a second to import

    skf = StratifiedKFold(n_splits=n, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # small demo sets have strata rarer than n; still balanced enough
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, val) in enumerate(skf.split(np.zeros(len(per)), strata)):
            fold[val] = k
    return pd.Series(fold, index=per["person"].to_numpy(), name="fold")


def split(table: pd.DataFrame, fold: int, n: int = 5, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val) of ``table`` for validation fold ``fold``."""
    if not 0 <= fold < n:
        raise ValueError(f"fold {fold} is not in 0..{n - 1}")
    of_row = table["person"].map(assign(table, n, seed)).to_numpy()
    return np.flatnonzero(of_row != fold), np.flatnonzero(of_row == fold)
