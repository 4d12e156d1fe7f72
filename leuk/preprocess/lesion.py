"""ALDL's lesion segmentation (§4.2.1–4.2.5) and region-of-interest crop (§4.2.6, Eqs. 9–10).

The mask comes from the purple index in RGB (Eqs. 4–5), or, for the colour-space study (§5.1–5.2,
Table 4), from the paper's rule in HSV, LAB or HED; the same morphological refinement follows.
The crop is always taken from an RGB image: by default the original one (Eq. 9), so the colour
space changes only the segmentation, never the classifier's input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import cv2
import numpy as np
from skimage import color
from skimage.filters import threshold_otsu
from skimage.measure import label, regionprops
from skimage.morphology import disk, remove_small_objects

from leuk.preprocess.base import EventCounter, PreprocessConfigError, Step, check_image

THRESHOLD_RANGE = (0.1, 0.3)
SegmentationSpace = Literal["rgb", "hsv", "lab", "hed"]
SEGMENTATION_SPACES: tuple[str, ...] = get_args(SegmentationSpace)
CropFrom = Literal["original", "input"]
CROP_FROM: tuple[str, ...] = get_args(CropFrom)


def purple_index(image: np.ndarray) -> np.ndarray:
    """PI = (R + B) / 2 − G on [0, 1] RGB: high where haematoxylin/Giemsa stains (violet nuclei)."""
    rgb = image.astype(np.float32) / 255.0
    return (rgb[..., 0] + rgb[..., 2]) / 2.0 - rgb[..., 1]


@dataclass(frozen=True)
class LesionSettings:
    """The segmentation's parameters, as the ALDL paper gives them (defaults)."""

    threshold: float | Literal["otsu"] = 0.15
    opening_radius: int = 3
    morph_iterations: int = 2
    min_area: int = 80
    smooth_sigma: float = 1.0
    space: str = "rgb"
    # §5.1: purple nuclei at H ≈ 270° ± 15° with S > 0.2.
    hsv_hue: tuple[float, float] = (255.0, 285.0)
    hsv_min_saturation: float = 0.2
    # §5.1 places nuclei at negative a* and positive b* without thresholds; stained nuclei are
    # purple, a* > 0 and b* < 0 (see conf/preprocess/aldl.yaml for the measured values).
    lab_a: tuple[float, float] = (20.0, 128.0)
    lab_b: tuple[float, float] = (-128.0, -20.0)
    # The paper gives no threshold on the haematoxylin optical density (a number, or "otsu").
    hed_threshold: float | Literal["otsu"] = 0.05


def _candidates(image: np.ndarray, s: LesionSettings) -> np.ndarray:
    """The raw (unrefined) lesion pixels of ``image`` by the rule of ``s.space``."""
    if s.space == "rgb":
        pi = purple_index(image)
        theta = float(threshold_otsu(pi)) if s.threshold == "otsu" else float(s.threshold)
        return pi >= theta  # Eq. 5
    if s.space == "hsv":
        hsv = color.rgb2hsv(image)
        hue = hsv[..., 0] * 360.0
        return (hue >= s.hsv_hue[0]) & (hue <= s.hsv_hue[1]) & (hsv[..., 1] > s.hsv_min_saturation)
    if s.space == "lab":
        lab = color.rgb2lab(image)
        a, b = lab[..., 1], lab[..., 2]
        return (a >= s.lab_a[0]) & (a <= s.lab_a[1]) & (b >= s.lab_b[0]) & (b <= s.lab_b[1])
    h = color.rgb2hed(image)[..., 0]
    if s.hed_threshold != "otsu":
        return h >= float(s.hed_threshold)
    return h > float(threshold_otsu(h)) if np.ptp(h) > 0 else np.zeros(h.shape, bool)


