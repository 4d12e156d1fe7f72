"""MCB-HyperNet against its paper (Dubai, Kadhimi & Najjar 2025, /shared/papers/mcb_hypernet.txt):
Eq. 2's residual unit, the FC on the fused map (Eqs. 21-23), pixels in [0, 1] (Eq. 1), the fused
map as Grad-CAM's target, the grid of Sec. 4.1, and testing the model of the last epoch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from leuk import explain
from leuk.config import config_dir
from leuk.config.validate import ConfigError
from leuk.models import create_model
from leuk.models.morphology import MorphologicalContextBlock, dilate, erode
from leuk.train import train
from tests.helpers import TINY, compose_config

# Eq. 3: F_res has 64 channels; Eq. 14: F_mob has 576; Eq. 22: the fused map has 1280.
STEM, MOB, FUSED = 64, 576, 1280


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- architecture
def test_residual_unit_follows_eq2() -> None:
    """F_res = ReLU(BN(W2 * ReLU(BN(W1 * im + b1))) + b2) + im: the ReLU comes before the sum, and
    the shortcut is the image itself (zero-padded to 64 channels: Eq. 2 names no shortcut weights)."""
    torch.manual_seed(0)
    block = create_model("mcb_hypernet", 4, image_size=32).res_block.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        inner = F.relu(block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x))))))
        expected = inner + F.pad(x, (0, 0, 0, 0, 0, STEM - 3))
        out = block(x)
    assert out.shape == (2, STEM, 16, 16)
    assert torch.allclose(out, expected, atol=1e-6)
    # The image passes unchanged: where it is negative, so (somewhere) is F_res.
    assert (out[:, :3] < 0).any()


def test_residual_unit_has_eq2s_parameters_only() -> None:
    block = create_model("mcb_hypernet", 4, image_size=32).res_block
    # W1, b1 (3x3, 3 -> 64), W2, b2 (3x3, 64 -> 64), two BatchNorms' scale and shift.
    expected = (9 * 3 * STEM + STEM) + (9 * STEM * STEM + STEM) + 2 * 2 * STEM
    assert _params(block) == expected


def test_residual_resnet_basic_restores_the_projection_block() -> None:
    block = create_model("mcb_hypernet", 4, image_size=32, residual="resnet_basic").res_block.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert (block(x) >= 0).all()  # ReLU after the sum
    assert _params(block) == 9 * 3 * STEM + 9 * STEM * STEM + 3 * STEM + 3 * 2 * STEM
    with pytest.raises(ValueError, match=r"model\.arch\.residual"):
        create_model("mcb_hypernet", 4, image_size=32, residual="pre_activation")


@pytest.mark.parametrize(("size", "grid"), [(168, 6), (256, 8)])
def test_head_is_one_fc_on_the_flattened_fused_map(size: int, grid: int) -> None:
    """Eq. 23 applies the FC to F (H_d x W_d x 1280; H_d = 6 at 168 px, 8 at 256 px, Eq. 14)."""
    torch.manual_seed(0)
    net = create_model("mcb_hypernet", 4, image_size=size).eval()
    assert net.fc.in_features == FUSED * grid * grid
    assert _params(net.fc) == (FUSED * grid * grid + 1) * 4
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        fused = net.forward_features(x)
        logits = net(x)
    assert fused.shape == (1, FUSED, grid, grid)
    assert torch.allclose(logits, net.fc(fused.flatten(1)), atol=1e-5)


def test_head_gap_restores_pooling_and_flatten_needs_the_size() -> None:
    net = create_model("mcb_hypernet", 3, image_size=64, head="gap", dropout=0.5)
    assert net.fc.in_features == FUSED
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    with pytest.raises(ValueError, match="image_size"):
        create_model("mcb_hypernet", 3)
    with pytest.raises(ValueError, match=r"model\.arch\.head"):
        create_model("mcb_hypernet", 3, image_size=64, head="attention")


def test_erosion_of_eq7_taken_literally() -> None:
    """Eq. 7 writes E = MaxPool(-F) without the outer minus of Eq. 6's min: D - E is then max + min."""
    x = torch.randn(2, 4, 9, 9)
    assert torch.equal(MorphologicalContextBlock(3)(x), dilate(x, 3) - erode(x, 3))
    literal = MorphologicalContextBlock(3, erosion="eq7_literal")
    assert torch.equal(literal(x), dilate(x, 3) + erode(x, 3))
    with pytest.raises(ValueError, match="erosion"):
        MorphologicalContextBlock(3, erosion="opening")


