"""``experiment=mobilenet_m_paper`` read against Makem, Tamas and Buşoniu (2025): the penalty in the
monitored loss, input scaling, the head (dropout, BatchNorm, dense and its initialization), the
Keras schedule semantics, the crop, the order of the augmentations and the noise table's σ."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from leuk.composition import build_module
from leuk.models.module import Classifier
from leuk.models.registry import create_model
from leuk.preprocess.cell_crop import CellCenterCrop, foreground_box

# Offline: no ImageNet weights (MobileNet_M freezes nothing, so nothing random stays frozen).
OFFLINE = ["model.pretrained=false"]


@pytest.fixture
def paper_cfg(compose_cfg) -> DictConfig:
    return compose_cfg("experiment=mobilenet_m_paper", *OFFLINE)


def paper_classifier(cfg: DictConfig, image_size: int = 32) -> Classifier:
    # What build_module reads from a set-up DataModule, for two classes and no data.
    sized = SimpleNamespace(
        num_classes=2, class_names=["hem", "all"], image_size=image_size, class_weights=None, has_val=True
    )
    return build_module(cfg, sized)


def fixed_batch(n: int = 6, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return x, torch.tensor([0, 1] * (n // 2))


# ---------------------------------------------------------------- the monitored loss
def test_val_loss_includes_the_l1_penalty_as_keras_val_loss_does(paper_cfg) -> None:
    """Keras adds the kernel regularizer to val_loss, which the paper's early stopping and
    ReduceLROnPlateau watch: val/loss is cross-entropy + l1·Σ|W| on the weights as they are."""
    module = paper_classifier(paper_cfg)
    x, y = fixed_batch()
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.validate(module, dataloaders=DataLoader(TensorDataset(x, y), batch_size=len(y)), verbose=False)
    logged = float(trainer.callback_metrics["val/loss"])

    module.eval()
    with torch.no_grad():
        # The network normalizes its 0-255 input itself (its first layer).
        inputs = x
        ce = nn.functional.cross_entropy(module(inputs), y).item()
        penalty = paper_cfg.model.arch.l1 * module.net.fc.weight.abs().sum().item()
    assert penalty > 0.1, "the test needs a penalty large enough to tell the two losses apart"
    # The training-step formula (criterion + regularization_loss) on the same batch, in eval mode.
    with torch.no_grad():
        train_formula = (module.criterion(module(inputs), y) + module.net.regularization_loss()).item()
    assert train_formula == pytest.approx(ce + penalty, rel=1e-6)
    assert logged == pytest.approx(ce + penalty, rel=1e-5)


# ---------------------------------------------------------------- input scaling
def test_inputs_are_scaled_to_0_1_as_the_paper_rescales_by_1_over_255(paper_cfg) -> None:
    module = paper_classifier(paper_cfg)
    x = torch.stack([torch.zeros(3, 4, 4), torch.full((3, 4, 4), 255.0)]).to(torch.uint8)
    scaled = module.net.normalize(x)
    assert scaled[0].min().item() == 0.0 and scaled[0].max().item() == 0.0
    assert scaled[1].min().item() == pytest.approx(1.0) and scaled[1].max().item() == pytest.approx(1.0)


def test_model_config_keeps_the_scaling_the_imagenet_weights_expect(compose_cfg) -> None:
    """``model=mobilenet_m`` on its own: timm's mobilenetv1_100 weights were trained on [-1, 1]."""
    import timm

    cfg = compose_cfg("model=mobilenet_m")
    pretrained_cfg = timm.create_model("mobilenetv1_100", pretrained=False).pretrained_cfg
    assert list(cfg.model.mean) == pytest.approx(list(pretrained_cfg["mean"]))
    assert list(cfg.model.std) == pytest.approx(list(pretrained_cfg["std"]))


