"""The finalized fold ensemble as one MLflow model, registered under the study's name; and the
combination of a mask, a gender and an age ensemble (``search.combine``), registered as ``combined``.

Contract of the registered models (``mlflow.pyfunc.load_model("models:/<study>@champion")``):
``predict`` takes photos: a list of base64 strings of JPEG or PNG bytes (what ``mlflow models serve`` is sent as
``{"inputs": [...]}``), of the bytes themselves from Python, or a one-column pandas DataFrame of either. It returns
a DataFrame with a row per photo: ``label`` (an 18-class label 0..17, or for a task study's ensemble its task's:
mask 0..2, gender 0..1, age 0..2), ``class`` (``wear/female/<30``, or the task's class) and ``probability``. A bad
photo is an MlflowException naming every bad photo of the request (400 when served). The model never opens a file
it is sent; a Python caller that predicts on image files says so when it loads the model:
``mlflow.pyfunc.load_model(uri, model_config={"paths": True})`` makes the strings paths.
It crops the face itself with the crop settings the folds were trained on, then soft-votes
the fold models (with flip TTA when finalize used it). The combined model soft-votes each task's
folds and multiplies the three tasks' probabilities into the 18 classes.

Loading needs the ``maskclf`` package (which holds ``search``) installed: it is not on PyPI,
so it is not in the model's pip requirements, which pin the rest of the environment.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException

from maskclf import config as config_mod
from maskclf import engine, inputs, photos, predict, tasks
from maskclf.errors import InputError
from search.study.settings import CHAMPION

ALIAS = CHAMPION
# "Models from code": MLflow stores this script, not a pickle, and runs it when loading.
_MODEL_CODE = """import mlflow
from search.tracking.registry import {cls}

mlflow.models.set_model({cls}())
"""
_REQUIREMENTS = ("mlflow", "torch", "torchvision", "timm", "albumentations", "opencv-python-headless",
                 "facenet-pytorch", "onnxruntime", "numpy", "pandas", "pillow", "pyyaml", "cloudpickle")


class _Photos(mlflow.pyfunc.PythonModel):
    """Photos in (base64 or bytes; file paths when loaded with ``paths``), answers out."""

    def _settings(self, context) -> dict:
        conf = context.model_config or {}
        self.device = str(inputs.resolve_device(conf.get("device", "auto")))
        self.paths = bool(conf.get("paths", False))
        return conf

    def _images(self, model_input: Any) -> list:
        try:
            return photos.decode_all(photos.as_list(model_input), paths=self.paths)
        except InputError as e:  # one line, no stack trace: HTTP 400 from MLflow's scoring server
            raise MlflowException.invalid_parameter_value(e.message()) from None

    def probabilities(self, images: list) -> tuple[Any, str]:
        raise NotImplementedError

    def predict(self, context, model_input: pd.DataFrame, params=None):
        """A DataFrame with a row per photo of ``model_input`` (a list, or a one-column DataFrame): ``label``,
        ``class``, ``probability``. MLflow builds no input schema from a DataFrame hint (one from a list hint
        would refuse bytes), and warns on every import of a predict without hints."""
        images = self._images(model_input)
        if not images:
            return predict.answers(np.zeros((0, 18)))
        probs, task = self.probabilities(images)
        return predict.answers(probs, task)


class EnsembleModel(_Photos):
    """Soft-voting ensemble of fold checkpoints (artifacts ``fold0``, ``fold1``, ...)."""

    def load_context(self, context) -> None:
        self.tta = bool(self._settings(context).get("tta", True))
        names = sorted(context.artifacts, key=lambda n: int(n.removeprefix("fold")))
        self.members = predict.load_ensemble([context.artifacts[n] for n in names], self.device)

    def probabilities(self, images: list) -> tuple[Any, str]:
        # every fold was trained on the same crop settings; the first fold's config holds them
        crops = predict.crop_images(images, self.members[0][1], self.device)
        probs = predict.predict_crops(self.members, crops, tta=self.tta, device=self.device)
        return probs, self.members[0][0].task


class CombinedModel(_Photos):
    """A mask, a gender and an age ensemble (artifacts ``mask_fold0``, ``gender_fold0``, ...) multiplied into the
    18 classes. A part may be an 18-way ensemble, whose probabilities are summed down to its task."""

    def load_context(self, context) -> None:
        self.tta = self._settings(context).get("tta", {})
        self.parts = {}
        for task in tasks.PARTS:
            names = sorted((n for n in context.artifacts if n.startswith(f"{task}_fold")),
                           key=lambda n: int(n.rpartition("fold")[2]))
            self.parts[task] = predict.load_ensemble([context.artifacts[n] for n in names], self.device)

    def probabilities(self, images: list) -> tuple[Any, str]:
        crops: dict[tuple, Any] = {}  # the parts may crop faces differently: each setting once
        probs = {}
        for task, members in self.parts.items():
            f = members[0][1].faces
            key = (f.method, f.size, f.margin)
            if key not in crops:
                crops[key] = predict.crop_images(images, members[0][1], self.device)
            p = predict.predict_crops(members, crops[key], tta=bool(self.tta.get(task, True)), device=self.device)
            probs[task] = tasks.as_task(p, members[0][0].task, task)
        return tasks.combine(probs["mask"], probs["gender"], probs["age"]), "all"


def _requirements() -> list[str]:
    """Pinned from this environment, so MLflow neither infers them (it would load the model in a
    subprocess) nor resolves anything over the network."""
    out = []
    for dist in _REQUIREMENTS:
        try:
            out.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return out


def _slim_copy(checkpoint: Path, dest: Path) -> None:
    """Weights and config only: the optimizer state would double or triple the model's size."""
    dest.mkdir(parents=True)
    state = engine.load_state(checkpoint)
    torch.save({"model": state["model"], "epoch": state["epoch"], "history": state["history"]}, dest / engine.STATE_FILE)
    cfg = config_mod.load_saved(checkpoint / "config.yaml")  # valid on a machine without the training files
    config_mod.save(cfg, dest / "config.yaml")


