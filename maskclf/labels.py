"""The 18-class codec: ``label = mask * 6 + gender * 3 + age``."""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 18
MASK_NAMES = ("wear", "incorrect", "not wear")
GENDER_NAMES = ("male", "female")
AGE_NAMES = ("<30", "30-59", ">=60")

# File stem of each photo in a person's folder -> mask class.
STEM_TO_MASK = {
    "mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0,
    "incorrect_mask": 1,
    "normal": 2,
}
GENDER_TO_CODE = {"male": 0, "female": 1}


def encode(mask, gender, age):
    """Combine sub-labels (ints or arrays) into the 18-class label."""
    return mask * 6 + gender * 3 + age


def decode(label):
    """Split an 18-class label (int or array) into ``(mask, gender, age)``."""
    return label // 6, (label // 3) % 2, label % 3


def age_band(age, old: int = 60, young: int = 30):
    """Age band 0 (< young), 1 (young <= age < old), 2 (>= old).

    ``old`` is the training-label cut-off (58 or 59 helps on the real data);
    reported metrics always use the default 30/60.
    """
    age = np.asarray(age)
    band = (age >= young).astype(np.int64) + (age >= old).astype(np.int64)
    return band if band.ndim else int(band)


def class_name(label: int) -> str:
    """Readable name of a class, e.g. ``wear/female/30-59``."""
    m, g, a = decode(int(label))
    return f"{MASK_NAMES[m]}/{GENDER_NAMES[g]}/{AGE_NAMES[a]}"
