import numpy as np
import pandas as pd
import pytest

from maskclf import folds


def _table(n_people=100, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_people):
        g, age = int(rng.random() < 0.6), int(rng.choice([20, 25, 40, 55, 60]))
        rows += [(f"{p:06d}", g, age, m) for m in [0, 0, 0, 0, 0, 1, 2]]
    return pd.DataFrame(rows, columns=["person", "gender", "age", "mask"])


def test_no_person_in_two_folds_and_every_row_validated_once():
    t = _table()
    seen = []
    for k in range(5):
        tr, va = folds.split(t, k, 5, seed=1)
        assert not set(t.person.iloc[tr]) & set(t.person.iloc[va])
        assert len(tr) + len(va) == len(t)
        seen.append(va)
    allv = np.concatenate(seen)
    assert sorted(allv.tolist()) == list(range(len(t)))


def test_stratified_and_deterministic():
    t = _table(200)
    a, b = folds.assign(t, 5, seed=3), folds.assign(t, 5, seed=3)
    assert (a == b).all()
    assert not (a == folds.assign(t, 5, seed=4)).all()
    per = t.groupby("person").first()
    frac = per.groupby(a)["gender"].mean()
    assert frac.max() - frac.min() < 0.06


def test_bad_fold():
    with pytest.raises(ValueError):
        folds.split(_table(10), 5, 5)


@pytest.mark.parametrize("seed", range(8))
def test_the_folds_are_scikit_learns_stratified_k_fold(seed):
    import warnings

    from sklearn.model_selection import StratifiedKFold

    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 7))
    strata = rng.choice(6, size=int(rng.integers(n, 400)), p=rng.dirichlet(np.ones(6)))  # some strata rarer than n
    expected = np.empty(len(strata), np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, val) in enumerate(StratifiedKFold(n, shuffle=True, random_state=seed).split(strata, strata)):
            expected[val] = k
    assert (folds.stratified_folds(strata, n, seed) == expected).all()


def test_too_few_people_in_every_stratum_is_a_clear_error():
    with pytest.raises(ValueError, match="no stratum has 5 members"):
        folds.stratified_folds(np.arange(6), 5, 0)
