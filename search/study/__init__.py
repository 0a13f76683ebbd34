"""A study on disk: the configuration it started with, the Tune experiments it is made of, and the one
driver that may run it at a time.

A study is one or more Tune experiments ("parts") run one after the other against one Optuna study.
The first part is named after the study; raising ``search.num_samples`` (or ``search.budget_epochs``)
of a study adds a part for the extra trials, so TPE sees every earlier trial and MLflow numbers on.
``<run.dir>/<study>/parts.json`` lists the parts; ``study.yaml`` holds the configuration the study
started with, which every later run must match in what makes trials comparable.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Callable, Iterator

from maskclf import config as config_mod
from maskclf.config import Config
from maskclf.errors import InputError
from search.cluster.experiment import study_dir

# A study is the same study when these sections match; run.dir / tracking may move.
STUDY_SECTIONS = ("data", "faces", "folds", "model", "train", "search")
# How a study runs, or how far: these may change between runs of one study.
_HOW_IT_RUNS = {"search.address", "search.storage_path", "search.log_in_background", "search.reuse_actors",
                "search.num_samples", "search.budget_epochs", "search.warm_start"}
PARTS_FILE, LOCK_FILE = "parts.json", "driver.lock"


def check_same_study(cfg: Config, log: Callable[[str], None] = print) -> None:
    """Refuse to continue a study under a changed configuration: its trials would not be comparable.
    More trials or more epochs in all (``search.num_samples``, ``search.budget_epochs``) extend it."""
    saved = study_dir(cfg) / "study.yaml"
    if not saved.is_file():
        return
    from search.study import settings  # lazily: python -m search.study.settings runs it as __main__

    old, new = config_mod.to_dict(settings.load(saved)), config_mod.to_dict(cfg)
    changed = [f"{s}.{k}" for s in STUDY_SECTIONS for k in new[s] if old[s].get(k) != new[s][k]]
    ignored = set(_HOW_IT_RUNS)
    if old["search"].get("scheduler") == new["search"]["scheduler"] == "fifo":  # settings nothing reads
        ignored |= {"search.grace_period", "search.reduction_factor", "search.brackets"}
    if old["search"].get("sampler") == new["search"]["sampler"] == "random":
        ignored.add("search.n_startup_trials")
    if "search.warm_start" in changed and cfg.search.warm_start:
        log(f"search.warm_start applies when a study starts; study '{cfg.run.study}' has started already, "
            f"so '{cfg.search.warm_start}' is not taken over")
    changed = [k for k in changed if k not in ignored]
    if changed:
        raise InputError(f"study '{cfg.run.study}' in {study_dir(cfg)} was started with a different configuration "
                         f"(changed: {', '.join(changed)}); choose a new name with run.study=NAME")


# ---- parts ---------------------------------------------------------------------------------------

def _part(name: str, samples: int, budget: int, seed: int, num_samples: int, budget_epochs: int) -> dict:
    """A part: its Tune experiment, the study's totals it runs to (trials, epoch budget; 0 = none) and its own
    share of them (the trials and epochs left when it was added)."""
    return {"name": name, "samples": samples, "budget": budget, "seed": seed,
            "num_samples": num_samples, "budget_epochs": budget_epochs}


def read(cfg: Config) -> dict:
    """The study's record (``parts.json``): its parts, its Optuna storage and the trials it took over.
    A study without one is a single part (a new study, or one started before parts were recorded)."""
    path = study_dir(cfg) / PARTS_FILE
    if path.is_file():
        return json.loads(path.read_text())
    saved = study_dir(cfg) / "study.yaml"
    from search.study import settings

    s = (settings.load(saved) if saved.is_file() else cfg).search
    return {"parts": [_part(cfg.run.study, s.num_samples, s.budget_epochs, s.seed, s.num_samples, s.budget_epochs)],
            "optuna": None, "warm_start": []}


def write(cfg: Config, record: dict) -> None:
    path = study_dir(cfg) / PARTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)


def part_config(cfg: Config, part: dict) -> Config:
    """``cfg`` as one part runs it: that part's trials, epoch budget and sampler seed."""
    return config_mod.apply(cfg, {"search.num_samples": part["num_samples"], "search.budget_epochs": part["budget_epochs"],
                                  "search.seed": part["seed"]}, where=f"study part {part['name']}")


def extension(cfg: Config, parts: list[dict], started: int, spent: int, log: Callable[[str], None]) -> dict | None:
    """The part to add when ``cfg`` asks for more than the study's parts planned: more trials, or a larger
    (or no) epoch budget while trials are left. ``started``/``spent``: trials and epochs of the parts so far."""
    s, last = cfg.search, parts[-1]
    more = s.num_samples > last["samples"] or (last["budget"] > 0 and (s.budget_epochs == 0 or s.budget_epochs > last["budget"]))
    if not more:
        if s.num_samples < last["samples"]:
            log(f"study '{cfg.run.study}' plans {last['samples']} trials; search.num_samples={s.num_samples} "
                f"removes none (raise it to add trials)")
        return None
    trials_left = s.num_samples - started
    epochs_left = s.budget_epochs - spent if s.budget_epochs else 0
    if trials_left <= 0 or (s.budget_epochs and epochs_left <= 0):
        log(f"study '{cfg.run.study}' has {started} trials and {spent} epochs: nothing left to add under "
            f"search.num_samples={s.num_samples}, search.budget_epochs={s.budget_epochs}")
        return None
    n = len(parts) + 1
    part = _part(f"{cfg.run.study}-part{n}", s.num_samples, s.budget_epochs, s.seed + n - 1, trials_left, epochs_left)
    log(f"extending study '{cfg.run.study}': {started} trials so far, {trials_left} more"
        + (f", up to {epochs_left} more epochs" if s.budget_epochs else "") + f" (Tune experiment {part['name']})")
    return part


# ---- one driver per study ------------------------------------------------------------------------

def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']} since {info['since']} ({info['command']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


def _open_locked(path: Path) -> int | None:
    """``path`` opened and flock-ed, or None when a live process holds it. Retried when the file was
    replaced under us (a run that made the study's folder removes it again if it wrote nothing else)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def driver_lock(cfg: Config, what: str, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the study's lock while ``what`` (``python -m search.tune``, ``... search.finalize``) runs; refuse
    at once, exit 2, when a live process holds it. The lock is the operating system's (``flock``), so it dies
    with its process: a lock left by a killed driver is free again, and the next run takes it over. A run
    refused before it wrote anything leaves no study folder behind."""
    folder = study_dir(cfg)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = _open_locked(path)
    if fd is None:
        holder = _holder(path.read_text(errors="replace"))
        if made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise InputError(f"study '{cfg.run.study}' is being run by {holder}; wait for it to end or stop it "
                         f"(lock: {path})")
    try:
        old = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if old:
            log(f"taking over the lock of study '{cfg.run.study}' left by {_holder(old)}, which is no longer running")
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since, "what": what,
                           "command": " ".join([what, *sys.argv[1:]])[:300]})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        os.fsync(fd)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # a clean end leaves no holder behind
            if made and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
                path.unlink()  # nothing else written: no study folder left behind
                folder.rmdir()
        os.close(fd)  # closing releases the flock
