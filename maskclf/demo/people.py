"""Who the demo people are: labels sampled with the real data's proportions, one random stream per person."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskclf.labels import STEM_TO_MASK, age_band, encode

STEMS = tuple(STEM_TO_MASK)  # mask1..mask5, incorrect_mask, normal
_SPLITS = {"train": 0, "eval": 1}
# Real-data proportions (public EDA): 61% female; 47% <30, 46% 30-59, 7% age 60.
P_FEMALE = 0.61
P_BAND = (0.47, 0.46, 0.07)


@dataclass(frozen=True)
class Person:
    """Who is in one folder: the labels that the folder name carries."""

    split: str
    index: int
    gender: int  # 0 male, 1 female
    age: int

    @property
    def folder(self) -> str:
        """The competition folder name, e.g. ``000001_female_Asian_45``."""
        g = "female" if self.gender else "male"
        return f"{self.index + 1:06d}_{g}_Asian_{self.age}"

    def label(self, stem: str) -> int:
        """The 18-class label of this person's photo ``stem`` (mask1..5, incorrect_mask, normal)."""
        return int(encode(STEM_TO_MASK[stem], self.gender, age_band(self.age)))


def person_rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    # One generator per (person, purpose): output never depends on processing order.
    return np.random.default_rng([seed, _SPLITS[split], index, stream])


def sample_person(seed: int, split: str, index: int) -> Person:
    rng = person_rng(seed, split, index, 0)
    gender = int(rng.random() < P_FEMALE)
    band = int(rng.choice(3, p=P_BAND))
    if band == 0:
        age = int(rng.integers(18, 30))
    elif band == 1:  # the real 30-59 band piles up in the 50s, right under the hard cut
        age = int(rng.integers(50, 60) if rng.random() < 0.55 else rng.integers(30, 50))
    else:
        age = 60
    return Person(split, index, gender, age)


def sample_people(n: int, seed: int, split: str = "train") -> list[Person]:
    """The people ``generate`` would draw for a split, without rendering any image."""
    return [sample_person(seed, split, i) for i in range(n)]