# ---------------------------------------------------------------- the head
def test_head_is_gap_dropout_batchnorm_dense_with_the_configured_rate(paper_cfg) -> None:
    net = create_model("mobilenet_m", 2, **paper_cfg.model.arch)
    assert net.drop.p == paper_cfg.model.arch.dropout
    order: list[str] = []
    for name in ("drop", "norm", "fc"):
        getattr(net, name).register_forward_hook(lambda m, i, o, name=name: order.append(name))
    net.train()
    features = torch.ones(8, net.num_features, 2, 2)
    net.forward_head(features)
    assert order == ["drop", "norm", "fc"]
    # In training, dropout zeroes about its rate of the pooled features before BatchNorm sees them.
    seen: list[torch.Tensor] = []
    net.norm.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    torch.manual_seed(0)
    net.forward_head(torch.ones(64, net.num_features, 2, 2))
    zeroed = (seen[-1] == 0).float().mean().item()
    assert zeroed == pytest.approx(paper_cfg.model.arch.dropout, abs=0.02)
    net.eval()
    net.forward_head(torch.ones(4, net.num_features, 2, 2))
    assert (seen[-1] == 1).all(), "no dropout at evaluation"


def test_every_batchnorm_uses_keras_momentum(paper_cfg) -> None:
    """Keras's BatchNormalization momentum 0.99 (torch's 0.01), in the backbone as in the head."""
    net = create_model("mobilenet_m", 2, **paper_cfg.model.arch)
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 28  # 27 in MobileNet v1, one in the head
    assert [m.momentum for m in norms] == pytest.approx([paper_cfg.model.arch.bn_momentum] * len(norms))
    assert net.norm.eps == pytest.approx(paper_cfg.model.arch.head_bn_eps)


def test_dense_layer_starts_from_keras_uniform_initializer(paper_cfg) -> None:
    """Sec. 3.6: the dense layer starts from a uniform distribution, read as Keras's 'uniform'
    initializer, U(-0.05, 0.05), with Keras's zero bias."""
    limit = paper_cfg.model.arch.dense_init_limit
    torch.manual_seed(0)
    net = create_model("mobilenet_m", 2, **paper_cfg.model.arch)
    w = net.fc.weight.detach()
    assert w.abs().max().item() <= limit
    # 2,048 uniform draws reach the top fifth of the range; torch's default bound is 1/√1024.
    assert w.abs().max().item() > 0.8 * limit
    assert w.std().item() == pytest.approx(limit / np.sqrt(3), rel=0.1)
    assert torch.count_nonzero(net.fc.bias).item() == 0


def test_gradcam_layer_is_the_last_conv_block_whose_output_is_the_pooled_map() -> None:
    net = create_model("mobilenet_m", 2).eval()
    layer = net.gradcam_layer()
    assert any(m is layer for m in net.modules())
    seen: list[torch.Tensor] = []
    layer.register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        features = net.forward_features(x)
    assert torch.equal(seen[0], features), "the head pools exactly this block's output"
    assert features.shape[1] == net.num_features == 1024


