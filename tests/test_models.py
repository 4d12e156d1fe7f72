"""Architectures: shapes, the papers' parameter counts, their parts, local weights, two-phase training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from leuk.config import config_dir
from leuk.models import create_model, model_names
from leuk.models.attention import CBAM
from leuk.models.morphology import MorphologicalContextBlock, dilate, erode
from leuk.models.registry import PretrainedWeightsError, UnknownModelError
from tests.helpers import compose_config


# Shape checks build the network on the meta device: every layer runs its shape logic (and raises
# where a size does not fit) without allocating weights or computing, so a 134 M-parameter VGG16
# at 224 px costs milliseconds instead of seconds. The paper's input size of the default model
# runs for real, on purpose; the fast_dev_run of every model config runs each one for real.
def meta_build(name: str, num_classes: int, **kwargs: object) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, num_classes, **kwargs)


@pytest.mark.parametrize(("size", "grid", "device"), [(168, 6, "meta"), (224, 7, "meta"), (256, 8, "cpu")])
def test_mcb_hypernet_branch_shapes(size: int, grid: int, device: str) -> None:
    with torch.device(device):
        net = create_model("mcb_hypernet", 4, image_size=size).eval()
        x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        f_res, f_mcb1, f_mob, f_mcb2 = net.branches(x)
        feats = net.forward_features(x)
        logits = net(x)
    assert f_res.shape == f_mcb1.shape == (2, 64, size, size)
    assert f_mob.shape == f_mcb2.shape == (2, 576, grid, grid)
    assert feats.shape == (2, 1280, grid, grid)
    assert logits.shape == (2, 4)


def test_mcb_hypernet_small_input_and_gating() -> None:
    for gating in ("none", "scalar", "se"):
        net = create_model("mcb_hypernet", 3, image_size=64, gating=gating)
        assert net(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    with pytest.raises(ValueError, match="gating"):
        create_model("mcb_hypernet", 3, image_size=64, gating="always")


def test_erosion_is_an_exact_min_pool() -> None:
    x = torch.randn(2, 5, 17, 13)
    for k in (3, 5):
        # A true min-pool over the in-image neighbourhood (+inf padding never wins a min).
        padded = F.pad(x, (k // 2,) * 4, value=float("inf"))
        patches = padded.unfold(2, k, 1).unfold(3, k, 1)
        true_min = patches.amin(dim=(-1, -2))
        assert torch.equal(erode(x, k), true_min)
        true_max = (
            F.pad(x, (k // 2,) * 4, value=float("-inf")).unfold(2, k, 1).unfold(3, k, 1).amax(dim=(-1, -2))
        )
        assert torch.equal(dilate(x, k), true_max)


def test_morphological_gradient_is_non_negative_and_zero_on_flat() -> None:
    block = MorphologicalContextBlock(3)
    x = torch.randn(2, 4, 20, 20)
    assert (block(x) >= 0).all()
    assert torch.count_nonzero(block(torch.full((1, 2, 8, 8), 3.0))) == 0


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(UnknownModelError) as err:
        create_model("mcb_hyper", 4)
    assert "mcb_hypernet" in str(err.value)
    assert "mcb_hypernet" in model_names()


def test_any_timm_name_is_a_baseline() -> None:
    net = create_model("resnet18", 4)
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 4)


def test_local_weights_load_into_the_backbone(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet18", num_classes=1000)
    path = tmp_path / "resnet18.safetensors"
    save_file(source.state_dict(), str(path))
    net = create_model("resnet18", 4, weights=str(path))
    assert torch.equal(net.backbone.conv1.weight, source.conv1.weight)
    assert net.backbone.fc.weight.shape == (4, 512)  # the 1000-class head was dropped
    pth = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), pth)
    assert torch.equal(
        create_model("resnet18", 4, weights=str(pth)).backbone.conv1.weight, source.conv1.weight
    )


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"something.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="none of the 1 tensors"):
        create_model("resnet18", 4, weights=str(path))


def test_pretrained_offline_gives_one_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedWeightsError, match=r"model\.pretrained=false.*model\.weights="):
        create_model("resnet18", 4, pretrained=True)


# ---------------------------------------------------------------- every model config
def model_options() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "model").glob("*.yaml") if not p.stem.startswith("_"))


def build_from_config(model_cfg: DictConfig, num_classes: int, image_size: int) -> nn.Module:
    arch = OmegaConf.to_container(model_cfg.arch, resolve=True)
    return create_model(model_cfg.name, num_classes, image_size=image_size, **arch)


@pytest.mark.parametrize("option", model_options())
def test_every_model_config_forward_shapes(option: str, tmp_path: Path) -> None:
    """Logits of every model config at its paper's input size and at a small one (80 px), on the
    meta device (shapes only)."""
    cfg = compose_config([f"model={option}"], output_dir=tmp_path).model
    assert cfg.pretrained is False, "model configs must run offline"
    assert "imagenet_weights" in (cfg.paper or {}), "say whether the paper started from ImageNet weights"
    paper_size = (cfg.paper or {}).get("image_size") or 224
    for size in (paper_size, 80):
        with torch.device("meta"):
            net = build_from_config(cfg, num_classes=3, image_size=size).eval()
            assert isinstance(net.backbone, nn.Module)
            assert net(torch.randn(1, 3, size, size)).shape == (1, 3), (option, size)


@pytest.mark.parametrize(
    ("name", "size", "features"),
    [
        ("mseenet", 224, (256, 7, 7)),
        ("mseenet", 64, (256, 2, 2)),
        ("aldl", 224, (1280, 7, 7)),
        ("aldl_mobilenetv3", 224, (576, 7, 7)),
        ("vgg16_mod", 300, (512, 9, 9)),
        ("vgg16_mod", 224, (512, 7, 7)),
        ("mobilenet_m", 224, (1024, 7, 7)),
    ],
)
def test_feature_map_shapes(name: str, size: int, features: tuple[int, int, int]) -> None:
    net = meta_build(name, 2, image_size=size).eval()
    f = net.forward_features(torch.randn(1, 3, size, size, device="meta"))
    logits = net.forward_head(f)
    assert f.shape == (1, *features)
    assert logits.shape == (1, 2)


def _count(net: nn.Module) -> tuple[int, int]:
    return sum(p.numel() for p in net.parameters()), sum(
        p.numel() for p in net.parameters() if p.requires_grad
    )


# ---------------------------------------------------------------- parameter counts (the papers' Keras models)
def test_vgg16_mod_parameter_count_at_300px() -> None:
    net = meta_build("vgg16_mod", 4, image_size=300)
    assert _count(net) == (57_187_140, 50_107_716)
    blocks = net.conv_blocks()
    assert len(blocks) == 5
    for block, layers in enumerate(blocks, start=1):
        params = [p for layer in layers for p in layer.parameters()]
        assert params and all(p.requires_grad == (block != 5) for p in params), block
    assert net.dense.in_features == 512 * 9 * 9


def test_vgg16_mod_follows_image_size_and_trainable_blocks() -> None:
    net = meta_build("vgg16_mod", 4, image_size=224, trainable_blocks=[5])
    block5 = 3 * (512 * 512 * 9 + 512)
    dense = 512 * 7 * 7 * 1024 + 1024
    assert _count(net) == (14_714_688 + dense + 1024 * 4 + 4, block5 + dense + 1024 * 4 + 4)
    with pytest.raises(ValueError, match=r"built for 224 px.*\(9, 9\)"):
        net(torch.randn(1, 3, 300, 300, device="meta"))
    with pytest.raises(ValueError, match="blocks 1–5"):
        create_model("vgg16_mod", 4, image_size=224, trainable_blocks=[6])
    with pytest.raises(ValueError, match=r"data\.image_size"):
        create_model("vgg16_mod", 4)


def test_mobilenet_m_parameter_count() -> None:
    net = create_model("mobilenet_m", 2)
    total, trainable = _count(net)
    assert total == trainable == 3_211_074
    running = sum(b.numel() for n, b in net.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert trainable + running == 3_235_010


def test_mobilenet_m_l1_penalty() -> None:
    net = create_model("mobilenet_m", 2, l1=0.015)
    with torch.no_grad():
        net.fc.weight.copy_(torch.linspace(-1.0, 1.0, net.fc.weight.numel()).view_as(net.fc.weight))
        net.fc.bias.fill_(5.0)  # the bias is not penalized
    expected = 0.015 * net.fc.weight.abs().sum().item()
    penalty = net.regularization_loss()
    assert penalty.item() == pytest.approx(expected)
    assert penalty.item() == pytest.approx(0.015 * 2048 * 0.5, rel=1e-3)  # mean |w| of linspace(-1, 1)
    penalty.backward()
    assert torch.allclose(net.fc.weight.grad, 0.015 * net.fc.weight.sign())
    assert net.fc.bias.grad is None
    assert create_model("mobilenet_m", 2, l1=0.0).regularization_loss().item() == 0.0


# ---------------------------------------------------------------- parts
def test_cbam_matches_its_definition() -> None:
    torch.manual_seed(0)
    cbam = CBAM(32, reduction=16, spatial_kernel=7, channel_pools=("avg", "max"))  # Woo et al.
    x = torch.randn(2, 32, 9, 11)
    mlp = cbam.channel.mlp
    mc = torch.sigmoid(mlp(F.adaptive_avg_pool2d(x, 1)) + mlp(F.adaptive_max_pool2d(x, 1)))
    x1 = x * mc
    maps = torch.cat([x1.mean(1, keepdim=True), x1.max(1, keepdim=True).values], 1)
    ms = torch.sigmoid(F.conv2d(maps, cbam.spatial.conv.weight, cbam.spatial.conv.bias, padding=3))
    assert mc.shape == (2, 32, 1, 1) and ms.shape == (2, 1, 9, 11)
    assert mlp[0].out_channels == 2  # 32 / 16
    assert torch.allclose(cbam(x), x1 * ms, atol=1e-6)


def test_aldl_has_cbam_after_every_mbconv_block() -> None:
    # Per stage: a CBAM after each MBConv block (stages 4-6), none after the Fused-MBConv ones.
    net = create_model("aldl", 4).eval()
    kinds = [[type(a).__name__ for a in stage] for stage in net.attention]
    fused, mbconv = ["Identity"], ["CBAM"]
    assert kinds == [fused * 2, fused * 4, fused * 4, mbconv * 6, mbconv * 9, mbconv * 15]
    assert [stage[-1].channel.mlp[0].in_channels for stage in net.attention[3:]] == [128, 160, 256]
    with torch.no_grad():
        stages = net.stages(torch.randn(1, 3, 224, 224))
    assert [tuple(s.shape[1:]) for s in stages] == [
        (24, 112, 112),
        (48, 56, 56),
        (64, 28, 28),
        (128, 14, 14),
        (160, 14, 14),
        (256, 7, 7),
    ]
    light = create_model("aldl_mobilenetv3", 4)
    # MobileNetV3-Small's last stage is its 1×1 head convolution, not an MBConv block.
    kinds = [[type(a).__name__ for a in stage] for stage in light.attention]
    assert kinds == [["CBAM"] * 1, ["CBAM"] * 2, ["CBAM"] * 3, ["CBAM"] * 2, ["CBAM"] * 3, ["Identity"]]
    assert [stage[-1].channel.mlp[0].in_channels for stage in light.attention[:5]] == [16, 24, 40, 48, 96]


def test_mseenet_inception_branches() -> None:
    net = create_model("mseenet", 4, branch1x1=8, branch3x3=[4, 12], branch5x5=[2, 6], pool_proj=10)
    x = torch.randn(2, 1280, 5, 5)
    inc = net.inception
    outs = [inc.b1(x), inc.b3(x), inc.b5(x), inc.bp(x)]
    assert [o.shape[1] for o in outs] == [8, 12, 6, 10]
    assert all(o.shape[-2:] == (5, 5) for o in outs)
    assert inc(x).shape == (2, 36, 5, 5) and net.fc.in_features == 36
    assert [m.kernel_size for m in inc.b5.modules() if isinstance(m, nn.Conv2d)] == [(1, 1), (5, 5)]
    with pytest.raises(ValueError, match="branch3x3"):
        create_model("mseenet", 4, branch3x3=[4])


def test_new_architectures_pass_pretrained_to_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    real = timm.create_model
    asked: list[tuple[str, bool]] = []

    def spy(name: str, pretrained: bool = False, **kwargs: object) -> nn.Module:
        asked.append((name, pretrained))
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    for name in ("mseenet", "aldl", "aldl_mobilenetv3", "vgg16_mod", "mobilenet_m"):
        meta_build(name, 2, image_size=64, pretrained=True)
    assert asked == [
        ("tf_efficientnetv2_b0", True),
        ("tf_efficientnetv2_s", True),
        ("mobilenetv3_small_100", True),
        ("vgg16", True),
        ("mobilenetv1_100", True),
    ]


def test_local_weights_load_into_new_backbones(tmp_path: Path) -> None:
    import timm

    for name, timm_name in (
        ("mobilenet_m", "mobilenetv1_100"),
        ("aldl_mobilenetv3", "mobilenetv3_small_100"),
    ):
        source = timm.create_model(timm_name, num_classes=1000)
        path = tmp_path / f"{timm_name}.pth"
        torch.save(source.state_dict(), path)
        net = create_model(name, 2, weights=str(path))
        own, theirs = net.backbone.state_dict(), source.state_dict()
        shared = [k for k in own if k in theirs]
        # Every backbone tensor comes from the file (the 1000-class classifier is not in it).
        assert len(shared) == len(own), (name, sorted(set(own) - set(theirs)))
        assert all(torch.equal(own[k], theirs[k]) for k in shared), name
