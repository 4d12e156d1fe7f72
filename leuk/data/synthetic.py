"""Synthetic blood-smear images: one stained white cell among red cells on a pink background.

The four classes differ the way the ALL subtypes of the Taleqani dataset do under the microscope:
benign hematogones are small cells with a round nucleus of dense, smooth chromatin and little
cytoplasm; Early Pre-B blasts are a little larger with fine chromatin; Pre-B blasts are larger,
with more cytoplasm and visible nucleoli; Pro-B blasts are the largest, with irregular, cleaved
nuclei and coarse chromatin. Every feature is drawn from a class-specific distribution wide enough
that the classes overlap, and the image gets stain, illumination, blur and sensor noise, so the task
can be learnt but not read off one pixel. The images are written as a real class-folder tree and
read back by the same reader as real data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from leuk.data.sources import SourceScan, scan_class_folders
from leuk.utils.temp_dirs import make_temp_dir, remove_stale_temp_dirs

log = logging.getLogger(__name__)

# Folder name -> display name, the same as the Taleqani ALL dataset's.
CLASSES = {"Benign": "Benign", "Early": "Early Pre-B", "Pre": "Pre-B", "Pro": "Pro-B"}


@dataclass(frozen=True)
class CellMorphology:
    """Mean (and spread) of a class's cell features; sizes are fractions of the image side."""

    cell_radius: tuple[float, float]
    nc_ratio: tuple[float, float]  # nucleus radius / cell radius
    irregularity: tuple[float, float]  # amplitude of the nuclear outline's harmonics
    chromatin_scale: tuple[float, float]  # texture grain in pixels at 128 px (coarse = large)
    chromatin_contrast: tuple[float, float]
    nucleoli: tuple[int, int]  # min, max count
    cleft_probability: float


MORPHOLOGY: dict[str, CellMorphology] = {
    "Benign": CellMorphology(
        (0.18, 0.02), (0.88, 0.04), (0.03, 0.02), (1.0, 0.3), (0.08, 0.04), (0, 0), 0.05
    ),
    "Early": CellMorphology((0.22, 0.02), (0.80, 0.04), (0.06, 0.03), (1.3, 0.4), (0.22, 0.06), (0, 1), 0.10),
    "Pre": CellMorphology((0.26, 0.02), (0.68, 0.04), (0.06, 0.03), (2.0, 0.5), (0.26, 0.06), (1, 2), 0.10),
    "Pro": CellMorphology((0.30, 0.02), (0.76, 0.04), (0.14, 0.04), (3.0, 0.7), (0.36, 0.07), (1, 3), 0.50),
}


def _soft_disk(dist: np.ndarray, radius: np.ndarray | float, edge: float = 1.0) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(radius - dist) / edge))


def _paint(img: np.ndarray, mask: np.ndarray, color: np.ndarray) -> np.ndarray:
    m = mask[..., None]
    return img * (1.0 - m) + color * m