# ---------------------------------------------------------------- schedule and stopping
def _lr_after(cfg: DictConfig, losses: list[float]) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.optimizer.lr)
    scheduler = instantiate(cfg.scheduler.scheduler)(optimizer=opt)
    lrs = []
    for loss in losses:
        scheduler.step(loss)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def test_plateau_reduces_after_5_epochs_without_improvement_as_keras_does(paper_cfg) -> None:
    """Keras's ReduceLROnPlateau(patience=5) cuts the rate on the 5th epoch without improvement
    (wait >= patience); torch's cuts it when the bad epochs exceed its patience."""
    lrs = _lr_after(paper_cfg, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    start = paper_cfg.optimizer.lr
    assert lrs[:5] == [start] * 5
    assert lrs[5] == pytest.approx(start * paper_cfg.scheduler.scheduler.factor)


def test_plateau_counts_keras_min_delta_as_an_absolute_threshold(paper_cfg) -> None:
    """Keras: an improvement is a loss below best - 1e-4. A drop of 7e-5 from 0.5 is none (torch's
    relative default, 1e-4 × 0.5, would count it and restart the wait)."""
    start = paper_cfg.optimizer.lr
    lrs = _lr_after(paper_cfg, [0.5, *[0.5 - 7e-5] * 5])
    assert lrs[-1] == pytest.approx(start * paper_cfg.scheduler.scheduler.factor)


def test_paper_training_settings(paper_cfg, compose_cfg) -> None:
    cfg = paper_cfg
    assert compose_cfg("experiment=mobilenet_m_paper").model.pretrained is True  # ImageNet start
    assert cfg.optimizer._target_ == "torch.optim.Adam"
    assert cfg.optimizer.eps == pytest.approx(1e-7)  # Keras's Adam epsilon
    assert cfg.callbacks.early_stopping.monitor == cfg.scheduler.monitor == "val/loss"
    assert cfg.callbacks.early_stopping.patience == 20
    assert (cfg.data.batch_size, cfg.trainer.max_epochs, cfg.data.image_size) == (16, 100, 224)
    assert cfg.model.arch.l1 == pytest.approx(0.015)
    assert cfg.loss._target_ == "torch.nn.CrossEntropyLoss"
    assert OmegaConf.to_container(cfg.data.split)["_target_"].endswith("RatioSplit")
    assert (cfg.data.split.train, cfg.data.split.val, cfg.data.split.test) == pytest.approx((0.7, 0.1, 0.2))
    # Tables 6-8: σ 0, 2, 5, 8, 10 (the text's "6" contradicts all three tables).
    assert list(cfg.noise_sigmas) == [0, 2, 5, 8, 10]


# ---------------------------------------------------------------- crop and augmentation
def test_crop_is_centred_on_the_image_and_keeps_the_whole_cell() -> None:
    """Sec. 3.2: the crop is taken about the image's centre and keeps the whole cell, so it is
    centred on the image (not on the cell) and just wide enough to hold the cell."""
    image = np.zeros((100, 100, 3), np.uint8)
    image[10:60, 30:70] = 200  # an off-centre cell: rows 10-59, columns 30-69
    step = CellCenterCrop(mode="center", size=80, margin=0.0, threshold=10, min_area=1)
    out = step.apply(image)
    # Centred on (50, 50), the farthest cell edge is 40 px away (row 10): an 80 px square.
    assert np.array_equal(out, image[10:90, 10:90])


def test_paper_crop_keeps_every_cell_of_the_cnmc_sample_whole(paper_cfg, real_data: Path) -> None:
    files = sorted((real_data / "cnmc_sample").rglob("*.bmp"))
    if not files:
        pytest.skip(f"no C-NMC sample images under {real_data / 'cnmc_sample'}")
    params = OmegaConf.to_container(paper_cfg.preprocess.steps.center_crop)
    params.pop("_target_")
    step = CellCenterCrop(**params)
    for f in files:
        out = step(np.asarray(Image.open(f).convert("RGB")))
        box = foreground_box(out, params["threshold"], params["min_area"])
        assert out.shape == (224, 224, 3) and box is not None, f.name
        assert min(box[:2]) > 0 and max(box[2:]) < 224, f"{f.name}: the crop cuts the cell"


def test_paper_crop_mode_is_the_image_centred_one(paper_cfg) -> None:
    (step,) = paper_cfg.preprocess.steps.values()
    assert step.mode == "center"
    assert step.size == 224


def test_noise_comes_first_as_the_paper_adds_it_to_the_stored_training_images(paper_cfg) -> None:
    """The paper writes the noisy images with imgaug/imageio (dataset modification), then Keras's
    ImageDataGenerator transforms them while training: noise first, brightness after it."""
    targets = [t._target_ for t in paper_cfg.augmentation.transforms]
    assert targets[0] == "albumentations.OneOf"
    noise = paper_cfg.augmentation.transforms[0]
    assert sorted(t.sigma for t in noise.transforms) == [3.0, 9.0]
    assert all(t.per_channel for t in noise.transforms)
    assert noise.p == 1.0
    assert targets.index("albumentations.MultiplicativeNoise") > 0
