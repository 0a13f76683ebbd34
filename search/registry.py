"""The finalized fold ensemble as one MLflow model, registered under the study's name.

Contract of the registered model (``mlflow.pyfunc.load_model("models:/<study>@champion")``):
``predict`` takes a list of image file paths (or a one-column pandas DataFrame of them, which
MLflow turns into that list) and returns a list of 18-class labels (ints 0..17), one per path.
It crops the face itself with the crop settings the folds were trained on, then soft-votes
the fold models (with flip TTA when finalize used it).

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
import torch

from maskclf import config as config_mod
from maskclf import engine, predict

ALIAS = "champion"
# "Models from code": MLflow stores this script, not a pickle, and runs it when loading.
_MODEL_CODE = """import mlflow
from search.registry import EnsembleModel

mlflow.models.set_model(EnsembleModel())
"""
_REQUIREMENTS = ("mlflow", "torch", "torchvision", "timm", "albumentations", "opencv-python-headless",
                 "facenet-pytorch", "numpy", "pandas", "pillow", "pyyaml", "scikit-learn", "cloudpickle")


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """Soft-voting ensemble of fold checkpoints (artifacts ``fold0``, ``fold1``, ...) on image files."""

    def load_context(self, context) -> None:
        conf = context.model_config or {}
        self.device = str(engine.resolve_device(conf.get("device", "auto")))
        self.tta = bool(conf.get("tta", True))
        names = sorted(context.artifacts, key=lambda n: int(n.removeprefix("fold")))
        self.members = predict.load_ensemble([context.artifacts[n] for n in names], self.device)

    def predict(self, context, model_input: list[str], params: dict[str, Any] | None = None) -> list[int]:
        """Labels 0..17 for a list of image file paths."""
        if not model_input:
            return []
        images = [predict.read_rgb(p) for p in model_input]
        # every fold was trained on the same crop settings; the first fold's config holds them
        crops = predict.crop_images(images, self.members[0][1], self.device)
        probs = predict.predict_crops(self.members, crops, tta=self.tta, device=self.device)
        return [int(v) for v in probs.argmax(1)]


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
    # training-only file references would make the config invalid on a machine without them
    cfg = config_mod.load(checkpoint / "config.yaml", {"data.corrections": "", "model.pretrained": False,
                                                       "model.pretrained_file": ""})
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
             tags: dict[str, Any] | None = None) -> int:
    """Log the ensemble of ``checkpoints`` (fold -> checkpoint dir) as model ``model`` of run ``run_id``,
    register it as a new version of ``name`` with alias ``champion``; returns the version."""
    from mlflow import MlflowClient

    staging = Path(tempfile.mkdtemp(prefix="maskclf-model-"))
    try:
        artifacts = {}
        for k, ckpt in sorted(checkpoints.items()):
            _slim_copy(Path(ckpt), staging / f"fold{k}")
            artifacts[f"fold{k}"] = str(staging / f"fold{k}")
        (staging / "ensemble_model.py").write_text(_MODEL_CODE)
        with _mlflow_uris(uri), mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(staging / "ensemble_model.py"), artifacts=artifacts,
                model_config={"tta": tta, "device": "auto"}, pip_requirements=_requirements(),
                registered_model_name=name,
            )
        version = int(info.registered_model_version)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.set_registered_model_alias(name, ALIAS, str(version))
        for k, v in (tags or {}).items():
            client.set_model_version_tag(name, str(version), k, str(v))
        return version
    finally:
        shutil.rmtree(staging, ignore_errors=True)
