"""ALDL (Wisaeng, 2026) read against its paper: CBAM placement (§4.2.9), the channel attention of
Eq. 17, the CE + focal schedule (§4.2.10), the train fractions of the 70:30 and 60:40 protocols
(§5), the lesion crop from the original image for each lesion (Eq. 9), the colour-space study
applied to the segmentation (§5.1–5.2, Table 4), the two training recipes (§4.2.9, §4.3) and the
baseline set of Tables 2–3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual

from leuk.losses import CEThenFocalLoss, FocalLoss
from leuk.models.attention import CBAM, ChannelAttention
from leuk.models.registry import create_model
from leuk.preprocess import build_preprocess
from leuk.preprocess.clahe import Clahe
from leuk.preprocess.lesion import LesionCrop
from leuk.preprocess.pipeline import PreprocessPipeline
from leuk.preprocess.reinhard import Reinhard
from tests.helpers import compose_config
from tests.test_experiments import compose_with_hydra, expand_jobs


def _mbconv_blocks(net: torch.nn.Module) -> int:
    # Eq. 16's MBConv: a depthwise convolution between 1×1 convolutions (timm's InvertedResidual,
    # and DepthwiseSeparableConv, its expansion-1 form); Fused-MBConv has no depthwise conv.
    return sum(isinstance(m, (InvertedResidual, DepthwiseSeparableConv)) for m in net.backbone.modules())


# ------------------------------------------------------------------ architecture (§4.2.9)
@pytest.mark.parametrize(("name", "n_mbconv"), [("aldl", 30), ("aldl_mobilenetv3", 11)])
def test_one_cbam_after_every_mbconv_block(name: str, n_mbconv: int) -> None:
    net = create_model(name, 4).eval()
    cbams = sum(isinstance(m, CBAM) for m in net.modules())
    assert _mbconv_blocks(net) == n_mbconv
    assert cbams == n_mbconv
    with torch.no_grad():
        assert net(torch.rand(1, 3, 64, 64)).shape == (1, 4)


def test_cbam_after_each_stage_stays_available() -> None:
    net = create_model("aldl", 4, cbam_after="stage")
    assert sum(isinstance(m, CBAM) for m in net.modules()) == 6


def test_channel_attention_is_eq_17_on_a_hand_computed_case() -> None:
    # Two channels, reduction 2 → one hidden unit. W0 = [1, −1], W1 = [2, −1]ᵀ, no biases.
    ca = ChannelAttention(2, reduction=2)
    convs = [m for m in ca.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        convs[0].weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
        convs[1].weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
        for c in convs:
            c.bias.zero_()
    x = torch.tensor([[[[1.0, 3.0]], [[0.0, 2.0]]]])  # avg (2, 1), max (3, 2)
    # M_c = σ(W1 ReLU(W0 avg)) = σ([2, −1]·ReLU(2 − 1)) = σ([2, −1]); the average descriptor only.
    expected = torch.sigmoid(torch.tensor([2.0, -1.0])).view(1, 2, 1, 1)
    torch.testing.assert_close(ca(x), expected)


def test_channel_attention_with_max_pool_is_woo_et_al() -> None:
    ca = ChannelAttention(2, reduction=2, pools=("avg", "max"))
    convs = [m for m in ca.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        convs[0].weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
        convs[1].weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
        for c in convs:
            c.bias.zero_()
    x = torch.tensor([[[[1.0, 3.0]], [[0.0, 2.0]]]])
    # avg path [2, −1] + max path [2, −1]·ReLU(3 − 2) = [4, −2]
    torch.testing.assert_close(ca(x), torch.sigmoid(torch.tensor([4.0, -2.0])).view(1, 2, 1, 1))


@pytest.mark.parametrize("name", ["aldl", "aldl_mobilenetv3"])
def test_gradcam_layer_outputs_the_final_feature_map(name: str) -> None:
    net = create_model(name, 4).eval()
    seen = []
    handle = net.gradcam_layer().register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        features = net.forward_features(x)
    handle.remove()
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], features)


# ------------------------------------------------------------------ loss (§4.2.10)
def test_early_epochs_combine_ce_and_focal_then_pure_focal() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 4, generator=g)
    target = torch.randint(0, 4, (8,), generator=g)
    loss = CEThenFocalLoss(ce_epochs=2, gamma=2.0, alpha=0.25)
    ce = F.cross_entropy(logits, target)
    focal = FocalLoss(gamma=2.0, alpha=0.25)(logits, target)
    for epoch, expected in ((0, ce + focal), (1, ce + focal), (2, focal), (9, focal)):
        loss.set_epoch(epoch)
        torch.testing.assert_close(loss(logits, target), expected)


def test_paper_loss_values(tmp_path: Path) -> None:
    cfg = compose_config(["experiment=aldl_paper"], output_dir=tmp_path)
    loss = instantiate(cfg.loss)
    assert isinstance(loss, CEThenFocalLoss)
    assert (loss.focal.gamma, loss.focal.scalar_alpha) == (2.0, 0.25)
    loss.set_epoch(0)
    assert loss.uses_focal_with_ce


# ------------------------------------------------------------------ splits (§5)
@pytest.mark.parametrize(
    ("split", "train", "test"), [("train_test_70_30", 0.7, 0.3), ("train_test_60_40", 0.6, 0.4)]
)
def test_paper_split_trains_on_the_papers_fraction(
    tmp_path: Path, split: str, train: float, test: float
) -> None:
    cfg = compose_config(["experiment=aldl_paper", f"data/split={split}"], output_dir=tmp_path)
    splitter = instantiate(cfg.data.split)
    labels = np.repeat(np.arange(4), 250)
    parts = splitter.assign(labels, np.arange(len(labels)), seed=0)
    assert abs(np.mean(parts == "train") - train) < 0.01
    assert abs(np.mean(parts == "test") - test) < 0.01


# ------------------------------------------------------------------ preprocessing (§4.2, §5.1)
def _smear(h: int = 120, w: int = 160) -> np.ndarray:
    """A pale background, two red cells and two violet stained cells."""
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.full((h, w, 3), (236, 230, 234), np.uint8)
    for cy, cx in ((25, 30), (95, 140)):
        image[np.hypot(yy - cy, xx - cx) < 12] = (205, 180, 200)
    image[np.hypot(yy - 40, xx - 100) < 16] = (120, 70, 190)
    image[np.hypot(yy - 85, xx - 45) < 12] = (125, 75, 185)
    return image


def test_paper_preprocess_converts_colour_space_only_for_segmentation(tmp_path: Path) -> None:
    for space in ("hsv", "lab", "hed"):
        cfg = compose_config(
            ["experiment=aldl_paper", f"preprocess.steps.lesion.space={space}"], output_dir=tmp_path
        )
        pipeline = build_preprocess(cfg.preprocess.steps)
        assert [type(s).__name__ for s in pipeline.steps] == ["Clahe", "Reinhard", "LesionCrop"]
        assert pipeline.names == ["clahe", "reinhard", "lesion"]
        assert pipeline["lesion"].params["space"] == space
    image = _smear()
    step = LesionCrop(margin=0.0, size=32, space="hsv")
    top, left, bottom, right = step.find(image)
    out = step(image)
    # The classifier gets RGB pixels of the original image, not HSV codes.
    expected = LesionCrop(margin=0.0, size=32).resize(image[top:bottom, left:right])
    np.testing.assert_array_equal(out, expected)


def test_colour_space_sweep_reaches_the_segmentation(tmp_path: Path) -> None:
    jobs = expand_jobs(compose_with_hydra(["sweep=aldl_color_spaces"]))
    spaces = set()
    for job in jobs:
        cfg = compose_config(["sweep=aldl_color_spaces", *job], output_dir=tmp_path)
        steps = cfg.preprocess.steps
        assert not any(s._target_.endswith("ColorSpace") for s in steps.values())
        spaces.add((steps.lesion.space, cfg.data.split.test))
    assert spaces == {(s, t) for s in ("rgb", "hsv", "lab", "hed") for t in (0.3, 0.4)}


@pytest.mark.parametrize("space", ["rgb", "hsv", "lab", "hed"])
def test_every_segmentation_space_finds_the_stained_cells(space: str) -> None:
    boxes = LesionCrop(margin=0.0, space=space).find_all(_smear())
    centres = sorted(((t + b) / 2, (left + r) / 2) for t, left, b, r in boxes)
    assert len(centres) == 2, (space, boxes)
    assert np.allclose(centres, [(40, 100), (85, 45)], atol=3), (space, centres)


def test_crop_comes_from_the_original_image() -> None:
    image = _smear()
    pipeline = PreprocessPipeline(
        {
            "clahe": Clahe(),
            "reinhard": Reinhard(),
            "lesion": LesionCrop(margin=0.0, size=32, crop_from="original"),
        }
    )
    pipeline.fit([image, np.ascontiguousarray(image[::-1])])
    out = pipeline(image)
    enhanced = pipeline["reinhard"](pipeline["clahe"](image))
    box = pipeline["lesion"].find(enhanced)
    top, left, bottom, right = box
    np.testing.assert_array_equal(out, pipeline["lesion"].resize(image[top:bottom, left:right]))
    # crop_from: input keeps the crop of the enhanced image.
    from_input = PreprocessPipeline(
        {"clahe": pipeline["clahe"], "reinhard": pipeline["reinhard"],
         "lesion": LesionCrop(margin=0.0, size=32, crop_from="input")}
    )  # fmt: skip
    np.testing.assert_array_equal(
        from_input(image), pipeline["lesion"].resize(enhanced[top:bottom, left:right])
    )


def test_each_lesion_gives_its_own_crop() -> None:
    image = _smear()
    crops = LesionCrop(margin=0.0, size=32).crops(image)
    assert len(crops) == 2 and all(c.shape == (32, 32, 3) for c in crops)
    assert not np.array_equal(crops[0], crops[1])


# ------------------------------------------------------------------ recipes and tables
PAPER_RECIPES = {
    # §4.3 Training Settings
    "aldl_paper": {
        "optimizer._target_": "torch.optim.AdamW",
        "optimizer.lr": 3e-4,
        "optimizer.weight_decay": 1e-5,
        "optimizer.betas": [0.9, 0.999],
        "optimizer.eps": 1e-8,
        "scheduler.scheduler.eta_min": 1e-6,
        "model.arch.dropout": 0.5,
        "data.batch_size": 32,
        "trainer.max_epochs": 150,
        "callbacks.early_stopping.patience": 15,
    },
    # §4.2.9 Model Architecture
    "aldl_paper_adam": {
        "optimizer._target_": "torch.optim.Adam",
        "optimizer.lr": 1e-3,
        "optimizer.weight_decay": 1e-4,
        "scheduler.scheduler._target_": "torch.optim.lr_scheduler.CosineAnnealingLR",
        "model.arch.dropout": 0.3,
        "data.batch_size": 32,
        "trainer.max_epochs": 100,
        "callbacks.early_stopping.patience": 10,
    },
}


@pytest.mark.parametrize("experiment", sorted(PAPER_RECIPES))
def test_both_paper_recipes(tmp_path: Path, experiment: str) -> None:
    from omegaconf import OmegaConf

    cfg = compose_config([f"experiment={experiment}"], output_dir=tmp_path)
    for key, value in PAPER_RECIPES[experiment].items():
        got = OmegaConf.select(cfg, key)
        got = list(got) if not isinstance(got, (str, int, float)) else got
        assert got == value, key
    assert (
        cfg.data.image_size == 224 and cfg.model.arch.reduction == 16 and cfg.model.arch.spatial_kernel == 7
    )
    assert cfg.model.arch.cbam_after == "mbconv" and list(cfg.model.arch.channel_pools) == ["avg"]
    assert cfg.callbacks.early_stopping.monitor == "val/loss"


def test_table_baselines_are_the_papers() -> None:
    jobs = expand_jobs(compose_with_hydra(["sweep=aldl_tables"]), extra=["seed=1"])
    models = {o.split("=", 1)[1] for job in jobs for o in job if o.startswith("model=")}
    assert models == {"aldl", "mobilenetv3_large", "resnet50", "densenet121", "vgg16", "inception_v3"}
