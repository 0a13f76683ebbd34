"""The study's Optuna record in a real database: every trial's parameters, per-epoch values and end,
readable by optuna-dashboard, kept across resumes, extended by later parts, and a source of warm starts.

By default a SQLite file beside MLflow's (``<run.dir>/optuna.db``, one Optuna study per ``run.study``);
``tracking.optuna_storage`` takes any SQLAlchemy URL (PostgreSQL on a cluster head). Only the driver
writes it: the searcher lives in Tune's controller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from maskclf import config as config_mod
from maskclf.config import Config
from maskclf.errors import InputError
from search.study import space as space_mod
from search.study import settings
from search.study.outputs import RUNTIME_KEYS  # a warm start ignores them

PART_ATTR, LOST_ATTR, FROM_ATTR = "maskclf.part", "maskclf.lost", "maskclf.from"
# Where this run's driver finds each study's storage (``search.study.optuna_search.searcher`` sets it): a
# restored searcher reconnects there, not to the URL pickled when its experiment started (the run dir may
# have moved).
_URLS: dict[str, str] = {}


def use_url(study_name: str, url: str) -> None:
    """Make ``url`` the storage of study ``study_name`` for this driver, restored searchers included."""
    _URLS[study_name] = url


def current_url(study_name: str, pickled: str) -> str:
    """The storage URL this run's driver gave study ``study_name`` (else ``pickled``, the one it started with)."""
    return _URLS.get(study_name, pickled)


def storage_url(cfg: Config) -> str:
    if cfg.tracking.optuna_storage:
        return cfg.tracking.optuna_storage
    return f"sqlite:///{(config_mod.run_dir(cfg) / 'optuna.db').resolve()}"


def storage(url: str):
    """An Optuna RDB storage; SQLite waits for a busy file instead of failing."""
    from optuna.storages import RDBStorage

    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return RDBStorage(url)


def open_study(url: str, name: str, *, create: bool = True, sampler=None):
    """The Optuna study ``name`` in ``url`` (created when missing and ``create``); a store that cannot be
    used is an InputError naming it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        store = storage(url)
        if not create:
            return optuna.load_study(study_name=name, storage=store, sampler=sampler)
        return optuna.create_study(study_name=name, storage=store, sampler=sampler, direction="maximize",
                                   load_if_exists=True)
    except KeyError:
        raise InputError(f"no Optuna study '{name}' in {url}") from None
    except Exception as e:  # a bad URL, a missing driver, an unreachable server
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise InputError(f"Optuna storage {url} is not usable: {reason}") from None


def has_study(url: str, name: str) -> bool:
    import optuna

    return any(s.study_name == name for s in optuna.get_all_study_summaries(storage(url), include_best_trial=False))


def close_lost(store, study, part: str, known: set[int]) -> list[int]:
    """End as FAIL the trials of ``part`` still RUNNING that Tune does not know (``known``: Optuna trial
    ids): asked for after the last snapshot of a driver since killed. Returns their numbers."""
    from optuna.trial import TrialState

    lost = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get(PART_ATTR) == part and t._trial_id not in known]
    for t in lost:
        store.set_trial_user_attr(t._trial_id, LOST_ATTR,
                                  "asked for after Tune's last snapshot of a killed driver; rerun as a new trial")
        store.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return [t.number for t in lost]


def end_stopped(cfg: Config, part: str) -> list[int]:
    """End the trials of ``part`` still RUNNING once the study's epoch budget has ended its experiment.

    Tune stops the trials still training when its stopper ends the experiment without telling the
    searcher, so Optuna would hold them as running for ever. Each ends as the searcher ends a stopped
    trial: with ``search.stopped_trials`` = pruned, PRUNED when it trained fewer than ``train.epochs``;
    otherwise COMPLETE with its last epoch's value; PRUNED when it reported nothing. Returns their numbers."""
    from optuna.trial import TrialState

    study = open_study(storage_url(cfg), cfg.run.study, create=False)
    ended = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get(PART_ATTR) != part:
            continue
        steps = t.intermediate_values
        if not steps or (cfg.search.stopped_trials == "pruned" and max(steps) < cfg.train.epochs):
            study.tell(t.number, state=TrialState.PRUNED)
        else:
            study.tell(t.number, steps[max(steps)], state=TrialState.COMPLETE)
        ended.append(t.number)
    return ended


