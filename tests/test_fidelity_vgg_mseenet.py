"""``experiment=vgg16_paper`` and ``experiment=mseenet_paper`` against their papers
(/work/shared/papers/vgg16_mod.txt, mseenet.txt; docs/deviations.md)."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import cv2
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from leuk.data.transforms import build_augmentation
from leuk.models.registry import create_model
from tests.helpers import compose_config


def _count(net: nn.Module) -> tuple[int, int]:
    params = list(net.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def test_vgg16_paper_head_and_frozen_block(tmp_path: Path) -> None:
    """Sec. 3: block1_conv1 … block4_conv3 fine-tuned, flatten → dense 1024 ReLU → dropout 0.25 →
    softmax over the 4 classes, at 300 px."""
    cfg = compose_config(["experiment=vgg16_paper"], output_dir=tmp_path)
    arch = OmegaConf.to_container(cfg.model.arch)
    assert (arch["hidden"], arch["dropout"], arch["trainable_blocks"]) == (1024, 0.25, [1, 2, 3, 4])
    with torch.device("meta"):
        net = create_model("vgg16_mod", 4, image_size=cfg.data.image_size, **arch)
    total, trainable = _count(net)
    assert total - trainable == 3 * (512 * 512 * 9 + 512), "block 5 (and only it) is frozen"
    assert net.dense.in_features == 512 * 9 * 9 and net.fc.out_features == 4
    assert isinstance(net.act, nn.ReLU) and net.drop.p == 0.25


def test_vgg16_paper_training_protocol(tmp_path: Path) -> None:
    cfg = compose_config(["experiment=vgg16_paper"], output_dir=tmp_path)
    assert (cfg.optimizer.lr, cfg.data.batch_size, cfg.trainer.max_epochs) == (1e-5, 32, 25)
    # 25 fixed epochs, then evaluation of the trained model: no early stopping, no schedule, and the
    # last epoch's weights are tested, not the best by validation.
    assert cfg.callbacks.get("early_stopping") is None
    assert cfg.scheduler.get("scheduler") is None
    assert cfg.get("test_checkpoint") == "last"
    assert cfg.model.pretrained is True


def test_vgg16_paper_augmentation_is_the_papers_only(tmp_path: Path) -> None:
    """Sec. 3: brightness in [0.8, 1.2], rotation and reflections; nothing else. Keras's image
    generator draws a rotation for every image and fills the corners with the nearest pixel."""
    cfg = compose_config(["experiment=vgg16_paper"], output_dir=tmp_path)
    aug = build_augmentation(cfg.augmentation.transforms)
    kinds = [type(t) for t in aug.transforms]
    assert kinds == [A.MultiplicativeNoise, A.Rotate, A.HorizontalFlip, A.VerticalFlip]
    brightness, rotate = aug.transforms[0], aug.transforms[1]
    assert tuple(brightness.multiplier) == (0.8, 1.2) and brightness.p == 1.0
    assert rotate.p == 1.0, "every training image gets a random angle, as Keras's rotation_range"
    assert rotate.border_mode == cv2.BORDER_REPLICATE, "Keras's fill_mode='nearest'"


def test_mseenet_paper_protocol(tmp_path: Path) -> None:
    """Sec. III: 224 px, [0, 1] pixels, no augmentation, 80/10/10, backbone frozen first, early
    stopping and reduce-on-plateau; ImageNet weights (the frozen phase needs them)."""
    cfg = compose_config(["experiment=mseenet_paper"], output_dir=tmp_path)
    assert cfg.data.image_size == 224 and not cfg.augmentation.get("transforms")
    assert (cfg.data.split.train, cfg.data.split.val, cfg.data.split.test) == (0.8, 0.1, 0.1)
    assert cfg.model.freeze_backbone_epochs > 0 and cfg.model.pretrained is True
    assert cfg.callbacks.early_stopping.monitor == "val/loss"
    assert cfg.scheduler.scheduler._target_.endswith("ReduceLROnPlateau")


def test_mseenet_gradcam_layer_covers_every_branch() -> None:
    net = create_model("mseenet", 4)
    layer = net.gradcam_layer()
    assert layer is net.inception
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        net.eval()(torch.randn(1, 3, 64, 64))
    handle.remove()
    assert seen[0].shape[1] == net.num_features == 64 + 128 + 32 + 32


def test_vgg16_mod_gradcam_layer_is_the_last_conv_block_output() -> None:
    net = create_model("vgg16_mod", 4, image_size=64)
    layer = net.gradcam_layer()
    assert layer is net.conv_blocks()[-1][-1]
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        net.eval()(torch.randn(1, 3, 64, 64))
    handle.remove()
    # The map the dense head flattens: all 512 channels of block 5.
    assert seen[0].shape == (1, 512, 2, 2)


def deviations_section(experiment: str) -> str:
    """The section of docs/deviations.md whose heading names ``experiment=<experiment>``."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "deviations.md").read_text()
    sections = text.split("\n## ")[1:]
    found = [s for s in sections if f"experiment={experiment}`" in s.splitlines()[0]]
    assert found, f"docs/deviations.md has no section for experiment={experiment}"
    return found[0]


def test_every_experiment_has_a_deviations_section() -> None:
    conf = Path(__file__).resolve().parent.parent / "conf" / "experiment"
    for path in sorted(conf.glob("*.yaml")):
        assert "silent" in deviations_section(path.stem).lower(), path.stem


@pytest.mark.parametrize("experiment", ["vgg16_paper", "mseenet_paper"])
def test_deviations_file_names_every_restoring_key(experiment: str) -> None:
    text = deviations_section(experiment)
    for key in ("model.pretrained", "model.allow_random_frozen", "model.mean"):
        assert key in text, key
    assert "silent" in text.lower()
