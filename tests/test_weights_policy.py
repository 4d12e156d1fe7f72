"""The weights policy (issue 13, defect 1): a paper experiment that fine-tunes ImageNet weights asks
for them and stops at start when they cannot be had; no run freezes randomly initialized weights
unless ``model.allow_random_frozen=true`` says so, and then the log says how many."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
import timm
import torch

from leuk.cli.train import train
from leuk.composition import build_datamodule, build_module
from leuk.models.registry import PretrainedWeightsError
from tests.helpers import TINY, compose_config

# The weights of VGG16's block 5 (three 3×3 convolutions of 512 → 512 channels with biases): the
# part the modified VGG16 keeps frozen.
BLOCK5 = 3 * (512 * 512 * 9 + 512)
FAST = [*TINY, "trainer.fast_dev_run=true", "logger=none"]


@pytest.fixture
def offline_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Offline with an empty Hugging Face and torch hub cache; records any attempt to connect."""
    import huggingface_hub.constants as hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    attempts: list[tuple] = []

    def refuse(self: socket.socket, address: tuple) -> None:
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.mark.parametrize(
    ("experiment", "tag"), [("vgg16_paper", "vgg16.tv_in1k"), ("mseenet_paper", "tf_efficientnetv2_b0.in1k")]
)
def test_paper_experiment_offline_stops_at_start_naming_the_weights(
    experiment: str, tag: str, offline_no_cache: list[tuple], tmp_path: Path
) -> None:
    # A data root that does not exist: the run must stop on the weights before it reads any image.
    cfg = compose_config(
        [f"experiment={experiment}", f"data.root={tmp_path / 'no_data_here'}", "logger=none"],
        output_dir=tmp_path / "run",
    )
    with pytest.raises(PretrainedWeightsError) as err:
        train(cfg)
    message = str(err.value)
    assert tag in message
    assert "model.weights=" in message and "HF" in message
    assert "model.pretrained=false model.allow_random_frozen=true" in message
    assert offline_no_cache == [], "offline: the network must not be tried"
    assert not (tmp_path / "run" / "split.csv").exists()


@pytest.mark.parametrize(
    ("overrides", "count"),
    [
        (["model=vgg16_mod"], BLOCK5),
        (["model=mseenet", "model.freeze_backbone_epochs=1"], None),
        (["model=resnet18", "model.freeze_backbone_epochs=2"], None),
    ],
    ids=["vgg16_mod_block5", "mseenet_frozen_phase", "timm_frozen_phase"],
)
def test_frozen_random_part_is_refused(overrides: list[str], count: int | None, tmp_path: Path) -> None:
    cfg = compose_config([*FAST, *overrides], output_dir=tmp_path)
    with pytest.raises(ValueError, match=r"model\.allow_random_frozen=true") as err:
        train(cfg)
    message = str(err.value)
    assert "random" in message and "model.weights=" in message
    if count is not None:
        assert f"{count:,}" in message
    assert not (tmp_path / "split.csv").exists(), "refused at start, before the data"


def test_allow_random_frozen_runs_and_logs_how_many(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = compose_config([*FAST, "model=vgg16_mod", "model.allow_random_frozen=true"], output_dir=tmp_path)
    with caplog.at_level(logging.WARNING):
        metrics = train(cfg)
    assert metrics["n_test"] > 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(f"{BLOCK5:,}" in w and "random" in w for w in warnings), warnings


def test_nothing_frozen_needs_no_flag(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = compose_config(
        [*FAST, "model=vgg16_mod", "model.arch.trainable_blocks=[1,2,3,4,5]"], output_dir=tmp_path
    )
    with caplog.at_level(logging.WARNING):
        train(cfg)
    assert not [r for r in caplog.records if "random" in r.getMessage() and r.levelno >= logging.WARNING]


@pytest.fixture(scope="module")
def vgg16_state() -> dict[str, torch.Tensor]:
    """timm's VGG16 weights as a weights file holds them (fc6/fc7 included), built once."""
    return timm.create_model("vgg16", num_classes=0).state_dict()


def _vgg16_file(
    state: dict[str, torch.Tensor], tmp_path: Path, drop_block5: bool = False
) -> tuple[Path, dict[str, torch.Tensor]]:
    if drop_block5:
        block5 = ("features.24.", "features.26.", "features.28.")
        state = {k: v for k, v in state.items() if not k.startswith(block5)}
    path = tmp_path / "vgg16_local.pth"
    torch.save(state, path)
    return path, state


def test_local_weights_file_satisfies_the_paper_experiment(
    offline_no_cache: list[tuple], vgg16_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path, state = _vgg16_file(vgg16_state, tmp_path)
    overrides = ["experiment=vgg16_paper", "data=synthetic", *FAST, f"model.weights={path}"]
    cfg = compose_config(overrides, output_dir=tmp_path / "run")
    assert cfg.model.pretrained is True, "the paper fine-tunes ImageNet weights: the experiment asks for them"
    metrics = train(cfg)
    assert metrics["n_test"] > 0 and metrics["model"] == "vgg16_mod"
    assert offline_no_cache == []
    # The file's tensors are the ones the model starts from (block 5 included, which stays frozen).
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    module = build_module(cfg, datamodule)
    own = module.net.backbone.state_dict()
    # Every convolution comes from the file (timm's fc6/fc7 in it are not part of the model).
    assert {k for k in own} <= set(state)
    assert all(torch.equal(v, state[k]) for k, v in own.items())


def test_weights_file_without_the_frozen_block_is_refused(
    vgg16_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path, _ = _vgg16_file(vgg16_state, tmp_path, drop_block5=True)
    cfg = compose_config([*FAST, "model=vgg16_mod", f"model.weights={path}"], output_dir=tmp_path)
    with pytest.raises(ValueError, match=rf"{BLOCK5:,}.*model\.allow_random_frozen=true"):
        train(cfg)
