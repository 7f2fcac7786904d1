"""Grad-CAM and Grad-CAM++ maps through MONAI, safe to call from inside inference mode."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from monai.visualize import GradCAM, GradCAMpp, ModelWithHooks
from torch import nn

log = logging.getLogger(__name__)

CAM_METHODS = ("gradcam", "gradcam++")


def stride_aligned_upsampler(
    spatial_size: Sequence[int],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Upsample a strided feature map so each cell lands on the pixel it is centred on.

    In a ResNet whose downsampling layers are padded stride-2 convolutions and pools (a 7x7/2 stem
    with padding 3, a 3x3/2 max-pool and 3x3/2 convolutions with padding 1), cell ``i`` of a
    stride-``s`` map is centred on input pixel ``s * i``. A plain resize (MONAI's default
    upsampler, ``align_corners=False``) puts it at ``s * i + (s - 1) / 2`` instead, displacing every
    map by half a cell towards the bottom right: 16 pixels for the last stage of a ResNet-18. Here
    pixel ``y`` samples the map at ``y / s`` (bilinear, clamped at the border).

    Args:
        spatial_size: ``(H, W)`` of the input image.

    Returns:
        A function mapping ``(B, C, h, w)`` maps to ``(B, C, H, W)``.
    """

    def up(x: torch.Tensor) -> torch.Tensor:
        grids = []
        for size, cells in zip(spatial_size, x.shape[2:], strict=True):
            stride = 2 ** round(math.log2(size / cells)) if cells < size else 1
            pos = torch.arange(size, dtype=x.dtype, device=x.device) / stride  # in cell units
            grids.append((2 * pos / max(cells - 1, 1) - 1).clamp(-1, 1))
        gy, gx = torch.meshgrid(*grids, indexing="ij")
        grid = torch.stack((gx, gy), dim=-1).expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)

    return up


class _RemovableHooks(ModelWithHooks):
    """MONAI's ``ModelWithHooks`` that can take its hooks off the model again.

    MONAI registers its hooks for good: every new ``GradCAM(model, ...)`` would leave two more
    hooks (and references to the last activations) on the caller's model. This subclass keeps the
    handles, so :func:`compute_cams` leaves the model as it found it.
    """

    def __init__(self, model: nn.Module, target_layer: str) -> None:
        layer = dict(model.named_modules()).get(target_layer)
        if layer is None or not target_layer:
            names = [n for n, _ in model.named_children()]
            raise ValueError(
                f"target_layer {target_layer!r} is not a module of the model; top-level names: "
                f"{names}"
            )
        super().__init__(model, target_layer, register_forward=False, register_backward=False)
        self.register_forward = self.register_backward = True
        self._handles = [
            layer.register_forward_hook(self.forward_hook(target_layer)),
            layer.register_full_backward_hook(self.backward_hook(target_layer)),
        ]

    def class_score(self, logits: torch.Tensor, class_idx: int) -> torch.Tensor:
        # MONAI squeezes the score to (B,); Grad-CAM++ then multiplies exp(score) with the
        # (B, C, h, w) gradient, which broadcasts along the width axis instead of the batch
        # whenever B > 1. Shaped (B, 1, 1, 1) it scales each image's gradient by its own score.
        if logits.ndim != 2 or not 0 <= class_idx < logits.shape[1]:
            raise ValueError(
                f"output_index {class_idx} out of range for logits of shape {tuple(logits.shape)}"
            )
        return logits[:, class_idx].reshape(-1, 1, 1, 1)

    def remove(self) -> None:
        """Take the hooks off the model and drop the cached tensors."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.activations.clear()
        self.gradients.clear()
        self.score = None


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of a ``(B, 1, H, W)`` batch to [0, 1] (min to 0, max to 1); flat maps → 0."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    span = hi - lo
    return torch.where(span > 0, (maps - lo) / span.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)


@contextmanager
def _frozen_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode, parameters without ``requires_grad``, their ``.grad`` kept; all restored after.

    Gradients only need to reach the target layer's output (the input requires grad), so the
    parameters need none: faster, and a model being trained keeps its accumulated gradients.
    """
    was_training = model.training
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag, grad in zip(params, flags, grads, strict=True):
            p.requires_grad_(flag)
            p.grad = grad
        model.train(was_training)


def compute_cams(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    *,
    output_index: int = 0,
    method: str = "gradcam",
    target_layer: str = "layer4",
) -> np.ndarray:
    """Class activation maps of one output, upsampled to the input size and scaled to [0, 1].

    Works when the caller is inside ``torch.inference_mode()`` or ``torch.no_grad()`` (as in a
    Lightning validation or predict step): the maps are computed on a fresh copy of the input
    with gradients switched back on. The model is put in eval mode for the call and its mode,
    ``requires_grad`` flags and ``.grad`` tensors are restored afterwards; no hooks are left on it.

    Args:
        model: any module mapping ``(B, C, S, S)`` images to ``(B, K)`` logits (for the
            Lightning module, which normalises its input itself, the module itself with
            ``target_layer="net.layer4"``).
        images: ``(B, C, S, S)`` or ``(C, S, S)`` batch, moved to the model's device.
        output_index: which logit (finding) the map explains, in ``[0, K)``.
        method: ``"gradcam"`` or ``"gradcam++"``.
        target_layer: dotted name of the module whose activations and gradients are used
            (``model.named_modules()`` lists the names); the last residual stage by default.

    Returns:
        ``(B, S, S)`` float32 array in [0, 1], each map scaled so its maximum is 1 (a map with no
        positive evidence is all zeros).

    Raises:
        ValueError: unknown ``method``, bad ``images`` shape, ``output_index`` out of range or
            ``target_layer`` not found.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"method must be one of {CAM_METHODS}, got {method!r}")
    x = torch.as_tensor(images)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")
    if output_index < 0:
        raise ValueError(f"output_index must be >= 0, got {output_index}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else x.device
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    hooks = _RemovableHooks(model, target_layer)
    cam_cls = GradCAM if method == "gradcam" else GradCAMpp
    cam = cam_cls(
        nn_module=hooks,
        target_layers=target_layer,
        postprocessing=_normalise,
        upsampler=stride_aligned_upsampler,
    )
    try:
        with torch.inference_mode(False), torch.enable_grad(), _frozen_eval(model):
            # A clone made outside inference mode is a normal tensor that autograd can record.
            inp = x.detach().to(device=device, dtype=dtype).clone().requires_grad_(True)
            maps = cam(inp, class_idx=output_index)
    finally:
        hooks.remove()
    log.debug("computed %s maps of output %d for %d images", method, output_index, len(x))
    return maps[:, 0].detach().float().cpu().numpy()
