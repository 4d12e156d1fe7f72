"""``leuk.cli.preview`` (``leuk.data.preview``) writes its grid, with the lesion columns when the
pipeline crops lesions."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from leuk.cli.preview import preview
from tests.helpers import TINY, compose_config


@pytest.mark.parametrize("preprocess", ["none", "aldl"])
def test_preview_grid(preprocess: str, tmp_path: Path) -> None:
    cfg = compose_config(
        [*TINY, "augmentation=mcb", f"preprocess={preprocess}", "preview.per_class=1", "preview.augmented=2"],
        output_dir=tmp_path,
        config_name="preview",
    )
    out = preview(cfg)
    width, height = Image.open(out).size
    columns = 2 + (2 if preprocess == "aldl" else 0) + 2
    # Four rows (one image per class), one column per panel.
    assert width / height == pytest.approx(2.2 * columns / (2.3 * 4), rel=0.05)
