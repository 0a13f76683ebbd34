"""What a model learns (``model.task``): all 18 classes at once, or one of the three tasks they are made of.

The write-up's final system trains mask, gender and age as separate models, each with its own
backbone, loss, age cut-off and budget, and multiplies their probabilities into the 18 classes
(``label = mask * 6 + gender * 3 + age``, so ``p(label) = p(mask) p(gender) p(age)``: the same algebra
as the multitask head). Labels are kept as 18-class codes everywhere until a model needs its own.
"""

from __future__ import annotations

import numpy as np

from maskclf.labels import AGE_NAMES, GENDER_NAMES, MASK_NAMES, NUM_CLASSES, class_name, decode

TASKS = ("all", "mask", "gender", "age")
PARTS = ("mask", "gender", "age")  # the tasks the 18 classes are made of, in the label's order
_NAMES = {"mask": MASK_NAMES, "gender": GENDER_NAMES, "age": AGE_NAMES}
# config keys a task model ignores: they have no effect on what it learns
_IGNORED = {"mask": ("model.head", "data.age_old"), "gender": ("model.head", "data.age_old"), "age": ("model.head",)}


def check(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task '{task}'; choose from {list(TASKS)}")
    return task


def num_classes(task: str) -> int:
    """18 for ``all``, else the task's own classes (mask 3, gender 2, age 3)."""
    return NUM_CLASSES if check(task) == "all" else len(_NAMES[task])


def class_names(task: str) -> list[str]:
    """Readable names of the task's classes, in label order (``wear/female/30-59`` ... for ``all``)."""
    if check(task) == "all":
        return [class_name(c) for c in range(NUM_CLASSES)]
    return list(_NAMES[task])


def targets(labels: np.ndarray, task: str) -> np.ndarray:
    """The task's labels of 18-class labels (``labels`` unchanged for ``all``)."""
    labels = np.asarray(labels, dtype=np.int64)
    if check(task) == "all":
        return labels
    return np.asarray(decode(labels)[PARTS.index(task)], dtype=np.int64)


def age_band_of(task: str, c: int) -> int | None:
    """The age band (0 <30, 1 30-59, 2 >=60) that class ``c`` of ``task`` stands for, where it stands for one."""
    if task == "all":
        return int(decode(c)[2])
    return int(c) if task == "age" else None


def ignored_keys(task: str) -> tuple[str, ...]:
    """Config keys with no effect on a model of ``task`` (a task model has one head of its own classes;
    mask and gender labels do not depend on the age cut-off)."""
    return _IGNORED.get(check(task), ())


def marginal(probs: np.ndarray, task: str) -> np.ndarray:
    """The probabilities of ``task``'s classes from 18-class probabilities (sums over the other two tasks)."""
    probs = np.asarray(probs)
    if check(task) == "all":
        return probs
    cube = probs.reshape(len(probs), *(len(_NAMES[t]) for t in PARTS))
    other = tuple(1 + i for i, t in enumerate(PARTS) if t != task)
    return cube.sum(axis=other)


def as_task(probs: np.ndarray, model_task: str, task: str) -> np.ndarray:
    """A model's probabilities (of ``model_task``'s classes) as ``task``'s: themselves, or summed down from an
    18-class model's."""
    if model_task == task:
        return np.asarray(probs)
    if model_task != "all":
        raise ValueError(f"a {model_task} model's probabilities are not {task} probabilities")
    return marginal(probs, task)


def combine(mask: np.ndarray, gender: np.ndarray, age: np.ndarray) -> np.ndarray:
    """18-class probabilities from the three tasks' (N x 3, N x 2, N x 3): ``p(m) p(g) p(a)`` at
    ``m * 6 + g * 3 + a``."""
    mask, gender, age = (np.asarray(p, dtype=np.float64) for p in (mask, gender, age))
    if not len(mask) == len(gender) == len(age):
        raise ValueError(f"the tasks' probabilities have {len(mask)}, {len(gender)} and {len(age)} rows")
    return (mask[:, :, None, None] * gender[:, None, :, None] * age[:, None, None, :]).reshape(len(mask), -1)
