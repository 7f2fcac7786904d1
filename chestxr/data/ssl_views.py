"""Two random views of each radiograph for self-supervised pretraining, as batched tensor ops.

The views are made on the batch after it reaches the device (one ``affine_grid`` + ``grid_sample``
for every crop and rotation, one grouped convolution for every blur), so they cost little next to
the network on GPU or CPU. Every per-sample parameter is drawn from a ``torch.Generator`` the caller
seeds, so a run is reproducible and a resumed run draws what the uninterrupted one drew.

The choices follow what self-supervised work on chest radiographs keeps from SimCLR's natural-image
recipe (Azizi et al., ICCV 2021; Sowrirajan et al., MoCo-CXR, MIDL 2021): random resized crops and
small rotations, brightness/contrast (and gamma) jitter in place of colour jitter, Gaussian blur
and noise; no horizontal flips by default, because laterality (heart on the left) is anatomy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_range(name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    a, b = (float(v) for v in value)
    if not (low <= a <= b <= high):
        raise ValueError(
            f"{name} must be [min, max] with {low} <= min <= max <= {high}, got {value!r}"
        )
    return a, b


def _check_prob(name: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


class RadiographViews:
    """Random views of a batch of radiographs ``(B, 1, H, W)`` in [0, 1].

    Args:
        crop_scale: range of the crop's area as a share of the image (SimCLR: 0.08-1; radiographs
            keep more context: 0.3-1).
        crop_ratio: range of the crop's aspect ratio (width / height).
        rotate_degrees: largest in-plane rotation, either way.
        brightness: largest additive brightness shift (image units).
        contrast: largest relative contrast change around the image's mean.
        gamma: range of the gamma applied to the [0, 1] image.
        jitter_prob: chance of each of brightness, contrast and gamma jitter.
        blur_sigma: range of the Gaussian blur's sigma, as a share of the image side.
        blur_prob: chance of the blur.
        noise_std: range of the additive Gaussian noise's std (image units).
        noise_prob: chance of the noise.
        flip_prob: chance of a horizontal flip (0 by default: flips swap laterality).

    Raises:
        ValueError: a range or probability out of bounds (the message quotes it).
    """

    def __init__(
        self,
        *,
        crop_scale: Sequence[float] = (0.3, 1.0),
        crop_ratio: Sequence[float] = (0.75, 1.333),
        rotate_degrees: float = 10.0,
        brightness: float = 0.1,
        contrast: float = 0.2,
        gamma: Sequence[float] = (0.8, 1.25),
        jitter_prob: float = 0.8,
        blur_sigma: Sequence[float] = (0.002, 0.01),
        blur_prob: float = 0.5,
        noise_std: Sequence[float] = (0.0, 0.03),
        noise_prob: float = 0.5,
        flip_prob: float = 0.0,
    ) -> None:
        self.crop_scale = _check_range("crop_scale", crop_scale, 1e-3, 1.0)
        self.crop_ratio = _check_range("crop_ratio", crop_ratio, 1e-2, 1e2)
        if not 0.0 <= float(rotate_degrees) <= 180.0:
            raise ValueError(f"rotate_degrees must be in [0, 180], got {rotate_degrees!r}")
        self.rotate = math.radians(float(rotate_degrees))
        if not (0.0 <= float(brightness) <= 1.0 and 0.0 <= float(contrast) < 1.0):
            raise ValueError(
                f"brightness must be in [0, 1] and contrast in [0, 1), got {brightness!r}, "
                f"{contrast!r}"
            )
        self.brightness, self.contrast = float(brightness), float(contrast)
        self.gamma = _check_range("gamma", gamma, 1e-2, 1e2)
        self.blur_sigma = _check_range("blur_sigma", blur_sigma, 0.0, 0.1)
        self.noise_std = _check_range("noise_std", noise_std, 0.0, 1.0)
        self.jitter_prob = _check_prob("jitter_prob", jitter_prob)
        self.blur_prob = _check_prob("blur_prob", blur_prob)
        self.noise_prob = _check_prob("noise_prob", noise_prob)
        self.flip_prob = _check_prob("flip_prob", flip_prob)

    def __call__(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Two independent views of every image.

        Args:
            images: ``(B, 1, H, W)`` float images in [0, 1].
            generator: a CPU generator the caller seeds; all parameters come from it.

        Returns:
            Two ``(B, 1, H, W)`` float32 tensors in [0, 1], on the device of ``images``.

        Raises:
            ValueError: ``images`` is not a 4-D one-channel tensor.
        """
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"expected images (B, 1, H, W), got shape {tuple(images.shape)}")
        return self.view(images, generator), self.view(images, generator)

    def view(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """One random view of every image (see :meth:`__call__`)."""
        x = images.float()
        n, device = x.shape[0], x.device

        def uniform(low: float, high: float) -> Tensor:
            return torch.empty(n).uniform_(low, high, generator=generator).to(device)

        def coin(p: float) -> Tensor:
            return (torch.rand(n, generator=generator) < p).to(device)

        x = self._crop_rotate(x, uniform, coin)
        # intensity: brightness shift, contrast around the mean, gamma; each with its chance
        shift = uniform(-self.brightness, self.brightness) * coin(self.jitter_prob)
        factor = 1 + uniform(-self.contrast, self.contrast) * coin(self.jitter_prob)
        log_g = uniform(math.log(self.gamma[0]), math.log(self.gamma[1])) * coin(self.jitter_prob)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor.view(n, 1, 1, 1) + mean + shift.view(n, 1, 1, 1)
        x = x.clamp(0, 1) ** torch.exp(log_g).view(n, 1, 1, 1)
        x = self._blur(x, uniform(*self.blur_sigma) * coin(self.blur_prob) * x.shape[-1])
        std = uniform(*self.noise_std) * coin(self.noise_prob)
        noise = torch.randn(x.shape, generator=generator).to(device)
        return (x + noise * std.view(n, 1, 1, 1)).clamp(0, 1)

    def _crop_rotate(self, x: Tensor, uniform, coin) -> Tensor:
        """Random resized crop, rotation and (optional) flip in one resampling."""
        area = uniform(*self.crop_scale)
        log_r = uniform(math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        ratio = torch.exp(log_r)
        # crop width and height as shares of the image side, at most the whole side
        w = torch.sqrt(area * ratio).clamp(max=1.0)
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = uniform(-1.0, 1.0) * (1 - w)
        cy = uniform(-1.0, 1.0) * (1 - h)
        angle = uniform(-self.rotate, self.rotate)
        flip = torch.where(coin(self.flip_prob), -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # output (u, v) in [-1, 1] -> input: rotation of the scaled crop, around its centre
        theta = torch.stack(
            [
                torch.stack([cos * w * flip, -sin * h, cx], dim=1),
                torch.stack([sin * w * flip, cos * h, cy], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    @staticmethod
    def _blur(x: Tensor, sigma: Tensor) -> Tensor:
        """Separable Gaussian blur with one sigma (pixels) per image; sigma 0 leaves it as is."""
        n = x.shape[0]
        radius = max(math.ceil(3 * float(sigma.max())), 0) if n else 0
        if radius == 0:
            return x
        t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        s = sigma.clamp(min=1e-3).view(n, 1)
        k = torch.exp(-0.5 * (t.view(1, -1) / s) ** 2)
        k = k / k.sum(dim=1, keepdim=True)
        y = F.pad(x.transpose(0, 1), (radius, radius, radius, radius), mode="replicate")
        y = F.conv2d(y, k.view(n, 1, 1, -1), groups=n)
        y = F.conv2d(y, k.view(n, 1, -1, 1), groups=n)
        return y.transpose(0, 1)
