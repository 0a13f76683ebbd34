"""Training and prediction samples over shared crop arrays, without copies of them.

The crops of a dataset are one read-only array (a memory map of the crop cache, or an array in Ray's object
store that every process of a node shares). A fold, an out-of-fold prediction or a pseudo-labelled set picks
rows of it: :class:`Rows` keeps the indices and reads one crop at a time, so a trial's memory does not grow
by the size of its 80% of the photos.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class Rows:
    """Chosen rows of one or more arrays, in order, read one row at a time.

    ``Rows((crops, [4, 1, 7]), (others, [0]))`` is a sequence of four crops; ``rows[i]`` reads one from its
    array, ``rows[a:b]`` or ``rows[[i, j]]`` gathers those rows only, and ``np.asarray(rows)`` gathers them
    all (tests and small sets; training and prediction read row by row)."""

    def __init__(self, *parts: tuple[np.ndarray, np.ndarray]):
        if not parts:
            raise ValueError("Rows needs at least one (array, rows) part")
        self.parts = [(base, np.asarray(rows, np.int64).reshape(-1)) for base, rows in parts]
        self._ends = np.cumsum([len(rows) for _, rows in self.parts])
        self.shape = (int(self._ends[-1]), *parts[0][0].shape[1:])
        self.dtype = parts[0][0].dtype

    @classmethod
    def of(cls, images) -> Rows:
        """``images`` as Rows: itself, or every row of an array."""
        return images if isinstance(images, Rows) else cls((images, np.arange(len(images))))

    def __add__(self, other) -> Rows:
        """These rows, then ``other``'s (an array or Rows)."""
        return Rows(*self.parts, *Rows.of(other).parts)

    def __len__(self) -> int:
        return self.shape[0]

    def _one(self, i: int) -> np.ndarray:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} of {len(self)}")
        p = int(np.searchsorted(self._ends, i, side="right"))
        base, rows = self.parts[p]
        return base[rows[i - (int(self._ends[p - 1]) if p else 0)]]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self._one(int(key))
        if len(self.parts) == 1:
            base, rows = self.parts[0]
            return np.asarray(base[rows[key]])
        picked = np.arange(len(self))[key]
        if len(picked) == 0:
            return np.empty((0, *self.shape[1:]), self.dtype)
        return np.stack([self._one(int(i)) for i in picked])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


@dataclass
class Samples:
    """Face crops (N x S x S x 3 uint8: an array, or :class:`Rows` of shared arrays) and their labels (of the
    model's task: 18 classes, or mask / gender / age); ``soft``: a teacher's probabilities (N x classes) to
    distill, for training samples."""

    images: np.ndarray | Rows
    labels: np.ndarray
    soft: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)
