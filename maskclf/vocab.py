"""The names a config may use, known without importing what implements them.

torch, timm and albumentations take seconds of CPU to import, and every command checks its whole config
before it does any work (a search's driver never trains, so it never needs them). The modules that
implement these names build their registries from them (tests/test_vocab.py checks they agree).

timm's backbone and optimizer names come from timm itself, kept in a file per installed timm version
(``~/.cache/maskclf/timm-<version>.json``, or under ``$XDG_CACHE_HOME``) written the first time they are
needed; a name missing from that list is always asked of timm, so the file can only make a check faster,
never turn a good name away.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import json
import os
import tempfile
from pathlib import Path

HEADS = ("joint", "multitask")  # model.head
LOSSES = ("ce", "smooth", "weighted", "focal", "soft_f1")  # train.loss
SAMPLERS = ("none", "weighted")  # train.sampler
SCHEDULERS = ("none", "cosine", "step", "multistep", "plateau", "poly", "tanh")  # train.scheduler

# A preset is a list of (operation, parameters), in the order they apply. Both training paths are built from it:
# albumentations in the loader's workers (maskclf.transforms) and batches on the training device
# (maskclf.batch_augment).
Ops = list[tuple[str, dict]]
PRESETS: dict[str, Ops] = {  # train.augment
    "none": [],
    "light": [
        ("flip", {"p": 0.5}),
        ("brightness_contrast", {"brightness": 0.15, "contrast": 0.15, "p": 0.5}),
        ("affine", {"scale": (0.95, 1.05), "translate": 0.04, "rotate": 8, "p": 0.5}),
    ],
    "strong": [
        ("flip", {"p": 0.5}),
        ("brightness_contrast", {"brightness": 0.25, "contrast": 0.25, "p": 0.7}),
        ("hsv", {"hue": 8, "sat": 20, "val": 10, "p": 0.4}),
        ("affine", {"scale": (0.9, 1.1), "translate": 0.08, "rotate": 15, "p": 0.7}),
        ("blur", {"kernel": (3, 5), "p": 0.3}),  # a Gaussian or a motion blur
        ("noise", {"std": (0.02, 0.08), "p": 0.3}),  # a share of 255
        ("dropout", {"holes": (1, 3), "size": (0.08, 0.2), "p": 0.4}),  # each side a share of the image's
    ],
}


def _cache_file() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "maskclf" / f"timm-{importlib.metadata.version('timm')}.json"


def timm_names() -> dict[str, list[str]]:
    """``{"models": [...], "optimizers": [...]}``: what ``timm.list_models()`` and
    ``timm.optim.list_optimizers()`` return, from the cache file when it is there."""
    path = _cache_file()
    try:
        names = json.loads(path.read_text())
        if isinstance(names.get("models"), list) and isinstance(names.get("optimizers"), list):
            return names
    except (OSError, ValueError, AttributeError):
        pass
    import timm
    import timm.optim

    names = {"models": sorted(timm.list_models()), "optimizers": sorted(timm.optim.list_optimizers())}
    try:  # a read-only home only costs the next command the import
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
            json.dump(names, f)
        os.replace(f.name, path)
    except OSError:
        pass
    return names


def backbone_problem(name: str) -> str | None:
    """None if timm knows ``name`` (as ``timm.is_model``: a pretrained tag such as ``.a1_in1k`` is ignored),
    else a message suggesting the closest names."""
    models = timm_names()["models"]
    if name.split(".", 1)[0] in models:
        return None
    import timm  # not listed: a deprecated alias timm still builds, or a typo

    if timm.is_model(name):
        return None
    close = difflib.get_close_matches(name, models, n=4, cutoff=0.6)
    hint = f"; closest: {', '.join(close)}" if close else "; see timm.list_models()"
    return f"unknown timm backbone '{name}'{hint}"


def optimizer_names() -> list[str]:
    """Every optimizer name timm builds (``train.optimizer``)."""
    return timm_names()["optimizers"]
