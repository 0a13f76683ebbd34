"""The Ray Tune + Optuna + MLflow layer over the maskclf core (which never imports it).

The commands sit at the top (``python -m search.tune``, ``search.finalize``, ``search.distill``,
``search.combine``); what they share lives in three packages: ``search.study`` (the study's folders, lock, search
space and Optuna database), ``search.cluster`` (Ray: connecting, the Tune experiment, trials, folds and tasks on
the workers) and ``search.tracking`` (MLflow: runs, the Tune-to-MLflow callback, reports, plots, the registry).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# Where a module of an earlier flat layout lives now. Users' saved Tune experiments (a pickled callback,
# searcher and trainable) and registered MLflow models (``from search.registry import EnsembleModel``) name
# the old paths; importing one gives the module at its new place.
MOVED = {f"search.{name}": f"search.{package}.{name}" for package, names in {
    "cluster": ("experiment", "crops", "folds", "predictions", "progress", "private_api"),
    "tracking": ("trial_runs", "reconcile", "writer", "callback", "plots", "report", "registry"),
    "study": ("space", "optuna_search", "optuna_study", "outputs"),
}.items() for name in names}


class _Moved(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    specs: dict = {}

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        module = importlib.import_module(MOVED[spec.name])  # the module itself, not a copy: one set of classes
        self.specs[module.__name__] = module.__spec__  # importlib sets the alias's spec on it; put its own back
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self.specs[module.__name__]


if not any(isinstance(f, _Moved) for f in sys.meta_path):
    sys.meta_path.append(_Moved())

# The config sections this layer declares were once the core's (maskclf.schema.SearchConfig, ...), and a saved Tune
# experiment pickled them under those names: the core's schema module finds them here when such a pickle asks.
MOVED_CLASSES = {"maskclf.schema": ("search.study.settings", ("SearchConfig", "TrackingConfig", "FinalizeConfig",
                                                              "PseudoConfig"))}


def _schema_getattr(name: str):
    new, names = MOVED_CLASSES["maskclf.schema"]
    if name in names:
        return getattr(importlib.import_module(new), name)
    raise AttributeError(f"module 'maskclf.schema' has no attribute '{name}'")


importlib.import_module("maskclf.schema").__getattr__ = _schema_getattr
