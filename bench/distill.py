"""A distilled student against its ensemble: eval macro F1 and inference images/s of the ensemble (with and
without the pseudo-label round), one of its fold models and each student of a finished study.

    python bench/distill.py [--config conf/search.yaml] [--images N] [--quick] [--results PATH] [key=value ...]

Reads the study's finished runs as they are (``<run.dir>/<study>/final*/`` and ``distill*/``: run
``python -m search.finalize``, ``python -m search.distill`` first); trains nothing. Eval F1 comes from each
run's metrics.json (the demo's eval answers); images/s are measured as ``bench/inference.py`` measures
them, with the product's own paths: the registered model's ``predict`` from JPEG files (MTCNN crop, then
the models) and ``maskclf.predict.predict_crops`` from the cached crops, at batch 1 and 64. The ensemble
and its fold model use flip TTA when their finalize did; a student never does. Appends one row per model
to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np
import torch

from maskclf import config, dataset, engine, inputs
from maskclf.errors import InputError, cli
from search.cluster.experiment import study_dir
from search.study import settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_row, machine  # noqa: E402
from inference import ensemble, measure  # noqa: E402

SECTION = "Distillation: one student against its fold ensemble, eval macro F1 and images/s"
HEADER = ["date", "machine", "model", "eval F1", "of the ensemble's", "eval task F1 (mask / gender / age)",
          "JPEG+crop b1", "JPEG+crop b64", "crops b1", "crops b64", "command"]


def _done(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def models(study: Path) -> list[dict]:
    """What to score and time: the plain ensemble (``final``), any pseudo-label ensembles, the plain ensemble's
    fold model each student is compared with (as finalize used it, and without flip TTA as a student runs), and
    the students. Each: its checkpoints, TTA, where its eval probabilities are (``probs``: None = compute them)
    and whether to time it (a pseudo-label ensemble has the plain one's networks, so its speed)."""
    plain = study / "final"
    if not (plain / "metrics.json").is_file():
        raise InputError(f"{plain} is not a finished finalize: run `python -m search.finalize` first")
    m = _done(plain)
    ckpts = [plain / "folds" / f"fold{k}" / "checkpoint" for k in m["folds"]]
    out = [{"name": f"ensemble of {len(ckpts)} ({plain.name})", "ckpts": ckpts, "tta": m["tta"],
            "probs": plain / "eval_probs.csv", "measure": True}]
    for d in sorted(p for p in study.glob("final-*") if (p / "metrics.json").is_file()):
        p = _done(d).get("pseudo")
        if p:
            out.append({"name": f"ensemble of {len(_done(d)['folds'])} + {p['taken']} pseudo-labelled eval images "
                                f"({d.name}, threshold {p['threshold']})", "probs": d / "eval_probs.csv",
                        "measure": False})
    students = sorted((p for p in study.glob("distill*") if (p / "metrics.json").is_file()),
                      key=lambda p: int(p.name.rpartition("-")[2]) if "-" in p.name else 1)
    for k in sorted({_done(s)["fold"] for s in students} & set(m["folds"])):
        ckpt = ckpts[m["folds"].index(k)]
        out.append({"name": f"one fold model (fold {k} of {plain.name})", "ckpts": [ckpt], "tta": m["tta"],
                    "probs": None, "measure": True})
        if m["tta"]:
            out.append({"name": f"one fold model (fold {k} of {plain.name}), no TTA", "ckpts": [ckpt], "tta": False,
                        "probs": None, "measure": True})
    timed = set()  # students of one backbone and input size run at one speed: the first is timed
    for s in students:
        sm, sc = _done(s), settings.load_saved(s / "config.yaml")
        if sm["alpha"] == 0:
            taught = f"hard labels only (alpha 0; {sm['source']}'s pseudo-labels)" if sm.get(
                "pseudo_labelled_eval_images") else "hard labels only (alpha 0)"
        else:  # runs that name no targets used out-of-fold ones
            what = "soft vote" if sm.get("targets", "oof") == "ensemble" else "out-of-fold"
            taught = f"{what} of {sm['source']}, T {sm['temperature']:g}"
        out.append({"name": f"student ({s.name}: {sm['backbone']} {sm['image_size']}px, {sc.train.epochs} epochs, "
                            f"seed {sc.train.seed}, {taught})",
                    "ckpts": [s / "folds" / f"fold{sm['fold']}" / "checkpoint"], "tta": False,
                    "probs": s / "eval_probs.csv", "measure": (sm["backbone"], sm["image_size"]) not in timed})
        timed.add((sm["backbone"], sm["image_size"]))
    return out


def eval_probs(t: dict, prep, cfg: config.Config) -> np.ndarray:
    """The model's probabilities of every eval image (in ``prep.eval``'s order): from its run's eval_probs.csv,
    or predicted from its checkpoint as finalize predicts (crops, flip TTA when it used it)."""
    import pandas as pd

    from maskclf import predict

    ids = prep.eval["image_id"].to_numpy()
    if t["probs"] is not None:
        table = pd.read_csv(t["probs"]).set_index("ImageID").reindex(ids)
        return table[[c for c in table.columns if c.startswith("p")]].to_numpy()
    device = str(inputs.resolve_device(cfg.train.device))
    members = predict.load_ensemble(t["ckpts"], device)
    return predict.predict_crops(members, prep.eval_crops.images, tta=t["tta"], device=device)


def scores(probs: np.ndarray, prep) -> tuple[float, dict[str, float]]:
    """Eval macro F1 and each task's macro F1 (18-class probabilities summed down to it), on the answered images."""
    from maskclf import metrics
    from maskclf.ensemble import task_f1

    y = prep.eval_labels()
    known = y >= 0
    y = y[known]
    return metrics.macro_f1(y, probs[known].argmax(1)), task_f1(y, probs[known])


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(config.DEFAULT_CONFIG))
    p.add_argument("--quick", action="store_true", help="64 eval images")
    p.add_argument("--images", type=int, default=256, help="eval images to time (default 256)")
    p.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")), help="where the rows go")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = settings.load(args.config, args.overrides)
    if cfg.model.task != "all":
        raise InputError(f"model.task={cfg.model.task}: bench/distill.py compares 18-class models")
    todo = models(study_dir(cfg))
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    prep = dataset.prepare(cfg, need_eval=True, log=lambda s: print(s, file=sys.stderr), progress=False)
    if prep.answers is None:
        raise InputError(f"{cfg.data.root}: no eval/answers.csv, so no eval F1 to compare")
    n = min(64 if args.quick else args.images, len(prep.eval))
    paths, crops = prep.eval["path"].iloc[:n].tolist(), np.asarray(prep.eval_crops.images[:n])
    print(f"{len(prep.eval)} eval images scored, {n} timed; {inputs.resolve_device(cfg.train.device)}, "
          f"{torch.get_num_threads()} thread(s)")
    cmd = "python bench/distill.py " + " ".join(argv if argv is not None else sys.argv[1:])
    base = None
    for t in todo:
        f1, per_task = scores(eval_probs(t, prep, cfg), prep)
        base = f1 if base is None else base  # the plain ensemble's, first
        cells = ["(as the ensemble)" if t["name"].startswith("ensemble") else "(as the first)"] * 4
        if t["measure"]:
            r = measure(ensemble(t["ckpts"], config.apply(cfg, {"finalize.tta": t["tta"]})), paths, crops)
            cells = [f"{r[(w, b)]:.1f}/s" for w in ("jpegs", "crops") for b in (1, 64)]
        name = t["name"] + (" / flip TTA" if t.get("tta") else "")
        tasks_cell = " / ".join(f"{per_task[k]:.3f}" for k in ("mask", "gender", "age"))
        print(f"  {name}: eval F1 {f1:.4f} ({100 * f1 / base:.1f}%), tasks {tasks_cell}; images/s " + ", ".join(cells))
        append_row(SECTION, HEADER, [str(datetime.date.today()), machine(), name, f"{f1:.4f}",
                                     f"{100 * f1 / base:.1f}%", tasks_cell, *cells, f"`{cmd.strip()}`"], args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
