"""Grad-CAM heat maps (the ``grad-cam`` package, extra ``explain``).

The target layer is the one the network names with ``gradcam_layer()`` (the module whose output
covers its whole representation, e.g. a fused multi-branch map), else its last convolution. The
network is the trained one, normalization included (``TrainedModel.net``): it takes pixels on the
0–255 scale, as every other inference path does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from leuk.plots import image_grid_plot


class NoConvolutionError(ValueError):
    """A network without a 2-d convolution has no feature map for Grad-CAM to weight."""


def require_grad_cam() -> None:
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "gradcam=true needs the grad-cam package: pip install 'leuk[explain]' (or pip install grad-cam)"
        ) from exc


def last_conv_layer(net: nn.Module, image_size: int) -> tuple[str, nn.Conv2d]:
    """The last ``nn.Conv2d`` the forward pass runs (not the last one registered: branches and
    heads may be declared in any order)."""
    arch = getattr(net, "body", net)
    names = {m: n for n, m in arch.named_modules() if isinstance(m, nn.Conv2d)}
    if not names:
        raise NoConvolutionError(
            f"Grad-CAM needs a convolutional layer, and {type(net).__name__} has no nn.Conv2d; "
            "set gradcam=false for this model"
        )
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in names]
    device = next(net.parameters()).device
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for h in hooks:
            h.remove()
    layer = order[-1] if order else next(reversed(names))
    return names[layer], layer  # type: ignore[return-value]


def gradcam_target(net: nn.Module, image_size: int) -> tuple[str, nn.Module]:
    """Grad-CAM's target layer and its qualified name: ``net.gradcam_layer()`` where the network
    defines it, else :func:`last_conv_layer`. Names are the architecture's own (``net.body``'s,
    behind the normalization layer)."""
    hook = getattr(net, "gradcam_layer", None)
    if not callable(hook):
        return last_conv_layer(net, image_size)
    layer = hook()
    arch = getattr(net, "body", net)
    name = next((n for n, m in arch.named_modules() if m is layer), None)
    if name is None:
        raise ValueError(
            f"{type(net).__name__}.gradcam_layer() returned a module that is not part of the network"
        )
    return name, layer


def grad_cam(net: nn.Module, images: np.ndarray, targets: Sequence[int], layer: nn.Module) -> np.ndarray:
    """One heat map (H×W in [0, 1]) per HWC uint8 image, for the class given in ``targets``."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    device = next(net.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().to(device)
    cam = GradCAM(model=net, target_layers=[layer])
    try:
        with torch.enable_grad():
            return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    finally:
        cam.activations_and_grads.release()
        net.zero_grad(set_to_none=True)


def gradcam_grid(
    net: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    per_class: int,
    path: str | Path,
) -> dict[str, object]:
    """Heat maps of the predicted class on the first ``per_class`` test images of each true class,
    overlaid on the images, in one grid (a row per class)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    layer_name, layer = gradcam_target(net, images.shape[1])
    # A row per class: a class with fewer images leaves its row's remaining cells blank.
    slots = [
        [int(i) for i in np.flatnonzero(targets == k)[:per_class]] + [-1] * per_class
        for k in range(len(class_names))
    ]
    slots = [row[:per_class] for row in slots]
    chosen = [i for row in slots for i in row if i >= 0]
    preds = probs.argmax(axis=1)
    heat: dict[int, np.ndarray] = {}
    for start in range(0, len(chosen), 16):
        part = chosen[start : start + 16]
        heat.update(zip(part, grad_cam(net, images[part], preds[part], layer), strict=True))
    blank = np.ones(images.shape[1:], np.float32)
    overlays, titles = [], []
    for i in (i for row in slots for i in row):
        if i < 0:
            overlays.append(blank)
            titles.append("")
            continue
        overlays.append(show_cam_on_image(images[i].astype(np.float32) / 255.0, heat[i], use_rgb=True))
        titles.append(f"{class_names[targets[i]]} → {class_names[preds[i]]} ({probs[i].max():.2f})")
    image_grid_plot(
        overlays,
        titles,
        path,
        f"Grad-CAM of the predicted class at layer {layer_name} (true → predicted)",
        ncols=max(1, per_class),
    )
    return {"layer": layer_name, "images": len(chosen), "per_class": per_class}