# ---- warm start ----------------------------------------------------------------------------------

def _source(cfg: Config, name: str) -> tuple[Path, str, str]:
    """A warm-start source: a study of this run dir, or a study folder's path. Returns its folder, its
    Optuna storage URL and its Optuna study name."""
    import json

    p = Path(name).expanduser()
    folder = p if ("/" in name or p.is_dir()) and not (config_mod.run_dir(cfg) / name).is_dir() else \
        config_mod.run_dir(cfg) / name
    study = folder.name
    url = None
    if (folder / "parts.json").is_file():
        url = json.loads((folder / "parts.json").read_text()).get("optuna")
    return folder, url or f"sqlite:///{(folder.parent / 'optuna.db').resolve()}", study


def _fixed(cfg: Config) -> dict[str, Any]:
    return {k: v for k, v in config_mod.flat(cfg).items()
            if k.split(".")[0] in ("data", "faces", "folds", "model", "train") and k not in RUNTIME_KEYS}


def warm_trials(cfg: Config, log: Callable[[str], None] = print) -> list[dict]:
    """The finished trials of the studies in ``search.warm_start`` that are points of this study: inside
    its space, and the same as it in everything it does not search. Each as a dict: source study, trial
    number, params, value, intermediate values. Sources that cannot be read are one InputError."""
    import optuna

    names = [n.strip() for n in cfg.search.warm_start.split(",") if n.strip()]
    problems, found = [], []
    space, fixed = cfg.search.space, _fixed(cfg)
    for name in names:
        folder, url, study_name = _source(cfg, name)
        if not (folder / "study.yaml").is_file():
            problems.append(f"search.warm_start: no study '{name}' at {folder} (no study.yaml)")
            continue
        try:
            source = open_study(url, study_name, create=False)
        except InputError as e:
            problems.append(f"search.warm_start: study '{name}': {e}")
            continue
        src_cfg = settings.load(folder / "study.yaml")
        taken, skipped = 0, {}
        for t in source.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            point, why = space_mod.as_point(space, t.params)
            if point is not None:
                theirs = _fixed(config_mod.apply(src_cfg, t.params, where=f"trial {t.number} of {name}"))
                differ = [k for k in fixed if k not in point and theirs.get(k) != fixed[k]]
                if differ:
                    why = f"it differs in {', '.join(differ[:3])}" + (" ..." if len(differ) > 3 else "")
            if why:
                skipped[why] = skipped.get(why, 0) + 1
                continue
            found.append({"study": study_name, "trial": t.number, "params": point, "value": t.value,
                          "intermediate": {int(k): v for k, v in t.intermediate_values.items()}})
            taken += 1
        reasons = "; ".join(f"{n} because {why}" for why, n in skipped.items())
        log(f"warm start: {taken} trial(s) of study '{name}' taken over" + (f", {sum(skipped.values())} left "
                                                                            f"out ({reasons})" if skipped else ""))
    if problems:
        raise InputError(problems)
    return found


def add_warm_trials(cfg: Config, trials: list[dict]) -> None:
    """Give the (new) study the warm-start trials as finished trials, so TPE starts from their results."""
    import optuna

    study = open_study(storage_url(cfg), cfg.run.study)
    if study.user_attrs.get("maskclf.warm_started"):
        return  # added by an earlier run of this command, killed before the study's record was written
    dists = {k: space_mod.distribution(spec) for k, spec in cfg.search.space.items()}
    study.add_trials([optuna.trial.create_trial(
        params=t["params"], distributions={k: dists[k] for k in t["params"]}, value=t["value"],
        intermediate_values=t["intermediate"], user_attrs={FROM_ATTR: f"{t['study']}#{t['trial']}"})
        for t in trials])
    study.set_user_attr("maskclf.warm_started", True)


def dashboard_command(cfg: Config) -> str:
    return f"optuna-dashboard {storage_url(cfg)}  then open http://127.0.0.1:8080 (study '{cfg.run.study}')"
