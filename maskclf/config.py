"""One typed config: the dataclass defaults of a schema, YAML files in conf/, dotted ``key=value`` overrides.

The schema is the core's (maskclf/schema.py) or one that adds sections to it (the search layer's,
search/study/settings.py), passed to :func:`load`. The same dotted keys serve the command line (``train.lr=3e-4``),
the search space (``search.space: {train.lr: ...}``) and finalize, so a trial's configuration can always be rebuilt
from its flat parameters. A file may hold sections of a layer above the schema it is loaded with (the core's own
commands read the search's config files): those are left to that layer, unless a section's name is a near miss of
one of the schema's, which is reported as a typo.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

import yaml

from maskclf.errors import InputError
from maskclf.schema import Config  # the dataclasses of every section, with their defaults and meanings

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
DEFAULT_CONFIG = CONF_DIR / "search.yaml"


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def keys(cfg: Config | None = None) -> list[str]:
    """Every dotted key, e.g. ``train.lr``."""
    cfg = cfg or Config()
    return [f"{s.name}.{f.name}" for s in dataclasses.fields(cfg) for f in dataclasses.fields(getattr(cfg, s.name))]


def _unknown(key: str, known: list[str]) -> str:
    leaf = key.rpartition(".")[2]
    moved = [k for k in known if k.rpartition(".")[2] == leaf]  # right name, wrong section
    close = moved or difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unknown key '{key}'{hint}"


def _typo(a: str, b: str) -> bool:
    """``a`` is ``b`` mistyped: the same letters in another order, or one letter added, dropped or changed."""
    if sorted(a) == sorted(b):
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1] <= 1


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert ``value`` to the field type or raise ValueError with a readable reason."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if typ is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} must be a number, got {value!r}")
        return float(value)
    if typ is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"{key} must be a string, got {value!r}")
        return "" if value is None else str(value)
    if typ is dict or typing.get_origin(typ) is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be a mapping, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {typ} for {key}")  # a bug, not bad input


def _set(cfg: Config, key: str, value: Any, problems: list[str], where: str) -> None:
    section, _, name = key.partition(".")
    sections = [f.name for f in dataclasses.fields(cfg)]
    sub = getattr(cfg, section, None) if section in sections else None
    names = [f.name for f in dataclasses.fields(sub)] if sub is not None else []
    if cfg.OTHER_LAYERS and name and section.isidentifier() and (
            (sub is None and not any(_typo(section, s) for s in sections))
            or (section in cfg.OPEN_SECTIONS and name not in names and not any(_typo(name, n) for n in names))):
        return  # a setting of a layer above this schema (its section, or its key in a shared one): that layer's
    if sub is None or not name or name not in names:
        problems.append(f"{_unknown(key, keys(cfg))} in {where}")
        return
    try:
        setattr(sub, name, _coerce(value, _hints(type(sub))[name], key))
    except ValueError as e:
        problems.append(f"{e} in {where}")


def _flatten(tree: Any, where: str, problems: list[str], prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        problems.append(f"{where}: expected a mapping of sections, got {type(tree).__name__}")
        return {}
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and "." not in key:  # a section; a mapping inside one is a value (search.space)
            flat.update(_flatten(v, where, problems, key + "."))
        else:
            flat[key] = v
    return flat


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.lr=3e-4", "run.dir=/tmp/r"]`` -> ``{"train.lr": 0.0003, ...}`` (YAML-typed values)."""
    out: dict[str, Any] = {}
    problems = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"override '{item}' is not key=value")
            continue
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    if problems:
        raise InputError(problems)
    return out


def apply(cfg: Config, values: dict[str, Any], where: str = "overrides") -> Config:
    """A copy of ``cfg`` with dotted ``values`` applied; every bad key/value reported at once."""
    cfg = copy.deepcopy(cfg)
    problems: list[str] = []
    for key, value in values.items():
        _set(cfg, key, value, problems, where)
    if problems:
        raise InputError(problems)
    return cfg


def load(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None,
         schema: type[Config] = Config) -> Config:
    """Defaults of ``schema``, then the YAML file at ``path``, then ``overrides``; validated, with every local path
    (``schema.PATH_KEYS``) made absolute against the current directory."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f" line {mark.line + 1}" if mark else ""
        raise InputError(f"{path}{loc}: not valid YAML") from None
    problems: list[str] = []
    flat = _flatten(tree, str(path), problems)
    cfg = schema()
    for key, value in flat.items():
        _set(cfg, key, value, problems, str(path))
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    for key, value in (overrides or {}).items():
        _set(cfg, key, value, problems, "command line")
    if problems:
        raise InputError(problems)
    _absolute(cfg)
    validate(cfg)
    return cfg


PATH_KEYS = Config.PATH_KEYS  # the core's; a schema with more sections has more (its PATH_KEYS)


def _absolute(cfg: Config) -> None:
    for key in cfg.PATH_KEYS:
        section, _, name = key.partition(".")
        sub = getattr(cfg, section)
        value = getattr(sub, name)
        if value and "://" not in value:  # s3://, gs://, file:// ... are left as they are
            setattr(sub, name, str(Path(value).expanduser().absolute()))


def to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dict (what YAML files hold)."""
    return dataclasses.asdict(cfg)


