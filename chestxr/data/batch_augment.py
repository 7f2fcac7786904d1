"""Train-time augmentation of a whole batch, as tensor operations on the batch's device.

The same transforms as MONAI's ``RandAffined`` (rotation, per-axis zoom, shift; bilinear, zero
padding), ``RandAdjustContrastd`` (gamma), ``RandScaleIntensityd`` and ``RandShiftIntensityd``,
each applied with probability ``prob``, with MONAI's parameter distributions. It runs after the
batch reaches the device (the data module's ``on_after_batch_transfer``): one batched affine grid
and a few element-wise operations instead of a per-sample chain in loader workers, which on a
GPU would starve the device and on a 2-core CPU takes cores from the training step.

Each sample's parameters are drawn from its own generator, seeded by the seed the sampler paired
with it (:class:`chestxr.data.datamodule.SeededSampler`): augmentation follows the global seed,
does not depend on batch composition or device, and a resumed run repeats it exactly.
No flips: laterality is kept (every affine has a positive determinant).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# columns of the parameter table drawn per sample
_AFFINE, _ANGLE, _ZOOM_Y, _ZOOM_X, _SHIFT_Y, _SHIFT_X = range(6)
_CONTRAST, _GAMMA, _SCALE_ON, _SCALE, _SHIFT_ON, _SHIFT = range(6, 12)
N_PARAMS = 12


class BatchAugment(torch.nn.Module):
    """Random laterality-preserving augmentation of a ``(B, 1, S, S)`` batch in [0, 1].

    Args:
        prob: probability of each of the four random transforms, drawn independently.
        rotate_degrees: rotation angle drawn uniformly in ``[-rotate_degrees, rotate_degrees]``.
        scale: zoom factor per axis drawn uniformly in ``[1 - scale, 1 + scale]``.
        translate: shift per axis, uniformly within this fraction of the image side.
        contrast_gamma: range of the gamma of the contrast change.
        intensity_scale: intensities multiplied by ``1 + U(-intensity_scale, intensity_scale)``.
        intensity_shift: ``U(-intensity_shift, intensity_shift)`` added to intensities.
        image_size: accepted for compatibility with the data config (the shift is relative).

    Raises:
        ValueError: a probability outside [0, 1] or a negative range (the value is quoted).
    """

    def __init__(
        self,
        *,
        prob: float = 0.5,
        rotate_degrees: float = 7.0,
        scale: float = 0.1,
        translate: float = 0.05,
        contrast_gamma: Sequence[float] = (0.8, 1.25),
        intensity_scale: float = 0.1,
        intensity_shift: float = 0.05,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"augment.prob must be in [0, 1], got {prob!r}")
        for name, value in (
            ("rotate_degrees", rotate_degrees),
            ("scale", scale),
            ("translate", translate),
            ("intensity_scale", intensity_scale),
            ("intensity_shift", intensity_shift),
        ):
            if value < 0:
                raise ValueError(f"augment.{name} must be >= 0, got {value!r}")
        if scale >= 1:
            raise ValueError(f"augment.scale must be < 1 (zoom factor 1 +- scale), got {scale!r}")
        lo, hi = (float(g) for g in contrast_gamma)
        if not 0 < lo <= hi:
            raise ValueError(
                f"augment.contrast_gamma must be 0 < low <= high, got {contrast_gamma}"
            )
        self.prob = float(prob)
        self.rotate = math.radians(rotate_degrees)
        self.scale = float(scale)
        self.translate = float(translate)
        self.gamma = (lo, hi)
        self.intensity_scale = float(intensity_scale)
        self.intensity_shift = float(intensity_shift)

    def draw(self, seeds: Sequence[int] | Tensor) -> Tensor:
        """The parameter table ``(B, 12)`` (float64) for samples with these seeds."""
        seeds = [int(s) for s in (seeds.tolist() if isinstance(seeds, Tensor) else seeds)]
        u = torch.stack(
            [
                torch.rand(
                    N_PARAMS, generator=torch.Generator().manual_seed(s), dtype=torch.float64
                )
                for s in seeds
            ]
        )
        p = torch.empty_like(u)
        sym = 2 * u - 1  # uniform in [-1, 1]
        p[:, _AFFINE] = (u[:, _AFFINE] < self.prob).double()
        p[:, _ANGLE] = sym[:, _ANGLE] * self.rotate
        p[:, _ZOOM_Y] = 1 + sym[:, _ZOOM_Y] * self.scale
        p[:, _ZOOM_X] = 1 + sym[:, _ZOOM_X] * self.scale
        p[:, _SHIFT_Y] = sym[:, _SHIFT_Y] * self.translate
        p[:, _SHIFT_X] = sym[:, _SHIFT_X] * self.translate
        p[:, _CONTRAST] = (u[:, _CONTRAST] < self.prob).double()
        p[:, _GAMMA] = self.gamma[0] + u[:, _GAMMA] * (self.gamma[1] - self.gamma[0])
        p[:, _SCALE_ON] = (u[:, _SCALE_ON] < self.prob).double()
        p[:, _SCALE] = 1 + sym[:, _SCALE] * self.intensity_scale
        p[:, _SHIFT_ON] = (u[:, _SHIFT_ON] < self.prob).double()
        p[:, _SHIFT] = sym[:, _SHIFT] * self.intensity_shift
        return p

    @staticmethod
    def affine_matrices(params: Tensor) -> Tensor:
        """``(B, 2, 3)`` matrices for :func:`torch.nn.functional.affine_grid` (output -> input).

        Identity where the affine transform is off; otherwise MONAI's ``Affine`` with the same
        rotation, zoom and shift (equal to float precision, tested). Coordinates are normalised
        to [-1, 1], so a shift of ``t`` (fraction of the side) is ``2 t``; the zoom scales the
        sampling grid as MONAI does (a factor above 1 samples a wider area: the content shrinks).
        """
        on = params[:, _AFFINE].bool()
        cos, sin = torch.cos(params[:, _ANGLE]), torch.sin(params[:, _ANGLE])
        zx, zy = params[:, _ZOOM_X], params[:, _ZOOM_Y]
        theta = torch.zeros(len(params), 2, 3, dtype=params.dtype)
        theta[:, 0, 0] = cos * zx
        theta[:, 0, 1] = sin * zy  # MONAI rotates in (y, x) order: the sine signs swap in (x, y)
        theta[:, 1, 0] = -sin * zx
        theta[:, 1, 1] = cos * zy
        # MONAI's grid is rotate @ translate @ scale: the shift is rotated too
        tx, ty = 2 * params[:, _SHIFT_X], 2 * params[:, _SHIFT_Y]
        theta[:, 0, 2] = cos * tx + sin * ty
        theta[:, 1, 2] = -sin * tx + cos * ty
        identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=params.dtype)
        return torch.where(on[:, None, None], theta, identity)

    def apply(self, images: Tensor, params: Tensor) -> Tensor:
        """Apply a drawn parameter table to ``images`` ``(B, C, H, W)``."""
        if images.ndim != 4 or len(images) != len(params):
            raise ValueError(
                f"expected images (B, C, H, W) and params (B, {N_PARAMS}), got "
                f"{tuple(images.shape)} and {tuple(params.shape)}"
            )
        dtype = images.dtype
        x = images.float()
        p = params.to(device=x.device, dtype=torch.float32)
        if bool(p[:, _AFFINE].any()):
            theta = self.affine_matrices(params).to(device=x.device, dtype=torch.float32)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        view = (-1, 1, 1, 1)
        if bool(p[:, _CONTRAST].any()):  # MONAI AdjustContrast: gamma on the min-max range
            lo = x.amin(dim=(1, 2, 3), keepdim=True)
            span = x.amax(dim=(1, 2, 3), keepdim=True) - lo
            gamma = p[:, _GAMMA].view(view)
            adjusted = ((x - lo) / (span + 1e-7)).clamp_min(0) ** gamma * span + lo
            x = torch.where(p[:, _CONTRAST].view(view).bool(), adjusted, x)
        factor = torch.where(p[:, _SCALE_ON].bool(), p[:, _SCALE], torch.ones_like(p[:, _SCALE]))
        offset = torch.where(p[:, _SHIFT_ON].bool(), p[:, _SHIFT], torch.zeros_like(p[:, _SHIFT]))
        x = x * factor.view(view) + offset.view(view)
        return x.to(dtype)

    def forward(self, images: Tensor, seeds: Sequence[int] | Tensor) -> Tensor:
        """Augment ``images`` ``(B, C, H, W)``, sample ``i`` with parameters from ``seeds[i]``."""
        return self.apply(images, self.draw(seeds))