def lesion_mask(image: np.ndarray, s: LesionSettings) -> np.ndarray:
    """Boolean mask of the lesions (stained cells) of an RGB uint8 image.

    The candidates of ``s.space`` (RGB: PI ≥ θ, or Otsu's threshold of PI); an opening with a
    disk; then erosion applied ``morph_iterations`` times followed by as many dilations (an opening
    repeated with the same element would change nothing, so "erosion and dilation twice" is read
    as two of each in a row, which removes thin bridges up to twice as wide); connected components
    smaller than ``min_area`` pixels removed; the mask smoothed by a Gaussian (σ =
    ``smooth_sigma``) and cut at one half.
    """
    mask = _candidates(image, s).astype(np.uint8)
    kernel = disk(s.opening_radius).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    if s.morph_iterations:
        mask = cv2.erode(mask, kernel, iterations=s.morph_iterations)
        mask = cv2.dilate(mask, kernel, iterations=s.morph_iterations)
    mask = remove_small_objects(mask.astype(bool), max_size=s.min_area - 1, connectivity=2)
    if s.smooth_sigma > 0:
        mask = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), s.smooth_sigma) > 0.5
    return mask


def touches_border(box: tuple[int, int, int, int], shape: tuple[int, ...]) -> bool:
    top, left, bottom, right = box
    return top == 0 or left == 0 or bottom == shape[0] or right == shape[1]


def lesion_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(top, left, bottom, right), exclusive ends, of every 8-connected region, largest first."""
    regions = sorted(regionprops(label(mask, connectivity=2)), key=lambda r: -r.area)
    return [tuple(int(v) for v in r.bbox) for r in regions]  # type: ignore[misc]


def largest_box(mask: np.ndarray, interior_first: bool = False) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right), exclusive ends, of the largest 8-connected region, or None.

    ``interior_first``: the largest region that does not touch the image border, where there is
    one. A cell cut by the border (or a smear smudge along it) can outsize every whole cell.
    """
    regions = regionprops(label(mask, connectivity=2))
    if interior_first:
        inside = [r for r in regions if not touches_border(r.bbox, mask.shape)]
        regions = inside or regions
    if not regions:
        return None
    biggest = max(regions, key=lambda r: r.area)
    return tuple(int(v) for v in biggest.bbox)  # type: ignore[return-value]


def expand_box(
    box: tuple[int, int, int, int], margin: float, shape: tuple[int, ...], square: bool
) -> tuple[int, int, int, int]:
    """``box`` grown by ``margin`` × its side on every side (made square first if asked), in the image."""
    top, left, bottom, right = box
    h, w = bottom - top, right - left
    if square:
        side = max(h, w)
        top, left = top - (side - h) / 2, left - (side - w) / 2
        h = w = side
    top, bottom = top - margin * h, top + h + margin * h
    left, right = left - margin * w, left + w + margin * w
    height, width = shape[:2]
    return (
        max(0, int(np.floor(top))),
        max(0, int(np.floor(left))),
        min(height, int(np.ceil(bottom))),
        min(width, int(np.ceil(right))),
    )