def flat(cfg: Config) -> dict[str, Any]:
    """Flat ``{dotted key: value}`` without mapping-valued keys (the search space)."""
    d = to_dict(cfg)
    return {f"{s}.{k}": v for s, sub in d.items() for k, v in sub.items() if not isinstance(v, dict)}


def save(cfg: Config, path: str | Path) -> Path:
    """Write the complete resolved config as YAML (loadable by :func:`load`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
    return path


def check_choice(problems: list[str], key: str, value: str, choices: list[str] | tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, list(choices), n=3, cutoff=0.5)
        hint = f" (closest: {', '.join(close)})" if close else ""
        problems.append(f"{key}: unknown '{value}'{hint}; choose from [{', '.join(sorted(choices))}]")


def value_problems(cfg: Config) -> list[str]:
    """Every invalid value in ``cfg`` (names resolved against the registries)."""
    from maskclf import faces, tasks, vocab, weights  # none of them imports torch

    p: list[str] = []
    check_choice(p, "faces.method", cfg.faces.method, list(faces.METHODS))
    missing = faces.install_problem(cfg.faces.method)
    if missing:
        p.append(f"faces.method={cfg.faces.method}: {missing}")
    check_choice(p, "model.task", cfg.model.task, list(tasks.TASKS))
    check_choice(p, "model.head", cfg.model.head, list(vocab.HEADS))
    check_choice(p, "model.pretrained_source", cfg.model.pretrained_source, list(weights.SOURCES))
    check_choice(p, "train.augment", cfg.train.augment, list(vocab.PRESETS))
    check_choice(p, "train.augment_on", cfg.train.augment_on, ["auto", "loader", "device"])
    check_choice(p, "train.loss", cfg.train.loss, list(vocab.LOSSES))
    check_choice(p, "train.sampler", cfg.train.sampler, list(vocab.SAMPLERS))
    check_choice(p, "train.optimizer", cfg.train.optimizer, vocab.optimizer_names())
    check_choice(p, "train.scheduler", cfg.train.scheduler, list(vocab.SCHEDULERS))
    err = vocab.backbone_problem(cfg.model.backbone)
    if err:
        p.append(f"model.backbone: {err}")
    m = cfg.model
    if m.pretrained and m.pretrained_source == "offline" and not m.pretrained_file and not err:
        missing = weights.offline_problem(m.backbone)
        if missing:
            p.append(f"model.pretrained_source=offline: {missing}")
    if cfg.model.pretrained_file and not Path(cfg.model.pretrained_file).is_file():
        p.append(f"model.pretrained_file: file not found: {cfg.model.pretrained_file}")
    if cfg.data.corrections and not Path(cfg.data.corrections).is_file():
        p.append(f"data.corrections: file not found: {cfg.data.corrections}")
    positive = {
        "train.epochs": cfg.train.epochs, "train.batch_size": cfg.train.batch_size,
        "train.image_size": cfg.train.image_size, "train.lr": cfg.train.lr,
        "faces.size": cfg.faces.size, "faces.batch_size": cfg.faces.batch_size,
    }
    p += [f"{k} must be > 0, got {v}" for k, v in positive.items() if v <= 0]
    if cfg.folds.n < 2:
        p.append(f"folds.n must be >= 2, got {cfg.folds.n}")
    if not 0 <= cfg.folds.fold < max(cfg.folds.n, 1):
        p.append(f"folds.fold must be in 0..{cfg.folds.n - 1}, got {cfg.folds.fold}")
    if not 31 <= cfg.data.age_old <= 90:
        p.append(f"data.age_old must be in 31..90, got {cfg.data.age_old}")
    if not 0 < cfg.train.backbone_lr_scale <= 1:
        p.append(f"train.backbone_lr_scale must be in (0, 1], got {cfg.train.backbone_lr_scale}")
    if not 0 <= cfg.train.freeze_epochs < cfg.train.epochs:
        p.append(f"train.freeze_epochs must be in 0..train.epochs-1 ({cfg.train.epochs - 1}), "
                 f"got {cfg.train.freeze_epochs}")
    if cfg.distill.temperature <= 0:
        p.append(f"distill.temperature must be > 0, got {cfg.distill.temperature}")
    if not 0 <= cfg.distill.alpha <= 1:
        p.append(f"distill.alpha must be in [0, 1], got {cfg.distill.alpha}")
    return p + cfg.problems()  # the sections a schema above the core's adds


# What a config saved beside trained weights drops when it is reloaded: the weights come from the checkpoint, and
# the files only training reads (ImageNet weights, label corrections) may not be where the model is served.
_TRAINING_FILES = {"model.pretrained": False, "model.pretrained_file": "", "data.corrections": ""}


def load_saved(path: str | Path, schema: type[Config] = Config) -> Config:
    """The config saved beside a trained model (a checkpoint's, a finalize's ``config.yaml``), without its
    training-only files."""
    return load(path, dict(_TRAINING_FILES), schema)


def validate(cfg: Config) -> Config:
    """Raise InputError listing every bad value."""
    problems = value_problems(cfg)
    if problems:
        raise InputError(problems)
    return cfg


def run_dir(cfg: Config) -> Path:
    return Path(cfg.run.dir).expanduser()


def cache_dir(cfg: Config) -> Path:
    return Path(cfg.faces.cache_dir).expanduser() if cfg.faces.cache_dir else run_dir(cfg) / "cache"
