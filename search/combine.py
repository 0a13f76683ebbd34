"""``python -m search.combine mask=STUDY gender=STUDY age=STUDY``: the write-up's final model. The finalized
ensembles of a mask, a gender and an age study (any of them may be an 18-way study, summed down to its task)
are multiplied into the 18 classes, ``p(m * 6 + g * 3 + a) = p(m) p(g) p(a)``, scored out of fold, written
as a submission and registered as one MLflow model.

Each STUDY is a study name in ``run.dir``, or the path of a study folder or of one of its ``final*`` folders;
a study folder means its newest finished finalize. The outputs go to ``<run.dir>/combined/`` (then
``combined-2/``, ...: an earlier combination is never overwritten), written aside and renamed when complete.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from maskclf import config as config_mod
from maskclf import tasks
from maskclf.config import Config
from maskclf.errors import InputError, cli
from maskclf.labels import AGE_NAMES, encode
from search.study import settings

EXPERIMENT = "combined"  # the MLflow experiment of every combination, and its registered model's name
# settings that must agree between the three studies for their rows to be the same images with the same truth
# (each may crop faces its own way: the combined model crops for each part with that part's settings)
_SAME = ("data.root", "data.corrections", "folds.n", "folds.seed")


@dataclass
class Part:
    """One task's finalized ensemble: its final folder, config, out-of-fold and eval probabilities of the task."""

    task: str
    name: str  # as given on the command line
    final: Path
    cfg: Config
    oof: pd.DataFrame  # path, fold, label (of the task), probabilities of the task
    eval: pd.DataFrame  # ImageID, probabilities of the task

    def probs(self, table: pd.DataFrame) -> np.ndarray:
        cols = [c for c in table.columns if c.startswith("p") and c[1:].isdigit()]
        return tasks.as_task(table[cols].to_numpy(np.float64), self.cfg.model.task, self.task)


def _final(run_dir: Path, spec: str) -> tuple[Path | None, str]:
    """The finished final folder a STUDY argument names, or None and why not."""
    from search.study.outputs import DONE_FILE, finished

    path = Path(spec).expanduser() if ("/" in spec or spec.startswith(".")) else run_dir / spec
    if not path.is_dir():
        return None, f"no study folder {path}"
    if (path / DONE_FILE).is_file():
        return path, ""
    return finished(path)


def load_parts(cfg: Config, specs: dict[str, str]) -> dict[str, Part]:
    """The three parts, checked (every problem at once): each a finished finalize of its task or of all 18
    classes, with eval probabilities, on the same data, crops and folds."""
    problems = [f"{t}=STUDY is missing" for t in tasks.PARTS if t not in specs]
    parts: dict[str, Part] = {}
    for task in tasks.PARTS:
        if task not in specs:
            continue
        final, why = _final(config_mod.run_dir(cfg), specs[task])
        if final is None:
            problems.append(f"{task}={specs[task]}: {why}")
            continue
        missing = [f for f in ("config.yaml", "oof.csv", "eval_probs.csv") if not (final / f).is_file()]
        if missing:
            problems.append(f"{task}={specs[task]}: {final} has no {', '.join(missing)} (finalized by an older "
                            f"version: finalize it again)")
            continue
        try:
            part_cfg = _saved(final / "config.yaml")
        except InputError as e:
            problems += [f"{task}={specs[task]}: {q}" for q in e.problems]
            continue
        if part_cfg.model.task not in (task, "all"):
            problems.append(f"{task}={specs[task]}: {final} is a {part_cfg.model.task} model, not a {task} or an "
                            f"18-class one")
            continue
        parts[task] = Part(task, specs[task], final, part_cfg, pd.read_csv(final / "oof.csv"),
                           pd.read_csv(final / "eval_probs.csv"))
    problems += _mismatches(parts)
    if problems:
        raise InputError(problems)
    return parts


def _saved(path: Path) -> Config:
    """A finalize's saved config as written: its files (weights, corrections) are not needed to combine."""
    import yaml

    tree = yaml.safe_load(path.read_text()) or {}
    return config_mod.apply(settings.StudyConfig(), {f"{s}.{k}": v for s, sub in tree.items() for k, v in sub.items()},
                            where=str(path))