def _pair(name: str, value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise PreprocessConfigError(f"lesion_crop.{name} must be a pair [low, high], got {value!r}") from None
    if lo > hi:
        raise PreprocessConfigError(f"lesion_crop.{name} must have low <= high, got {value!r}")
    return lo, hi


class LesionCrop(Step):
    """ALDL's region of interest: the box of the largest lesion, cropped and resized (bilinear).

    The lesions are segmented on this step's input (in ``preprocess=aldl`` the CLAHE- and
    Reinhard-normalised image) in the colour space ``space`` (the paper's colour-space study). The
    box is cropped from the pipeline's original RGB image (``crop_from: original``, Eq. 9, as
    ``preprocess=aldl`` sets it) or from this step's input (``crop_from: input``, the default of a
    step built alone, which may follow steps that change the size). ``margin`` widens the box by
    that fraction of its height/width on each side; ``square: true`` first makes it square around
    its centre, so the resize does not distort the cell (the paper resizes the box as it is). Where
    no lesion is found the whole image is used and the event counted (``stats()["no_lesion"]``).

    The pipeline's ``__call__`` gives one image per image: the largest lesion's crop. With
    ``per_lesion: true`` the data module asks instead for every lesion's crop (``crops``, the
    paper's "for each detected lesion i", Eq. 9), each a sample carrying its image's label and
    split. ``max_lesions`` keeps at most that many, largest first (null: all of them).
    """

    name = "lesion_crop"

    def __init__(
        self,
        threshold: float | Literal["otsu"] = 0.15,
        margin: float = 0.1,
        size: int = 224,
        square: bool = False,
        opening_radius: int = 3,
        morph_iterations: int = 2,
        min_area: int = 80,
        smooth_sigma: float = 1.0,
        interior_first: bool = False,
        space: SegmentationSpace = "rgb",
        crop_from: CropFrom = "input",
        hsv_hue: tuple[float, float] = (255.0, 285.0),
        hsv_min_saturation: float = 0.2,
        lab_a: tuple[float, float] = (20.0, 128.0),
        lab_b: tuple[float, float] = (-128.0, -20.0),
        hed_threshold: float | Literal["otsu"] = 0.05,
        per_lesion: bool = False,
        max_lesions: int | None = None,
    ) -> None:
        lo, hi = THRESHOLD_RANGE
        if threshold != "otsu" and (isinstance(threshold, (bool, str)) or not lo <= float(threshold) <= hi):
            raise PreprocessConfigError(
                f"lesion_crop.threshold (θ, on the purple index) must be in [{lo}, {hi}] or 'otsu'; "
                f"got {threshold!r}"
            )
        if not 0 <= margin <= 1:
            raise PreprocessConfigError(f"lesion_crop.margin must be in [0, 1], got {margin}")
        if size < 16:
            raise PreprocessConfigError(f"lesion_crop.size must be ≥ 16 px, got {size}")
        if opening_radius < 1 or morph_iterations < 0 or min_area < 1 or smooth_sigma < 0:
            raise PreprocessConfigError(
                "lesion_crop: opening_radius and min_area must be ≥ 1, morph_iterations and "
                f"smooth_sigma ≥ 0; got {opening_radius}, {min_area}, {morph_iterations}, {smooth_sigma}"
            )
        if space not in SEGMENTATION_SPACES:
            raise PreprocessConfigError(
                f"lesion_crop.space must be one of {', '.join(SEGMENTATION_SPACES)}; got {space!r}"
            )
        if crop_from not in CROP_FROM:
            raise PreprocessConfigError(
                f"lesion_crop.crop_from must be one of {', '.join(CROP_FROM)}; got {crop_from!r}"
            )
        if not 0 <= hsv_min_saturation < 1:
            raise PreprocessConfigError(
                f"lesion_crop.hsv_min_saturation must be in [0, 1), got {hsv_min_saturation}"
            )
        if hed_threshold != "otsu" and isinstance(hed_threshold, (bool, str)):
            raise PreprocessConfigError(
                f"lesion_crop.hed_threshold must be a number or 'otsu'; got {hed_threshold!r}"
            )
        is_count = isinstance(max_lesions, int) and not isinstance(max_lesions, bool)
        if max_lesions is not None and not (is_count and max_lesions >= 1):
            raise PreprocessConfigError(
                f"lesion_crop.max_lesions must be a positive integer or null (no cap); got {max_lesions!r}"
            )
        # Only a per-lesion step names its keys: the single crop's cache key (and so every decoded
        # cache made before the keys existed) stays as it was.
        per_lesion_params = (
            {"per_lesion": True, "max_lesions": None if max_lesions is None else int(max_lesions)}
            if per_lesion
            else {}
        )
        super().__init__(
            threshold=threshold if threshold == "otsu" else float(threshold),
            margin=float(margin),
            size=int(size),
            square=bool(square),
            opening_radius=int(opening_radius),
            morph_iterations=int(morph_iterations),
            min_area=int(min_area),
            smooth_sigma=float(smooth_sigma),
            interior_first=bool(interior_first),
            space=space,
            crop_from=crop_from,
            hsv_hue=list(_pair("hsv_hue", hsv_hue)),
            hsv_min_saturation=float(hsv_min_saturation),
            lab_a=list(_pair("lab_a", lab_a)),
            lab_b=list(_pair("lab_b", lab_b)),
            hed_threshold=hed_threshold if hed_threshold == "otsu" else float(hed_threshold),
            **per_lesion_params,
        )
        self.per_lesion = bool(per_lesion)
        self.max_lesions = None if max_lesions is None else int(max_lesions)
        p = self.params
        self.settings = LesionSettings(
            threshold=p["threshold"],
            opening_radius=p["opening_radius"],
            morph_iterations=p["morph_iterations"],
            min_area=p["min_area"],
            smooth_sigma=p["smooth_sigma"],
            space=space,
            hsv_hue=tuple(p["hsv_hue"]),
            hsv_min_saturation=p["hsv_min_saturation"],
            lab_a=tuple(p["lab_a"]),
            lab_b=tuple(p["lab_b"]),
            hed_threshold=p["hed_threshold"],
        )
        self._events = EventCounter("images", "no_lesion", "at_border")

    @property
    def uses_original(self) -> bool:
        """Whether the pipeline must hand this step its original image (``apply_with_original``)."""
        return self.params["crop_from"] == "original"

    def _expand(self, box: tuple[int, int, int, int], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        return expand_box(box, self.params["margin"], shape, self.params["square"])

    def find(self, image: np.ndarray) -> tuple[int, int, int, int] | None:
        """The crop box (top, left, bottom, right) for ``image``, or None where no lesion is found."""
        box = largest_box(lesion_mask(image, self.settings), self.params["interior_first"])
        if box is None:
            return None
        if touches_border(box, image.shape):
            self._events.add("at_border")
        return self._expand(box, image.shape)

    def _lesions(self, image: np.ndarray) -> list[tuple[int, int, int, int]]:
        """The unexpanded boxes of the lesions, largest first, at most ``max_lesions``."""
        boxes = lesion_boxes(lesion_mask(image, self.settings))
        return boxes if self.max_lesions is None else boxes[: self.max_lesions]

    def find_all(self, image: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Every lesion's crop box (R_i of Eq. 9), largest lesion first (at most ``max_lesions``)."""
        return [self._expand(b, image.shape) for b in self._lesions(image)]

    def resize(self, roi: np.ndarray) -> np.ndarray:
        """Eq. 10: the patch resized to ``size``×``size`` (bilinear)."""
        size = self.params["size"]
        return cv2.resize(np.ascontiguousarray(roi), (size, size), interpolation=cv2.INTER_LINEAR)

    def _source(self, image: np.ndarray, original: np.ndarray | None) -> np.ndarray:
        if original is None or not self.uses_original:
            return image
        if original.shape != image.shape:
            raise PreprocessConfigError(
                f"lesion_crop.crop_from=original needs the steps before it to keep the image's size: "
                f"original {original.shape[:2]}, segmented {image.shape[:2]} (use crop_from=input)"
            )
        return original

    def crops(self, image: np.ndarray, original: np.ndarray | None = None) -> list[np.ndarray]:
        """The resized crop of every lesion of ``image`` (from ``original`` if given and
        ``crop_from`` is original); the whole image where there is none."""
        source = self._source(image, original)
        boxes = self.find_all(image)
        if not boxes:
            return [self.resize(source)]
        return [self.resize(source[t:b, left:r]) for t, left, b, r in boxes]

    def crops_with_original(self, image: np.ndarray, original: np.ndarray) -> list[np.ndarray]:
        """``crops``, counted: images, no_lesion, at_border (of the largest lesion) and patches."""
        check_image(image, f"preprocess step '{self.name}'")
        check_image(original, f"preprocess step '{self.name}' (original image)")
        source = self._source(image, original)
        lesions = self._lesions(image)
        self._events.add("images")
        if not lesions:
            self._events.add("no_lesion")
            patches = [self.resize(source)]
        else:
            if touches_border(lesions[0], image.shape):
                self._events.add("at_border")
            boxes = [self._expand(b, image.shape) for b in lesions]
            patches = [self.resize(source[t:b, left:r]) for t, left, b, r in boxes]
        self._events.add("patches", len(patches))
        return patches

    def apply_with_original(self, image: np.ndarray, original: np.ndarray) -> np.ndarray:
        """Segment ``image``, crop the largest lesion's box from ``original`` (``crop_from``)."""
        check_image(image, f"preprocess step '{self.name}'")
        check_image(original, f"preprocess step '{self.name}' (original image)")
        source = self._source(image, original)
        box = self.find(image)
        self._events.add("images")
        if box is None:
            self._events.add("no_lesion")
            return self.resize(source)
        top, left, bottom, right = box
        return self.resize(source[top:bottom, left:right])

    def apply(self, image: np.ndarray) -> np.ndarray:
        return self.apply_with_original(image, image)

    def stats(self) -> dict[str, Any]:
        return self._events.as_dict()