@contextlib.contextmanager
def _mlflow_uris(uri: str) -> Iterator[None]:
    """Point MLflow's global (fluent) API at ``uri`` for the block, then put back what was there.

    ``set_tracking_uri`` / ``set_registry_uri`` also write MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI,
    which tracking_uri() reads: restoring the cwd-relative default would redirect later runs.
    """
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    saved = {k: os.environ.get(k) for k in keys}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # local copies need no progress bars
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # None unsets it, as if never set
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def register(uri: str, run_id: str, name: str, checkpoints: dict[int, Path], *, tta: bool,
             tags: dict[str, Any] | None = None, alias: str = ALIAS) -> int:
    """Log the ensemble of ``checkpoints`` (fold -> checkpoint dir) as model ``model`` of run ``run_id``,
    register it as a new version of ``name`` with ``alias`` (``champion``; a distilled student has its own);
    returns the version."""
    return _register(uri, run_id, name, {f"fold{k}": c for k, c in checkpoints.items()}, "EnsembleModel",
                     {"tta": tta, "device": "auto", "paths": False}, tags, alias)


def register_combined(uri: str, run_id: str, name: str, parts: dict[str, dict[int, Path]], *,
                      tta: dict[str, bool], tags: dict[str, Any] | None = None) -> int:
    """Log the combination of a mask, a gender and an age ensemble (``parts``: task -> fold -> checkpoint dir)
    as model ``model`` of run ``run_id``, register it as a new version of ``name`` with alias ``champion``;
    returns the version."""
    artifacts = {f"{task}_fold{k}": c for task, ckpts in parts.items() for k, c in ckpts.items()}
    return _register(uri, run_id, name, artifacts, "CombinedModel", {"tta": tta, "device": "auto", "paths": False},
                     tags)


def _register(uri: str, run_id: str, name: str, checkpoints: dict[str, Path], cls: str, model_config: dict,
              tags: dict[str, Any] | None, alias: str = ALIAS) -> int:
    from mlflow import MlflowClient

    staging = Path(tempfile.mkdtemp(prefix="maskclf-model-"))
    try:
        artifacts = {}
        for key, ckpt in sorted(checkpoints.items()):
            _slim_copy(Path(ckpt), staging / key)
            artifacts[key] = str(staging / key)
        (staging / "ensemble_model.py").write_text(_MODEL_CODE.format(cls=cls))
        with _mlflow_uris(uri), mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(staging / "ensemble_model.py"), artifacts=artifacts,
                model_config=model_config, pip_requirements=_requirements(),
                registered_model_name=name,
            )
        version = int(info.registered_model_version)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.set_registered_model_alias(name, alias, str(version))
        for k, v in (tags or {}).items():
            client.set_model_version_tag(name, str(version), k, str(v))
        return version
    finally:
        shutil.rmtree(staging, ignore_errors=True)