def render_cell(folder: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One RGB uint8 image of a ``folder``-class cell (``folder`` is a key of ``MORPHOLOGY``)."""
    morph = MORPHOLOGY[folder]
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)

    def draw(mean_sd: tuple[float, float], lo: float) -> float:
        return max(lo, rng.normal(*mean_sd))

    # Background: pink plasma with slow illumination changes.
    bg = np.array([234.0, 198.0, 208.0]) + rng.normal(0, 6, 3)
    light = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), size / 6)
    light = light / (np.abs(light).max() + 1e-8) * 8.0
    img = np.broadcast_to(bg, (size, size, 3)) + light[..., None]

    # Red cells with a pale centre, some cut by the frame.
    rbc_color = np.array([214.0, 118.0, 130.0]) + rng.normal(0, 8, 3)
    for _ in range(rng.poisson(7)):
        cy, cx = rng.uniform(-0.1, 1.1, 2) * s
        r = rng.uniform(0.08, 0.12) * s
        d = np.hypot(yy - cy, xx - cx)
        img = _paint(img, _soft_disk(d, r, 1.2) * 0.9, rbc_color)
        img = _paint(img, _soft_disk(d, 0.4 * r, 2.0) * 0.35, bg)

    # The white cell: basophilic cytoplasm, then the nucleus.
    cy, cx = s / 2 + rng.normal(0, 0.05 * s, 2)
    cell_r = draw(morph.cell_radius, 0.12) * s
    dy, dx = yy - cy, xx - cx
    d = np.hypot(dy, dx)
    theta = np.arctan2(dy, dx)
    cyto_color = np.array([176.0, 162.0, 212.0]) + rng.normal(0, 7, 3)
    cyto_outline = cell_r * (1 + 0.03 * np.cos(2 * theta + rng.uniform(0, 2 * np.pi)))
    img = _paint(img, _soft_disk(d, cyto_outline, 1.0), cyto_color)

    nuc_r = min(draw(morph.nc_ratio, 0.5), 0.97) * cell_r
    # An eccentric nucleus where there is cytoplasm to push it aside.
    shift = (cell_r - nuc_r) * rng.uniform(0, 0.8)
    angle = rng.uniform(0, 2 * np.pi)
    ny, nx = cy + shift * np.sin(angle), cx + shift * np.cos(angle)
    ndy, ndx = yy - ny, xx - nx
    nd = np.hypot(ndy, ndx)
    ntheta = np.arctan2(ndy, ndx)
    irregular = max(0.0, rng.normal(*morph.irregularity))
    outline = np.ones_like(nd)
    for k in range(2, 7):
        outline += (
            irregular
            * rng.uniform(0.3, 1.0)
            / (k - 1) ** 0.5
            * np.cos(k * ntheta + rng.uniform(0, 2 * np.pi))
        )
    if rng.random() < morph.cleft_probability:
        # A nuclear cleft: a narrow notch cut into the outline.
        phi = rng.uniform(0, 2 * np.pi)
        outline -= 0.35 * np.exp(-(np.angle(np.exp(1j * (ntheta - phi))) ** 2) / (2 * 0.12**2))
    nucleus = _soft_disk(nd, nuc_r * outline, 0.8)

    grain = max(0.5, rng.normal(*morph.chromatin_scale)) * size / 128
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), grain)
    texture /= texture.std() + 1e-8
    contrast = max(0.0, rng.normal(*morph.chromatin_contrast))
    nuc_color = np.array([96.0, 50.0, 138.0]) + rng.normal(0, 8, 3)
    shade = np.clip(1.0 + contrast * texture, 0.5, 1.7)[..., None]
    nuc_rgb = np.clip(nuc_color * shade, 0, 255)
    img = img * (1 - nucleus[..., None]) + nuc_rgb * nucleus[..., None]

    n_lo, n_hi = morph.nucleoli
    for _ in range(rng.integers(n_lo, n_hi + 1)):
        rr = rng.uniform(0, 0.55) * nuc_r
        a = rng.uniform(0, 2 * np.pi)
        spot = _soft_disk(
            np.hypot(yy - ny - rr * np.sin(a), xx - nx - rr * np.cos(a)),
            rng.uniform(0.05, 0.09) * cell_r,
            0.8,
        )
        img = _paint(img, spot * nucleus * 0.6, np.array([150.0, 120.0, 190.0]))

    # Stain strength, illumination, optics and sensor.
    img = img * rng.uniform(0.9, 1.08) + rng.normal(0, 5)
    img = ndimage.gaussian_filter(img, sigma=(rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0), 0))
    img = img + rng.normal(0, rng.uniform(2, 6), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class SyntheticSpec:
    images_per_class: int
    size: int
    seed: int
    fmt: str
    version: int = 2

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def generate_dataset(root: str | Path, spec: SyntheticSpec) -> Path:
    """Write the images of ``spec`` under ``root/<spec key>/<class>/`` once; return that folder.

    Each image has its own random stream derived from (seed, class, index), so the data set is the
    same for a seed whatever order or process generates it. The folder appears atomically: two
    processes generating at once (DDP ranks, parallel sweep jobs) cannot leave a half-written tree,
    and the temporary folder of a generator that was killed is removed by the next one
    (``leuk.utils.temp_dirs``).
    """
    root = Path(root).expanduser()
    target = root / f"synthetic_{spec.key()}"
    if (target / "spec.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(root)
    tmp = make_temp_dir(root)
    try:
        for class_index, folder in enumerate(CLASSES):
            (tmp / folder).mkdir()
            for i in range(spec.images_per_class):
                rng = np.random.default_rng([spec.seed, class_index, i])
                image = render_cell(folder, spec.size, rng)
                Image.fromarray(image).save(tmp / folder / f"{folder.lower()}_{i:05d}.{spec.fmt}")
        (tmp / "spec.json").write_text(json.dumps(asdict(spec), indent=2))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "spec.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("generated %d synthetic images in %s", spec.images_per_class * len(CLASSES), target)
    return target


class SyntheticSource:
    """The built-in data set (``data=synthetic``): generated on first use, then read from disk."""

    def __init__(
        self,
        root: str | None,
        images_per_class: int = 150,
        size: int = 128,
        seed: int = 0,
        fmt: str = "png",
    ) -> None:
        if fmt not in ("png", "jpg", "jpeg"):
            raise ValueError(f"data.source.fmt must be png or jpg, got '{fmt}'")
        if images_per_class < 1 or size < 32:
            raise ValueError("data.source.images_per_class must be ≥ 1 and data.source.size ≥ 32")
        if not root:
            raise ValueError("no data root given: set data.root (the folder the synthetic images go to)")
        self.root = root
        self.spec = SyntheticSpec(images_per_class, size, seed, fmt)

    def scan(self) -> SourceScan:
        folder = generate_dataset(self.root, self.spec)
        scan = scan_class_folders(folder, CLASSES, own_files=("spec.json",))
        scan.ignored_files = [f for f in scan.ignored_files if not f.endswith("spec.json")]
        scan.description = f"synthetic ({folder})"
        return scan

    @property
    def cache_key(self) -> str:
        return f"synthetic:{self.spec.key()}"
