"""A checkpoint file that cannot be used (empty, truncated, not a checkpoint, damaged inside) is
refused with one line naming the file and what is wrong, not torch's or pickle's stack trace: by
``load_trained`` (evaluation, prediction) and by ``check_checkpoint`` (``ckpt_path=`` of training,
before any image is decoded). No test here trains."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import leuk.cli.train as train_cli
from leuk.checkpoints import CheckpointError, check_checkpoint, load_trained
from leuk.cli.train import train
from tests.helpers import TINY, compose_config

INFO = {
    "format_version": 2,
    "model": {"name": "mcb_hypernet"},
    "num_classes": 4,
    "image_size": 32,
    "class_names": ["a", "b", "c", "d"],
}
LOADERS: dict[str, Callable[[Path], object]] = {
    "load_trained": load_trained,
    "check_checkpoint": lambda path: check_checkpoint(str(path), "mcb_hypernet"),
}


def saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


FILES = {
    "empty": (b"", r"is empty \(0 bytes\)"),
    # A save cut short (the disk filled up, the job was killed): the zip's directory is missing.
    "truncated": (saved({"state_dict": {"w": torch.zeros(256)}})[:700], r"is truncated \(700 bytes"),
    "not_a_checkpoint": (b"epoch,loss\n0,1.2\n", r"is not a PyTorch checkpoint"),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("kind", sorted(FILES))
def test_unreadable_file_is_named_without_torchs_trace(tmp_path: Path, kind: str, loader: str) -> None:
    data, message = FILES[kind]
    path = tmp_path / f"{kind}.ckpt"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=message) as info:
        LOADERS[loader](path)
    assert str(path) in str(info.value)
    # torch's and pickle's frames are not chained below it (their message is in the line).
    error = info.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


NAMED = {"leuk_model_name": "mcb_hypernet", "state_dict": {"w": 1}}
DAMAGED = {
    "no_model": ({**NAMED, "leuk": {k: v for k, v in INFO.items() if k != "model"}}, r"lacks model"),
    "format_not_a_number": ({**NAMED, "leuk": {**INFO, "format_version": "x"}}, r"format_version 'x'"),
    "no_weights": ({"leuk": INFO, "leuk_model_name": "mcb_hypernet"}, r"holds no network weights"),
    "hyperparameters_not_a_mapping": ({"hyper_parameters": None, "state_dict": {"w": 1}}, r"not a leuk"),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_damaged_contents_are_named(tmp_path: Path, kind: str, loader: str) -> None:
    content, message = DAMAGED[kind]
    path = tmp_path / "damaged.ckpt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=message) as info:
        LOADERS[loader](path)
    assert str(path) in str(info.value)


def test_training_checks_its_checkpoint_before_building_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ckpt_path=`` pointing at a damaged file stops before any image is decoded; a user error, it
    leaves nothing in the run folder: no failed.json, no lock."""

    def built(cfg: object) -> None:
        raise AssertionError("the run was built before its checkpoint was checked")

    monkeypatch.setattr(train_cli, "build_run", built)
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"")
    cfg = compose_config([*TINY, "logger=none", f"ckpt_path={path}"], output_dir=tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"last\.ckpt' is empty"):
        train(cfg)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []
