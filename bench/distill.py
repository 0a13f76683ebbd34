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

from maskclf import config, dataset, engine
from maskclf.errors import InputError, cli
from search.experiment import study_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_row, machine  # noqa: E402
from inference import ensemble, measure  # noqa: E402

SECTION = "Distillation: one student against its fold ensemble, eval macro F1 and images/s"
HEADER = ["date", "machine", "model", "eval F1", "of the ensemble's", "JPEG+crop b1", "JPEG+crop b64", "crops b1",
          "crops b64", "command"]


def _done(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def models(study: Path) -> list[dict]:
    """What to measure: the plain ensemble (``final``), any pseudo-label ensembles, the plain ensemble's fold
    model that each student is compared with, and the students; each with its checkpoints, TTA and eval F1."""
    plain = study / "final"
    if not (plain / "metrics.json").is_file():
        raise InputError(f"{plain} is not a finished finalize: run `python -m search.finalize` first")
    m = _done(plain)
    ckpts = [plain / "folds" / f"fold{k}" / "checkpoint" for k in m["folds"]]
    out = [{"name": f"ensemble of {len(ckpts)} ({plain.name})", "ckpts": ckpts, "tta": m["tta"],
            "eval_f1": m.get("eval_f1"), "measure": True}]
    for d in sorted(p for p in study.glob("final-*") if (p / "metrics.json").is_file()):
        dm = _done(d)
        if "pseudo" in dm:  # the same networks: its speed is the plain ensemble's
            p = dm["pseudo"]
            out.append({"name": f"ensemble of {len(dm['folds'])} + {p['taken']} pseudo-labelled eval images "
                                f"({d.name}, threshold {p['threshold']})", "eval_f1": dm.get("eval_f1"), "measure": False})
    students = sorted(p for p in study.glob("distill*") if (p / "metrics.json").is_file())
    for k in sorted({_done(s)["fold"] for s in students}):
        if k in m["folds"]:
            ckpt = ckpts[m["folds"].index(k)]
            out.append({"name": f"one fold model (fold {k} of {plain.name})", "ckpts": [ckpt], "tta": m["tta"],
                        "eval_f1": m["eval_f1_folds"][m["folds"].index(k)], "measure": True})
            if m["tta"]:  # the student's own setting: its eval F1 is scored here
                out.append({"name": f"one fold model (fold {k} of {plain.name}), no TTA", "ckpts": [ckpt],
                            "tta": False, "eval_f1": None, "measure": True, "score": True})
    for s in students:
        sm = _done(s)
        out.append({"name": f"student ({s.name}: {sm['backbone']} {sm['image_size']}px, taught by {sm['source']})",
                    "ckpts": [s / "folds" / f"fold{sm['fold']}" / "checkpoint"], "tta": False,
                    "eval_f1": sm.get("eval_f1"), "measure": True})
    return out


def _eval_f1(ckpt: Path, prep, cfg: config.Config) -> float:
    """Eval macro F1 of one checkpoint without flip TTA, on every eval image with an answer."""
    from maskclf import metrics, predict, tasks

    device = str(engine.resolve_device(cfg.train.device))
    net, ck_cfg = engine.load_model(ckpt, device)
    probs = predict.model_probs(net, ck_cfg, prep.eval_crops.images, tta=False, device=device)
    y = prep.answers.reindex(prep.eval["image_id"].to_numpy())
    known = y.notna().to_numpy()
    return metrics.macro_f1(tasks.targets(y[known].to_numpy().astype(np.int64), ck_cfg.model.task),
                            probs[known].argmax(1))


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(config.DEFAULT_CONFIG))
    p.add_argument("--quick", action="store_true", help="64 eval images")
    p.add_argument("--images", type=int, default=256, help="eval images to predict (default 256)")
    p.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")), help="where the rows go")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = config.load(args.config, args.overrides)
    todo = models(study_dir(cfg))
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    prep = dataset.prepare(cfg, need_eval=True, log=lambda s: print(s, file=sys.stderr), progress=False)
    n = min(64 if args.quick else args.images, len(prep.eval))
    paths, crops = prep.eval["path"].iloc[:n].tolist(), np.asarray(prep.eval_crops.images[:n])
    base = todo[0]["eval_f1"]
    print(f"{n} eval images, {str(engine.resolve_device(cfg.train.device))}, {torch.get_num_threads()} thread(s)")
    print(f"  {'':90}{'eval F1':>8}{'JPEG b1':>9}{'JPEG b64':>9}{'crops b1':>9}{'crops b64':>10}")
    cmd = "python bench/distill.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for t in todo:
        if t.get("score") and prep.answers is not None:
            t["eval_f1"] = _eval_f1(t["ckpts"][0], prep, cfg)
        cells = ["(as the ensemble)"] * 4
        if t["measure"]:
            r = measure(ensemble(t["ckpts"], config.apply(cfg, {"finalize.tta": t["tta"]})), paths, crops)
            cells = [f"{r[(w, b)]:.1f}/s" for w in ("jpegs", "crops") for b in (1, 64)]
        f1 = t["eval_f1"]
        share = f"{100 * f1 / base:.1f}%" if f1 is not None and base else "-"
        name = t["name"] + (" / flip TTA" if t.get("tta") else "")
        print(f"  {name:90}{(f1 or float('nan')):8.4f}" + "".join(f"{c:>10}" for c in cells))
        append_row(SECTION, HEADER, [str(datetime.date.today()), machine(), name,
                                     "-" if f1 is None else f"{f1:.4f}", share, *cells, f"`{cmd.strip()}`"],
                   args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
