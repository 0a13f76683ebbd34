"""The names a config may use, as the modules that implement them know them; timm's names from the cache file."""

import json

import numpy as np
import pytest
import timm
import timm.optim

from maskclf import losses, metrics, vocab


def test_every_loss_name_is_a_loss_and_every_loss_has_a_name():
    assert sorted(vocab.LOSSES) == sorted(losses.LOSSES)


def test_timm_names_are_timms_and_are_kept_in_a_file_per_timm_version(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    names = vocab.timm_names()
    assert names == {"models": sorted(timm.list_models()), "optimizers": sorted(timm.optim.list_optimizers())}
    (cached,) = (tmp_path / "maskclf").glob("timm-*.json")
    assert cached.name == f"timm-{timm.__version__}.json" and json.loads(cached.read_text()) == names
    # the next check reads the file
    cached.write_text(json.dumps({"models": ["listed_only_here"], "optimizers": ["opt_only_here"]}))
    assert vocab.backbone_problem("listed_only_here") is None
    assert vocab.optimizer_names() == ["opt_only_here"]


def test_a_backbone_missing_from_the_cached_list_is_asked_of_timm(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    vocab.timm_names()
    (cached,) = (tmp_path / "maskclf").glob("timm-*.json")
    cached.write_text(json.dumps({"models": ["resnet34"], "optimizers": []}))
    assert vocab.backbone_problem("resnet18") is None  # not in the file, but timm builds it
    assert vocab.backbone_problem("resnet18.a1_in1k") is None  # a pretrained tag, as timm.is_model
    assert vocab.backbone_problem("convnext_tiny_in22ft1k") is None  # a deprecated alias timm still builds
    assert vocab.backbone_problem("resnet_18") == "unknown timm backbone 'resnet_18'; closest: resnet34"


def test_an_unreadable_or_unwritable_cache_only_costs_the_import(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "maskclf").mkdir()
    (tmp_path / "maskclf" / f"timm-{timm.__version__}.json").write_text("{not json")
    assert "resnet18" in vocab.timm_names()["models"]  # and the file is written anew
    assert "resnet18" in json.loads((tmp_path / "maskclf" / f"timm-{timm.__version__}.json").read_text())["models"]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "maskclf" / f"timm-{timm.__version__}.json"))  # a file
    assert "resnet18" in vocab.timm_names()["models"] and vocab.backbone_problem("resnet18") is None


@pytest.mark.parametrize("seed", range(5))
def test_f1_scores_match_scikit_learns(seed):
    from sklearn.metrics import confusion_matrix, f1_score

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 12, 300)  # classes 12..17 never occur; some of 0..11 may be missing from either array
    p = np.where(rng.random(300) < 0.4, y, rng.integers(0, 14, 300))
    assert metrics.macro_f1(y, p) == pytest.approx(f1_score(y, p, average="macro"))
    assert metrics.per_class_f1(y, p) == pytest.approx(f1_score(y, p, labels=list(range(18)), average=None,
                                                                 zero_division=0))
    assert (metrics.confusion(y, p) == confusion_matrix(y, p, labels=list(range(18)))).all()
