"""The private interfaces of Ray the project uses (search/cluster/private_api.py), checked against the installed Ray
without starting it: a release that renames one fails here, not in a user's resumed study."""

from __future__ import annotations

import pytest

from search.cluster import private_api


def _train(config):
    return None


def test_a_mixin_comes_first_in_the_class_tune_builds_for_a_function_trainable():
    from ray import tune
    from ray.tune.trainable.function_trainable import FunctionTrainable, wrap_function

    class First:
        def restore(self, checkpoint_path):
            return "mixed in"

    fn = tune.with_parameters(_train, data=1)
    assert private_api.mix_into_trainable(fn, First) is fn
    private_api.mix_into_trainable(fn, First)  # twice: still once
    cls = wrap_function(fn)
    assert cls.__mro__[1] is First and issubclass(cls, FunctionTrainable)
    assert [c for c in cls.__mro__ if c is First] == [First]
    assert cls.restore is First.restore


def test_the_ray_start_address_lookup_is_there():
    from ray._private import services

    assert callable(services.find_bootstrap_address) and callable(services.find_gcs_addresses.cache_clear)
    found = private_api.recorded_ray_address()
    assert found is None or ":" in found


def test_a_tuner_without_the_private_run_config_names_what_to_update():
    class NotATuner:
        pass

    with pytest.raises(RuntimeError, match="_local_tuner"):
        private_api.tuner_run_config(NotATuner())
