import subprocess
import sys
from pathlib import Path

import pytest

from maskclf import config
from maskclf.errors import InputError
from search.study import settings

ROOT = Path(__file__).resolve().parent.parent

CONF = Path(__file__).resolve().parent.parent / "conf"


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_file_loads(path):
    cfg = settings.load(path)
    assert cfg.train.epochs > 0
    for key in cfg.search.space:
        assert key in config.keys(cfg), f"{path.name}: search space key {key} is not a config key"
    core = config.load(path)  # the core's own commands read the same files: the search's sections are left out
    assert type(core) is config.Config and not hasattr(core, "search") and core.train == cfg.train


def test_the_core_leaves_the_search_sections_to_the_search_layer_but_not_a_typo_of_its_own():
    cfg = config.load(CONF / "smoke.yaml", ["search.num_samples=3", "tracking.uri=x", "distill.alias=quick"])
    assert not hasattr(cfg, "search") and cfg.distill.temperature == 2.0 and not hasattr(cfg.distill, "alias")
    with pytest.raises(InputError) as e:
        config.load(CONF / "smoke.yaml", ["trian.lr=1", "model.pretrained=maybe", "distill.alpah=1", "train.lrate=1"])
    assert e.value.problems == ["unknown key 'trian.lr' (did you mean train.lr?) in command line",
                                "model.pretrained must be true or false, got 'maybe' in command line",
                                "unknown key 'distill.alpah' (did you mean distill.alpha, distill.temperature?) in "
                                "command line",
                                "unknown key 'train.lrate' (did you mean train.lr, train.decay_rate, train.amp?) in "
                                "command line"]
    with pytest.raises(InputError, match=r"unknown key 'serch.num_samples' \(did you mean search.num_samples\?\)"):
        settings.load(CONF / "smoke.yaml", ["serch.num_samples=3"])


def test_overrides_are_typed():
    cfg = config.load(CONF / "smoke.yaml", ["train.lr=3e-4", "train.epochs=3", "model.pretrained=true",
                                            "run.dir=/tmp/x", "run.study=123"])
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 3 and cfg.model.pretrained is True
    assert cfg.run.dir == "/tmp/x" and cfg.run.study == "123"


def test_every_bad_key_and_value_reported_at_once():
    with pytest.raises(InputError) as e:
        settings.load(CONF / "smoke.yaml", ["train.lrr=1", "train.epochs=two", "model.backbone=resnet1800",
                                          "train.optimizer=adamx", "nosection.x=1", "train.pretrained=true"])
    msg = e.value.message()
    assert "unknown key 'train.lrr'" in msg and "did you mean train.lr" in msg
    assert "train.epochs must be an integer" in msg
    assert "unknown key 'nosection.x'" in msg
    assert "did you mean model.pretrained" in msg


def test_search_settings_are_checked_together():
    with pytest.raises(InputError) as e:
        settings.load(CONF / "smoke.yaml", ["search.stopped_trials=killed", "search.brackets=0", "train.lr=-1"])
    msg = e.value.message()
    assert "search.stopped_trials" in msg and "complete" in msg and "pruned" in msg
    assert "search.brackets must be >= 1, got 0" in msg
    assert "train.lr must be > 0, got -1" in msg  # the core's checks and the search layer's, in one message
    cfg = settings.load(CONF / "smoke.yaml", ["search.stopped_trials=pruned", "search.brackets=3"])
    assert (cfg.search.stopped_trials, cfg.search.brackets) == ("pruned", 3)


def test_bad_names_suggest_closest():
    with pytest.raises(InputError) as e:
        config.load(CONF / "smoke.yaml", ["model.backbone=resnet1800", "train.optimizer=adamx", "train.loss=focall"])
    msg = e.value.message()
    assert "unknown timm backbone 'resnet1800'" in msg and "resnet18" in msg
    assert "train.optimizer: unknown 'adamx'" in msg
    assert "train.loss: unknown 'focall'" in msg and "focal" in msg


def test_unknown_key_in_yaml_names_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lrate: 0.1\n")
    with pytest.raises(InputError, match=r"unknown key 'train.lrate'.*c.yaml"):
        config.load(p)


def test_save_and_load_roundtrip(tmp_path):
    cfg = settings.load(CONF / "search.yaml", ["train.lr=0.05", "data.age_old=58", "search.storage_path=tune"])
    again = settings.load(config.save(cfg, tmp_path / "c.yaml"))
    assert again == cfg and again.search.storage_path == str(Path("tune").absolute())
    core = config.load(CONF / "search.yaml", ["train.lr=0.05"])
    assert config.load(config.save(core, tmp_path / "core.yaml")) == core


def test_apply_dotted_values_copies():
    cfg = config.load(CONF / "smoke.yaml")
    new = config.apply(cfg, {"train.lr": 0.1, "model.head": "joint"})
    assert new.train.lr == 0.1 and new.model.head == "joint" and cfg.model.head == "multitask"


@pytest.mark.integration
def test_cli_config_error_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "maskclf.train", "--config", str(CONF / "smoke.yaml"),
                        "train.lrr=1", "train.epochs=x", f"run.dir={tmp_path}"], capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.lrr" in lines[0] and "train.epochs" in lines[0]
    assert "Traceback" not in r.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.integration
def test_maskclf_imports_no_search_frameworks():
    code = ("import sys, maskclf.train, maskclf.engine, maskclf.dataset, maskclf.demo, maskclf.ensemble, maskclf.faces, maskclf.predict;"
            "bad = [m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.integration
def test_checking_a_config_imports_neither_torch_nor_timm_nor_albumentations(tmp_path, monkeypatch):
    """What every command does first costs no torch import (seconds of CPU), once timm's names are cached."""
    from maskclf import vocab

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    vocab.timm_names()  # the first check on a machine writes timm's names (this process has timm loaded anyway)
    code = ("import sys; from maskclf import config; from search.study import settings\n"
            "for path in sys.argv[1:]:\n"
            "    assert config.value_problems(settings.load(path)) == [], path\n"
            "bad = [m for m in ('torch', 'timm', 'albumentations', 'sklearn') if m in sys.modules]; "
            "print(bad); sys.exit(bool(bad))")
    confs = [str(ROOT / "conf" / name) for name in ("smoke.yaml", "search.yaml")]
    r = subprocess.run([sys.executable, "-c", code, *confs], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
