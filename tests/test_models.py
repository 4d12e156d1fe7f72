"""Architectures: MCB-HyperNet's branches, the morphology, the registry and local weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from leuk.models import create_model, model_names
from leuk.models.morphology import MorphologicalContextBlock, dilate, erode
from leuk.models.registry import PretrainedWeightsError, UnknownModelError


@pytest.mark.parametrize(("size", "grid"), [(168, 6), (224, 7), (256, 8)])
def test_mcb_hypernet_branch_shapes(size: int, grid: int) -> None:
    net = create_model("mcb_hypernet", 4).eval()
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
        net = create_model("mcb_hypernet", 3, gating=gating)
        assert net(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    with pytest.raises(ValueError, match="gating"):
        create_model("mcb_hypernet", 3, gating="always")


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