# ---------------------------------------------------------------- the experiment's protocol
def test_paper_experiment_follows_the_paper(tmp_path: Path) -> None:
    cfg = compose_config(["experiment=mcb_hypernet_paper"], output_dir=tmp_path)
    model = cfg.model
    # Eq. 1 / Sec. 4.1: pixels rescaled from [0, 255] to [0, 1], no further normalization.
    assert list(model.mean) == [0.0, 0.0, 0.0] and list(model.std) == [1.0, 1.0, 1.0]
    assert model.arch.residual == "paper" and model.arch.head == "flatten"
    assert model.arch.dropout == 0.0 and model.arch.gating == "none"
    assert model.arch.erosion == "exact"
    # The MobileNetV3 part reads the 64-channel F_MCB1, and the paper names no pre-training.
    assert model.pretrained is False and model.paper.imagenet_weights is False
    # Sec. 4.1: 256 px, batch 32, 50 epochs; the model after the last epoch is the one tested.
    assert (cfg.data.image_size, cfg.data.batch_size, cfg.trainer.max_epochs) == (256, 32, 50)
    assert cfg.test_checkpoint == "last"
    assert cfg.callbacks.early_stopping is None
    assert (cfg.data.split.train, cfg.data.split.val, cfg.data.split.test) == (0.8, 0.1, 0.1)
    # Sec. 4.1: rotation within +-15 deg, horizontal and vertical flips, brightness and contrast.
    ops = {t._target_.split(".")[-1]: t for t in cfg.augmentation.transforms}
    assert set(ops) == {"Rotate", "HorizontalFlip", "VerticalFlip", "RandomBrightnessContrast"}
    assert ops["Rotate"].limit == 15 and ops["Rotate"].p == 1.0


def test_grid_is_the_papers() -> None:
    """Sec. 4.1: 168/224/256 px x batch 16/32 x 30-50 epochs in steps of 5 (30 settings)."""
    params = OmegaConf.load(config_dir() / "sweep" / "mcb_grid.yaml").hydra.sweeper.params
    assert params["data.image_size"] == "168,224,256"
    assert params["data.batch_size"] == "16,32"
    assert params["trainer.max_epochs"] == "30,35,40,45,50"


def test_default_tests_the_best_checkpoint_and_bad_values_are_named(tmp_path: Path) -> None:
    assert compose_config([], output_dir=tmp_path).test_checkpoint == "best"
    cfg = compose_config([*TINY, "test_checkpoint=newest", "logger=none"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="test_checkpoint"):
        train(cfg)


def test_test_checkpoint_last_tests_the_last_epoch(tmp_path: Path) -> None:
    overrides = [
        *TINY,
        "logger=none",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "test_checkpoint=last",
    ]
    metrics = train(compose_config(overrides, output_dir=tmp_path))
    assert metrics["test_checkpoint"] == "last"
    assert Path(metrics["tested_checkpoint"]) == tmp_path / "checkpoints" / "last.ckpt"
    # The best checkpoint (by val/loss) is still kept and named, but not the one tested.
    assert Path(metrics["best_checkpoint"]).name.startswith("epoch_")
    # What was tested holds the weights after the last epoch, whichever epoch was best (in this
    # run val/loss is lowest after epoch 0).
    assert torch.load(metrics["tested_checkpoint"], weights_only=False)["epoch"] == 1


# ---------------------------------------------------------------- Grad-CAM
class _TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def gradcam_layer(self) -> nn.Module:
        return self.conv1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(self.conv1(x)).mean(dim=(2, 3)))


def test_gradcam_uses_the_networks_own_layer() -> None:
    name, layer = explain.gradcam_target(_TwoConvs(), 16)
    assert layer is not None and name == "conv1"
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten())
    assert explain.gradcam_target(plain, 16)[0] == "1"  # the last convolution otherwise


def test_mcb_gradcam_layer_outputs_the_fused_map() -> None:
    net = create_model("mcb_hypernet", 4, image_size=64).eval()
    name, layer = explain.gradcam_target(net, 64)
    shapes: list[tuple[int, ...]] = []
    hook = layer.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, 64, 64))
    finally:
        hook.remove()
    assert shapes == [(1, FUSED, 2, 2)], name


def test_mcb_gradcam_map_on_the_fused_map(tmp_path: Path) -> None:
    pytest.importorskip("pytorch_grad_cam", reason="grad-cam (the 'explain' extra) is not installed")
    cfg = compose_config([], output_dir=tmp_path)
    from leuk.composition import build_net

    net = build_net(cfg.model, 2, 64).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    _, layer = explain.gradcam_target(net, 64)
    heat = explain.grad_cam(net, images, [0, 1], layer)
    assert heat.shape == (2, 64, 64) and np.isfinite(heat).all()
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    probs = np.array([[0.6, 0.4], [0.3, 0.7]])
    result = explain.gradcam_grid(net, images, np.array([0, 1]), probs, ["a", "b"], 1, tmp_path / "g.png")
    assert result["layer"] == "fuse" and (tmp_path / "g.png").is_file()


# ---------------------------------------------------------------- the quick start's default model
@pytest.mark.xfail(
    reason="issue 16: in this run's six epochs of 8 steps the default MCB-HyperNet's eval-mode "
    "(BatchNorm running statistics) predictions collapse to one or two classes, on its training "
    "images too, while its training accuracy reaches 0.6-0.7; val/loss is lowest after epoch 0, "
    "which is the checkpoint tested",
)
def test_quickstart_generalizes(quickstart_run) -> None:
    """The held-out half of the quick-start check (tests/test_train.py's test_quickstart_learns)."""
    metrics = quickstart_run.metrics
    # Six epochs leave accuracy on the test images noisy (16 here; on 24, seeds 42, 0, 1, 2, 3
    # gave 0.708-0.458 before issue 13 made the model the paper's); AUROC and loss were stable:
    # 0.79-0.85 and 0.90-1.16, against 0.5 and ln(4) = 1.386 at chance.
    assert metrics["test/auroc"] >= 0.7, metrics
    assert metrics["test/loss"] < math.log(4) - 0.08, metrics
    assert metrics["test/accuracy"] >= 0.375, metrics  # 1.5x chance (0.25)