def _mismatches(parts: dict[str, Part]) -> list[str]:
    """Where the parts differ in what makes their rows the same images, labels and folds."""
    if len(parts) < 2:
        return []
    first, *others = parts.values()
    out = []
    for p in others:
        a, b = config_mod.flat(first.cfg), config_mod.flat(p.cfg)
        diff = [f"{k} {a[k]!r} vs {b[k]!r}" for k in _SAME if a[k] != b[k]]
        if diff:
            out.append(f"{first.task}={first.name} and {p.task}={p.name} differ in {', '.join(diff)}")
            continue
        fa, fb = first.oof.set_index("path")["fold"], p.oof.set_index("path")["fold"]
        if set(fa.index) != set(fb.index) or not fa.reindex(fb.index).eq(fb).all():
            out.append(f"{first.task}={first.name} and {p.task}={p.name} used different folds "
                       f"(their out-of-fold images or fold numbers differ: finalize both with the same finalize.folds)")
        if set(first.eval["ImageID"]) != set(p.eval["ImageID"]):
            out.append(f"{first.task}={first.name} and {p.task}={p.name} predicted different eval images")
    return out


def scores(labels: np.ndarray, probs: np.ndarray) -> dict:
    """Out-of-fold figures of 18-class probabilities: macro F1, per class, per task, per age band."""
    from maskclf import metrics

    from maskclf.ensemble import task_f1

    s = metrics.scores(probs, labels)
    per_class = metrics.per_class_f1(labels, probs.argmax(1)).round(4).tolist()
    return {"oof_f1": s["val_f1"], "oof_acc": s["val_acc"], **{f"{t}_acc": s[f"{t}_acc"] for t in tasks.PARTS},
            "task_f1": task_f1(labels, probs), "band_f1": dict(zip(AGE_NAMES, (s[b] for b in metrics.BANDS))),
            "per_class_f1": dict(zip(tasks.class_names("all"), per_class)), "images": int(len(labels))}


def combine(cfg: Config, parts: dict[str, Part], out: Path, log: Callable[[str], None] = print) -> dict:
    """Write the combination's files to ``out`` (a new folder); returns what metrics.json holds."""
    from maskclf import analysis, data, metrics, predict

    base = parts["mask"].oof[["person", "path", "fold"]]
    truth, probs = [], []
    for task in tasks.PARTS:
        table = parts[task].oof.set_index("path").reindex(base["path"])
        labels = table["label"].to_numpy(np.int64)
        truth.append(labels if parts[task].cfg.model.task == task else tasks.targets(labels, task))
        probs.append(parts[task].probs(table))
    labels, oof = encode(*truth), tasks.combine(*probs)
    m = {"sources": {t: {"study": p.name, "final_dir": str(p.final), "task": p.cfg.model.task,
                         "backbone": p.cfg.model.backbone} for t, p in parts.items()}, **scores(labels, oof)}
    table = base.reset_index(drop=True).assign(label=labels, pred=oof.argmax(1), prob=oof.max(1).round(5))
    table = pd.concat([table, pd.DataFrame(oof.round(5), columns=[f"p{c}" for c in range(oof.shape[1])])], axis=1)
    table.to_csv(out / "oof.csv", index=False)
    ids = parts["mask"].eval["ImageID"]
    ev = tasks.combine(*(parts[t].probs(parts[t].eval.set_index("ImageID").reindex(ids)) for t in tasks.PARTS))
    eval_table = pd.DataFrame({"image_id": ids})
    predict.write_probs(eval_table, ev, out / "eval_probs.csv")
    root = Path(cfg.data.root).expanduser()
    predict.write_submission(eval_table, ev, root / "eval" / "info.csv", out / "submission.csv")
    answers = data.read_answers(root)
    if answers is not None:
        y = answers.reindex(ids.to_numpy())
        known = y.notna().to_numpy()
        y = y[known].to_numpy().astype(np.int64)
        m["eval_f1"] = metrics.macro_f1(y, ev[known].argmax(1))
        m["eval_task_f1"] = {t: metrics.macro_f1(tasks.targets(y, t), tasks.targets(ev[known].argmax(1), t))
                             for t in tasks.PARTS}
    title = f"mask={parts['mask'].name} · gender={parts['gender'].name} · age={parts['age'].name}"
    predict.save_confusion(labels, oof.argmax(1), out / "confusion_matrix.png",
                           f"{title}: out-of-fold confusion ({len(labels)} images, macro F1 {m['oof_f1']:.3f})")
    analysis.save_per_class_f1(labels, oof.argmax(1), out / "per_class_f1.png", f"{title}: out-of-fold per-class F1")
    log(f"combined {title}: out-of-fold macro F1 {m['oof_f1']:.4f} ({len(labels)} images)" +
        (f", eval macro F1 {m['eval_f1']:.4f}" if "eval_f1" in m else ""))
    return m


