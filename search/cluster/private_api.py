"""Every use of a library's private interface, in one place, each with the test that fails the day the library
changes it. Nothing else in the project reaches past a library's public API, with one exception named below.

- :func:`tuner_run_config`: a restored Tuner's run config, replaced in place so that a resumed experiment runs
  with this run's callbacks and stopper (the public ``Tuner.restore`` takes none, and would reuse the ones
  pickled when the experiment started). Ray Tune's ``Tuner._local_tuner``; tests/test_experiment.py.
- :func:`mix_into_trainable`: a class placed before Tune's own in a function trainable's class (how a restore
  from a deleted checkpoint is handled). The ``__mixins__`` attribute ``wrap_function`` reads;
  tests/test_experiment.py.
- :func:`recorded_ray_address`: the address ``ray start`` recorded on this node, and whether that Ray still
  runs. ``ray._private.services``; tests/test_private_api.py and tests/test_side_by_side.py.
- The exception: ``search.study.optuna_search.StudySearch`` subclasses Ray's ``OptunaSearch`` and keeps its state in
  that class's private fields (``_ot_study``, ``_ot_trials``, ``_storage``, ``_study_name``,
  ``_completed_trials``) and Optuna's ``Trial._trial_id``; tests/test_studies.py checks every one of them.
"""

from __future__ import annotations


def tuner_run_config(tuner):
    """The run config a restored ``tune.Tuner`` will run with (to be changed in place)."""
    local = getattr(tuner, "_local_tuner", None)
    if local is None or not hasattr(local, "get_run_config"):
        raise RuntimeError("this Ray version's Tuner has no _local_tuner.get_run_config(): "
                           "search/cluster/private_api.py tuner_run_config needs updating")
    return local.get_run_config()


def mix_into_trainable(trainable_fn, mixin: type):
    """``trainable_fn`` (a function trainable) whose Tune class will have ``mixin`` first in its bases."""
    mixins = tuple(getattr(trainable_fn, "__mixins__", ()))
    if mixin not in mixins:
        trainable_fn.__mixins__ = (mixin, *mixins)
    return trainable_fn


def recorded_ray_address() -> str | None:
    """The address of the Ray that ``ray start`` last started on this node, while it runs; None otherwise."""
    from ray._private import services

    recorded = services.find_bootstrap_address(None)
    if not recorded:
        return None
    services.find_gcs_addresses.cache_clear()
    return recorded if recorded in services.find_gcs_addresses() else None
