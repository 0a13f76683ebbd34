import numpy as np
import pytest
import torch

from maskclf import config, engine, inputs, losses, model, optim
from maskclf.samples import Samples
from maskclf.labels import NUM_CLASSES
from tests.conftest import SMOKE


def _easy_samples(n_per_class=6, size=16, seed=0) -> Samples:
    """Each class a distinct colour pattern plus noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(NUM_CLASSES), n_per_class)
    base = rng.integers(0, 255, (NUM_CLASSES, 1, 1, 3))
    x = np.clip(base[y] + rng.normal(0, 12, (len(y), size, size, 3)), 0, 255).astype(np.uint8)
    return Samples(x, y)


def _cfg(tmp_path, **over):
    values = {"train.epochs": 4, "train.image_size": 16, "train.augment": "none", "train.lr": 0.01,
              "train.batch_size": 32, "train.scheduler": "cosine", "run.dir": str(tmp_path)}
    values.update(over)
    return config.load(SMOKE, values)


def test_short_fit_learns_and_reports_each_epoch(tmp_path):
    cfg = _cfg(tmp_path)
    seen = []
    res = engine.fit(cfg, _easy_samples(), _easy_samples(seed=0), lambda m, d: seen.append((m, d)),
                     out_dir=tmp_path / "run")
    assert [m["epoch"] for m, _ in seen] == [1, 2, 3, 4]
    assert res["history"][-1]["train_loss"] < res["history"][0]["train_loss"]
    assert res["val_f1"] > 0.5  # chance is 1/18
    for key in ("val_f1", "val_loss", "train_loss", "lr", "epoch_time", "images_per_s", "mask_acc", "age_acc"):
        assert key in res
    assert (seen[-1][1] / "state.pt").is_file() and (seen[-1][1] / "config.yaml").is_file()


def test_resume_continues_after_the_last_epoch(tmp_path):
    cfg = _cfg(tmp_path, **{"train.epochs": 2})
    engine.fit(cfg, _easy_samples(), _easy_samples(), out_dir=tmp_path / "run")
    cfg4 = config.apply(cfg, {"train.epochs": 4})
    seen = []
    res = engine.fit(cfg4, _easy_samples(), _easy_samples(), lambda m, d: seen.append(m["epoch"]),
                     out_dir=tmp_path / "run", resume=tmp_path / "run" / "checkpoint")
    assert seen == [3, 4]
    assert [m["epoch"] for m in res["history"]] == [1, 2, 3, 4]


def test_corrupt_checkpoint_starts_over_with_warning(tmp_path):
    cfg = _cfg(tmp_path, **{"train.epochs": 1})
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "state.pt").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        res = engine.fit(cfg, _easy_samples(), _easy_samples(), out_dir=tmp_path / "run", resume=bad)
    assert [m["epoch"] for m in res["history"]] == [1]


def test_missing_checkpoint_starts_over_with_warning(tmp_path):
    cfg = _cfg(tmp_path, **{"train.epochs": 1})
    with pytest.warns(UserWarning, match="unreadable"):
        res = engine.fit(cfg, _easy_samples(), _easy_samples(), out_dir=tmp_path / "run", resume=tmp_path / "gone")
    assert [m["epoch"] for m in res["history"]] == [1]


def test_load_model_predicts_like_the_trained_one(tmp_path):
    cfg = _cfg(tmp_path, **{"train.epochs": 1})
    s = _easy_samples()
    engine.fit(cfg, s, s, out_dir=tmp_path / "run")
    net, cfg2 = engine.load_model(tmp_path / "run" / "checkpoint")
    assert cfg2.model.backbone == cfg.model.backbone
    x = torch.randn(2, 3, 16, 16)
    assert net(x).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_every_loss_trains(tmp_path, name):
    res = engine.fit(_cfg(tmp_path, **{"train.loss": name, "train.epochs": 1}), _easy_samples(), _easy_samples(),
                     out_dir=tmp_path / "run")
    assert np.isfinite(res["train_loss"])


@pytest.mark.parametrize("opt,sched", [("adamw", s) for s in optim.SCHEDULERS] + [("adam", "cosine"), ("sgd", "step")])
def test_optimizers_and_schedulers(tmp_path, opt, sched):
    cfg = _cfg(tmp_path, **{"train.optimizer": opt, "train.scheduler": sched, "train.epochs": 2,
                            "train.warmup_epochs": 0.5, "train.decay_epochs": 1})
    res = engine.fit(cfg, _easy_samples(2), _easy_samples(1), out_dir=tmp_path / "run")
    assert len(res["history"]) == 2 and res["lr"] > 0


@pytest.mark.parametrize("backbone", ["test_resnet", "test_efficientnet", "test_vit", "mobilenetv3_small_050",
                                      "resnet10t", "efficientnet_b0"])
@pytest.mark.parametrize("head", model.HEADS)
def test_backbones_and_heads(backbone, head):
    net = model.create(backbone, head=head, image_size=32)  # ViTs are built for the configured size
    out = net(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, NUM_CLASSES)
    if head == "multitask":  # log-probabilities over the 18 combinations sum to one
        assert torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)


def test_weighted_sampler_and_multitask(tmp_path):
    cfg = _cfg(tmp_path, **{"train.sampler": "weighted", "model.head": "multitask", "train.epochs": 3})
    res = engine.fit(cfg, _easy_samples(), _easy_samples(), out_dir=tmp_path / "run")
    assert res["val_f1"] > 0.3


def test_unknown_backbone_suggests():
    with pytest.raises(ValueError, match="closest: .*resnet18"):
        model.create("resnet1800")


def test_batches_stay_uint8_until_normalised_like_per_sample_normalisation():
    import albumentations as A

    from maskclf import transforms

    images = np.random.default_rng(0).integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    net = model.create("resnet10t", pretrained=False)
    mean, std = model.normalization(net)
    tf = transforms.build("light", size=16, train=True, seed=0)
    batch = next(iter(inputs.make_loader(Samples(images, np.zeros(3, np.int64)), tf, batch_size=3)))[0]
    assert batch.dtype == torch.uint8 and batch.shape == (3, 3, 16, 16)
    norm = A.Normalize(mean=mean, std=std)  # the per-sample float step the pipeline used to run
    ref = np.stack([norm(image=im)["image"] for im in batch.permute(0, 2, 3, 1).numpy()])
    out = inputs.Normalizer(net, torch.device("cpu"))(batch)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), ref.transpose(0, 3, 1, 2), atol=1e-5)
    with pytest.raises(TypeError, match="uint8"):
        inputs.Normalizer(net, torch.device("cpu"))(out)


def test_distill_loss_mixes_the_soft_cross_entropy_at_temperature_with_the_hard_loss():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    y = torch.tensor([0, 2])
    soft = torch.tensor(losses.soften(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]), 2.0))
    hard = torch.nn.CrossEntropyLoss()
    kd = -(soft * (logits / 2).log_softmax(1)).sum(1).mean() * 4
    assert losses.Distill(hard, 2.0, 1.0)(logits, y, soft) == pytest.approx(kd.item())
    assert losses.Distill(hard, 2.0, 0.0)(logits, y, soft) == pytest.approx(hard(logits, y).item())
    assert losses.Distill(hard, 2.0, 0.3)(logits, y, soft) == pytest.approx(0.3 * kd.item() + 0.7 * hard(logits, y).item())
    p = np.array([[0.7, 0.2, 0.1]])
    assert np.allclose(losses.soften(p, 1.0), p) and np.allclose(losses.soften(p, 2.0), np.sqrt(p) / np.sqrt(p).sum())


def test_teacher_targets_soften_the_teachers_scores_and_fall_back_to_labels_where_it_gave_none():
    probs = np.array([[0.7, 0.2, 0.1], [np.nan, np.nan, np.nan], [0.1, 0.1, 0.8], [0.5, np.nan, 0.5]])
    labels = np.array([2, 1, 0, 0])
    soft, missing = losses.teacher_targets(probs, labels, 2.0)
    assert missing.tolist() == [False, True, False, True]
    assert np.allclose(soft[[0, 2]], losses.soften(probs[[0, 2]], 2.0))  # the teacher's own rows: its scores
    assert soft[1].argmax() == 1 and soft[3].argmax() == 0 and soft[1, 1] > 0.99  # the others: their labels
    assert np.allclose(soft.sum(1), 1) and np.isnan(probs[1]).all()  # the caller's array is left as it was


def test_a_student_learns_the_teachers_soft_targets_when_its_hard_labels_are_noise(tmp_path):
    cfg = _cfg(tmp_path, **{"distill.alpha": 1.0, "distill.temperature": 2.0})
    train = _easy_samples()
    teacher = losses.soften(np.eye(NUM_CLASSES)[train.labels] * 0.9 + 0.1 / NUM_CLASSES, 2.0)
    noisy = Samples(train.images, np.random.default_rng(1).permutation(train.labels), teacher)
    res = engine.fit(cfg, noisy, _easy_samples(seed=0), out_dir=tmp_path / "run")
    assert res["val_f1"] > 0.5  # only the soft targets carry the classes