OUTPUT_FILES = ("submission.csv", "oof.csv", "eval_probs.csv", "confusion_matrix.png", "per_class_f1.png",
                "metrics.json")


@contextlib.contextmanager
def _removed_on_error(folder: Path):
    """``folder`` deleted when the block fails: a half-written combination is never left behind."""
    try:
        yield
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def out_dir(cfg: Config) -> Path:
    """``<run.dir>/combined``, or the first of ``combined-2``, ``combined-3``, ... that does not exist."""
    base, n = config_mod.run_dir(cfg) / "combined", 1
    while (base if n == 1 else base.with_name(f"combined-{n}")).exists():
        n += 1
    return base if n == 1 else base.with_name(f"combined-{n}")


def run(cfg: Config, specs: dict[str, str], *, log: Callable[[str], None] = print) -> dict:
    """Combine the finalized studies ``specs`` (task -> STUDY); returns what metrics.json holds."""
    from search.tracking import registry
    from search.tracking import Tracker, tracking_uri

    parts = load_parts(cfg, specs)
    tracker = Tracker(tracking_uri(cfg), EXPERIMENT)  # a bad tracking store fails before any work
    out = out_dir(cfg)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    params = {**{t: p.name for t, p in parts.items()}, **{f"{t}_final": str(p.final) for t, p in parts.items()},
              **{f"{t}_task": p.cfg.model.task for t, p in parts.items()}}
    name = "combine · " + " · ".join(f"{t}={p.name}" for t, p in parts.items())
    run_id = tracker.start("combine", name, key=out.name, params=params, reuse=False)
    with tracker.ending(run_id), _removed_on_error(tmp):
        m = combine(cfg, parts, tmp, log)
        tracker.log_metrics(run_id, {k: v for k, v in m.items() if isinstance(v, float)})
        tracker.log_metrics(run_id, {f"{t}_f1": v for t, v in m["task_f1"].items()})
        ckpts = {t: {int(d.name.removeprefix("fold")): d / "checkpoint" for d in (p.final / "folds").glob("fold*")}
                 for t, p in parts.items()}
        m["model_version"] = registry.register_combined(
            tracker.uri, run_id, EXPERIMENT, ckpts, tta={t: p.cfg.finalize.tta for t, p in parts.items()},
            tags={"oof_f1": f"{m['oof_f1']:.4f}", "combined_dir": str(out)})
        (tmp / "metrics.json").write_text(json.dumps(m, indent=2) + "\n")
        tmp.rename(out)
        for f in OUTPUT_FILES:
            tracker.log_artifact(run_id, out / f)
        tracker.set_tags(run_id, {"combined_dir": str(out)})
    log(f"outputs in {out}; model models:/{EXPERIMENT}@{registry.ALIAS} (version {m['model_version']}); "
        f"browse: {tracker.ui_command()}")
    return m


def split_args(items: list[str]) -> tuple[dict[str, str], list[str]]:
    """``mask=a gender=b age=c train.x=1`` -> ({task: STUDY}, [config overrides])."""
    specs, overrides, problems = {}, [], []
    for item in items:
        key, sep, value = item.partition("=")
        if key in tasks.PARTS:
            if not value.strip():
                problems.append(f"{item}: name a study after {key}=")
            elif key in specs:
                problems.append(f"{key}= is given twice")
            specs[key] = value.strip()
        else:
            overrides.append(item)
    if problems:
        raise InputError(problems)
    return specs, overrides


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m search.combine",
        description="Multiply the finalized mask, gender and age ensembles into the 18 classes: out-of-fold scores, "
                    "the submission and a registered MLflow model (models:/combined@champion).")
    p.add_argument("--config", default=str(config_mod.DEFAULT_CONFIG), help="YAML config (default: %(default)s)")
    p.add_argument("items", nargs="*", metavar="mask=STUDY gender=STUDY age=STUDY [key=value]",
                   help="the three studies (names in run.dir, or folders), then dotted config overrides")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    specs, overrides = split_args(args.items)
    cfg = settings.load(args.config, overrides)
    run(cfg, specs, log=lambda s: print(s, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
