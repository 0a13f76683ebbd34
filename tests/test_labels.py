import numpy as np
import pytest

from maskclf import labels


def test_codec_roundtrip_covers_all_18_classes():
    seen = set()
    for m in range(3):
        for g in range(2):
            for a in range(3):
                y = labels.encode(m, g, a)
                assert labels.decode(y) == (m, g, a)
                seen.add(y)
    assert seen == set(range(18))


def test_codec_known_values():
    assert labels.encode(0, 0, 0) == 0
    assert labels.encode(1, 1, 2) == 11  # incorrect, female, >=60
    assert labels.encode(2, 1, 1) == 16
    m, g, a = labels.decode(np.array([0, 11, 17]))
    assert m.tolist() == [0, 1, 2] and g.tolist() == [0, 1, 1] and a.tolist() == [0, 2, 2]


@pytest.mark.parametrize("age,band", [(18, 0), (29, 0), (30, 1), (59, 1), (60, 2), (61, 2)])
def test_age_bands(age, band):
    assert labels.age_band(age) == band


def test_age_cutoff_moves_only_the_old_boundary():
    ages = np.array([29, 30, 57, 58, 59, 60])
    assert labels.age_band(ages, old=58).tolist() == [0, 1, 1, 2, 2, 2]
    assert labels.age_band(ages).tolist() == [0, 1, 1, 1, 1, 2]


def test_class_name():
    assert labels.class_name(11) == "incorrect/female/>=60"
