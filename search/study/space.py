"""The search space of a study, declared in the config with the config's own dotted keys.

Each entry is ``key: {kind: args}``, optionally with ``when: {other.key: value or [values]}``
for conditional parameters, e.g.::

    train.lr: {loguniform: [1.0e-4, 1.0e-2]}
    train.decay_epochs: {int: [1, 3], when: {train.scheduler: [step, plateau]}}

It becomes an Optuna define-by-run function, so a parameter only exists in the trials
where its condition holds.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from maskclf import config as config_mod
from maskclf import tasks
from maskclf.config import Config
from maskclf.errors import InputError

KINDS = ("choice", "uniform", "loguniform", "int", "logint")


def _spec_problems(key: str, spec: Any, known: set[str], earlier: list[str]) -> list[str]:
    where = f"search.space.{key}"
    if key not in known:
        return [f"{where}: '{key}' is not a config key"]
    if not isinstance(spec, dict):
        return [f"{where}: expected a mapping such as {{choice: [a, b]}}, got {spec!r}"]
    kinds = [k for k in spec if k != "when"]
    if len(kinds) != 1 or kinds[0] not in KINDS:
        return [f"{where}: give exactly one of {', '.join(KINDS)} (got {', '.join(map(str, kinds)) or 'none'})"]
    kind, args = kinds[0], spec[kinds[0]]
    p = []
    if kind == "choice":
        if not isinstance(args, list) or not args:
            p.append(f"{where}: choice needs a non-empty list")
    elif not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) for a in args)
              and args[0] < args[1]):
        p.append(f"{where}: {kind} needs [low, high] with low < high, got {args!r}")
    elif kind in ("loguniform", "logint") and args[0] <= 0:
        p.append(f"{where}: {kind} needs low > 0")
    for dep in (spec.get("when") or {}):
        if dep not in earlier:
            p.append(f"{where}: condition on '{dep}', which is not a parameter listed before it")
    return p


def _values(spec: dict) -> list[Any]:
    """The choices, or the two bounds: enough to check that every value type-checks."""
    return list(spec[next(k for k in spec if k != "when")])


def for_task(cfg: Config, log: Callable[[str], None] = print) -> Config:
    """``cfg`` without the space's parameters that a model of its ``model.task`` ignores (``model.head`` for a
    task model, ``data.age_old`` for mask and gender), so one space serves every task's study."""
    ignored = [k for k in cfg.search.space if k in tasks.ignored_keys(cfg.model.task)]
    if not ignored:
        return cfg
    log(f"search.space: {', '.join(ignored)} left out (no effect on a {cfg.model.task} model)")
    cfg = copy.deepcopy(cfg)
    cfg.search.space = {k: v for k, v in cfg.search.space.items() if k not in ignored}
    return cfg


def validate(cfg: Config) -> dict[str, dict]:
    """Check every entry of ``cfg.search.space`` (keys, kinds, bounds, conditions, value types)."""
    space = cfg.search.space
    if not space:
        raise InputError("search.space is empty: declare at least one parameter (see conf/search.yaml)")
    known, earlier, problems = set(config_mod.keys(cfg)), [], []
    if cfg.search.scheduler == "asha" and cfg.search.grace_period > cfg.train.epochs:
        problems.append(f"search.grace_period={cfg.search.grace_period} is more than train.epochs={cfg.train.epochs}: "
                        f"ASHA could never stop a trial; lower it or raise train.epochs")
    for key, spec in space.items():
        found = _spec_problems(key, spec, known, earlier)
        earlier.append(key)
        if found:
            problems += found
            continue
        for v in _values(spec):  # each candidate value must make a valid config
            try:
                config_mod.validate(config_mod.apply(cfg, {key: v}, where=f"search.space.{key}"))
            except InputError as e:
                problems += [f"search.space.{key} value {v!r}: {q}" for q in e.problems]
    if problems:
        raise InputError(problems)
    return space


class DefineByRun:
    """An Optuna define-by-run function suggesting each parameter whose condition holds.

    A class rather than a closure: Tune pickles the searcher into the experiment
    state, which is how an interrupted study resumes.
    """

    def __init__(self, space: dict[str, dict]):
        self.space = space

    def __call__(self, trial) -> None:
        chosen: dict[str, Any] = {}
        for key, spec in self.space.items():
            cond = spec.get("when") or {}
            if any(chosen.get(k) not in (v if isinstance(v, list) else [v]) for k, v in cond.items()):
                continue
            kind = next(k for k in spec if k != "when")
            args = spec[kind]
            if kind == "choice":
                chosen[key] = trial.suggest_categorical(name=key, choices=args)
            elif kind in ("uniform", "loguniform"):
                chosen[key] = trial.suggest_float(name=key, low=float(args[0]), high=float(args[1]),
                                                  log=kind == "loguniform")
            else:
                chosen[key] = trial.suggest_int(name=key, low=int(args[0]), high=int(args[1]), log=kind == "logint")


def distribution(spec: dict):
    """The Optuna distribution of one validated entry (what :class:`DefineByRun` suggests from)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    kind = next(k for k in spec if k != "when")
    args = spec[kind]
    if kind == "choice":
        return CategoricalDistribution(args)
    if kind in ("uniform", "loguniform"):
        return FloatDistribution(float(args[0]), float(args[1]), log=kind == "loguniform")
    return IntDistribution(int(args[0]), int(args[1]), log=kind == "logint")


def as_point(space: dict[str, dict], params: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """``params`` (a trial of another study) as a point of ``space``: the parameters :class:`DefineByRun` would
    ask for under these values, each inside its distribution; or None and the reason it is not one. Other
    keys of ``params`` are left out (whether they match what this study fixes is the caller's to check)."""
    chosen: dict[str, Any] = {}
    for key, spec in space.items():
        cond = spec.get("when") or {}
        if any(chosen.get(k) not in (v if isinstance(v, list) else [v]) for k, v in cond.items()):
            continue
        if key not in params:
            return None, f"it has no value for {key}"
        kind, value = next(k for k in spec if k != "when"), params[key]
        args = spec[kind]
        if kind == "choice":
            inside = value in args
        else:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            inside = number and args[0] <= value <= args[1] and (kind in ("uniform", "loguniform") or value == int(value))
        if not inside:
            return None, f"{key}={value!r} is outside this study's space"
        chosen[key] = value
    return chosen, None
