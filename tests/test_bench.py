"""``leuk.bench`` on a tiny configuration writes every field of bench.json."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from leuk.bench import _epochs, bench
from leuk.benchmark import flops_per_image
from tests.helpers import TINY, compose_config

FIELDS = {
    "model", "image_size", "batch_size", "steps", "device", "lightning_images_per_s", "plain_images_per_s",
    "ratio", "step_seconds", "data_seconds_per_batch", "data_fraction_of_step", "latency_ms_median",
    "latency_ms_p90", "inference_images_per_s", "forward_flops_per_image", "train_flops_per_image",
    "lightning_train_flop_per_s", "plain_train_flop_per_s",
}  # fmt: skip


def test_bench_writes_all_fields(tmp_path: Path) -> None:
    cfg = compose_config(
        [*TINY, "bench.steps=3", "bench.warmup=1", "bench.latency_iters=3", "bench.repeats=1"],
        output_dir=tmp_path,
        config_name="bench",
    )
    result = bench(cfg)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert set(saved) >= FIELDS
    assert saved["ratio"] == result["lightning_images_per_s"] / result["plain_images_per_s"]
    for key in (
        "lightning_images_per_s",
        "plain_images_per_s",
        "latency_ms_median",
        "inference_images_per_s",
    ):
        assert saved[key] > 0, key
    assert saved["latency_ms_p90"] >= saved["latency_ms_median"]
    assert saved["batch_size"] == 8 and saved["image_size"] == 32
    assert saved["lightning_images_per_s"] == max(saved["lightning_images_per_s_runs"])
    # A training step is about three forward passes (forward, and the backward's two products).
    assert 2 < saved["train_flops_per_image"] / saved["forward_flops_per_image"] < 4
    assert saved["plain_train_flop_per_s"] == saved["train_flops_per_image"] * saved["plain_images_per_s"]


class _ToFloat(torch.nn.Module):
    """uint8 in, as leuk's Normalized layer takes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


def test_flops_of_one_convolution_are_counted_per_image() -> None:
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    flops = flops_per_image(torch.nn.Sequential(_ToFloat(), conv), size=16, batch_size=2)
    # 2 FLOPs per multiply-add: 16·16 outputs × 8 channels × 3·3·3 weights.
    assert flops["forward_flops_per_image"] == 2 * 16 * 16 * 8 * 27
    # Counted on a copy: the network itself got no gradient.
    assert conv.weight.grad is None


def test_a_depthwise_convolution_trains_at_twice_its_forward_flops() -> None:
    """Weight gradient and input gradient each cost one forward (PyTorch 2.14's own counter gives
    the depthwise weight gradient ``groups`` times its cost)."""
    first = torch.nn.Conv2d(3, 64, 1, bias=False)
    depthwise = torch.nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False)
    flops = flops_per_image(torch.nn.Sequential(_ToFloat(), first, depthwise), size=8, batch_size=2)
    first_fwd, depthwise_fwd = 2 * 8 * 8 * 64 * 3, 2 * 8 * 8 * 64 * 9
    assert flops["forward_flops_per_image"] == first_fwd + depthwise_fwd
    # The first layer needs no input gradient (its input is the image).
    assert flops["train_flops_per_image"] == 2 * first_fwd + 3 * depthwise_fwd


def test_bench_runs_past_an_epoch_with_a_plateau_scheduler(tmp_path: Path) -> None:
    """The benchmark skips validation, so a scheduler watching val/loss must not stop it at the
    first epoch end (MobileNet_M's experiment uses one); 9 steps cross the 5-batch epoch."""
    short = ["bench.steps=8", "bench.warmup=1", "bench.latency_iters=2", "bench.repeats=1"]
    cfg = compose_config(
        [*TINY, "scheduler=plateau", *short],
        output_dir=tmp_path,
        config_name="bench",
    )
    result = bench(cfg)
    assert result["lightning_images_per_s"] > 0 and result["plain_images_per_s"] > 0


def test_bench_batches_are_drawn_anew_each_epoch() -> None:
    """Past one epoch the loader is iterated again (decoding, augmenting), not replayed from memory
    as ``itertools.cycle`` would: a replay flatters the plain loop and the data time."""

    class Loader:
        def __init__(self) -> None:
            self.epochs = 0

        def __iter__(self):
            self.epochs += 1
            return iter([self.epochs] * 3)

    loader = Loader()
    batches = _epochs(loader)
    drawn = [next(batches) for _ in range(7)]
    assert drawn == [1, 1, 1, 2, 2, 2, 3] and loader.epochs == 3
