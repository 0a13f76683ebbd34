"""A study's output folders (``final/``, ``distill/``): new, or an interrupted run of the same models
continued, never a finished one overwritten (the next goes to ``final-2/``, ...); the file written last that
marks a finished run; JSON written whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from maskclf import config as config_mod
from maskclf.config import Config
from search.cluster.experiment import study_dir
from search.study import settings

DONE_FILE = "metrics.json"  # written last: its presence marks a finished finalize (or distillation)
# Keys that change where or how fast a model trains, not the model it yields (the search's trials and a run's
# fold models compare configurations without them).
RUNTIME_KEYS = frozenset({"train.device", "train.num_workers", "train.threads", "faces.device", "faces.batch_size",
                          "faces.cache_dir"})


def model_keys(cfg: Config, sections: tuple[str, ...] = ()) -> dict:
    """What makes two runs train the same models: data, crops, folds, model, training (and a pseudo-label
    round's settings where one ran, and ``sections``)."""
    keep = ("data", "faces", "folds", "model", "train", *(("pseudo",) if cfg.pseudo.enabled else ()), *sections)
    return {k: v for k, v in config_mod.flat(cfg).items()
            if (k.split(".")[0] in keep or k == "pseudo.enabled") and k not in RUNTIME_KEYS and k != "folds.fold"}


def output_dir(cfg: Config, log: Callable[[str], None] = print, base: str = "final",
              sections: tuple[str, ...] = ()) -> Path:
    """``final/``, or ``final-2/``, ...: the first that is new or an interrupted run of the same models
    (``base`` names another kind of run: ``distill``, with the keys of ``sections`` compared too)."""
    first, n = study_dir(cfg) / base, 1
    while True:
        path = first if n == 1 else first.with_name(f"{base}-{n}")
        if not path.exists():
            return path
        if not (path / DONE_FILE).is_file():
            saved = path / "config.yaml"
            if not saved.is_file() or model_keys(settings.load(saved), sections) == model_keys(cfg, sections):
                return path
            log(f"{path} holds an interrupted {base} of another configuration; leaving it as it is")
        n += 1


def finished(study: Path, name: str = "") -> tuple[Path | None, str]:
    """The finished finalize ``name`` of the study folder ``study`` (a folder name or a path; "" = the newest),
    or None and why not."""
    if name:
        path = Path(name).expanduser() if ("/" in name or name.startswith(".")) else study / name
        if (path / DONE_FILE).is_file():
            return path, ""
        return None, f"{path} is not a finished finalize (no {DONE_FILE})"
    done = [p for p in study.glob("final*") if (p / DONE_FILE).is_file()]
    if not done:
        return None, f"{study} holds no finished finalize: run `python -m search.finalize run.study={study.name}` first"
    return max(done, key=lambda p: (p / DONE_FILE).stat().st_mtime), ""


def write_json(path: Path, obj: dict) -> None:
    """``obj`` as ``path``, through a temporary file: a reader never sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)
