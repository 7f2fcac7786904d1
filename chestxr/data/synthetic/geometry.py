"""Rendering helpers: smooth steps, correlated noise, windows and boxes, the chest's geometry and
the patient's pose (anatomy coordinates: units of ``sqrt(rows * cols)`` around the centre, y down).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from chestxr.data.synthetic.model import Anatomy


def _step(d: np.ndarray, width: float) -> np.ndarray:
    """Smooth 0 -> 1 step as ``d`` goes from ``-2 * width`` to ``2 * width`` (soft inside test)."""
    t = np.clip(d * (0.25 / width) + 0.5, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-correlated noise of about ``sigma`` pixels, unit standard deviation.

    Small ``sigma``: white noise blurred by a separable Gaussian (shifted sums). Large ``sigma``:
    white noise on a grid of spacing ``sigma`` splatted with separable Gaussian weights (two small
    matrix products). Both avoid a full-size FFT.
    """
    if sigma < 6.0:
        half = max(math.ceil(2.5 * sigma), 1)
        taps = np.exp(-0.5 * (np.arange(-half, half + 1, dtype=np.float32) / sigma) ** 2)
        rows, cols = shape
        white = rng.standard_normal((rows + 2 * half, cols + 2 * half), dtype=np.float32)
        tmp = sum(w * white[:, k : k + cols] for k, w in enumerate(taps))
        out = sum(w * tmp[k : k + rows] for k, w in enumerate(taps))
    else:
        factors = []
        for n in shape:
            k = int(n / sigma) + 5
            nodes = (np.arange(k, dtype=np.float32) - 2.0) * sigma
            pix = np.arange(n, dtype=np.float32)[:, None]
            factors.append(np.exp(-0.5 * ((pix - nodes[None, :]) / sigma) ** 2))
        coarse = rng.standard_normal((factors[0].shape[1], factors[1].shape[1]), dtype=np.float32)
        out = factors[0] @ coarse @ factors[1].T
    return (out / max(float(out.std()), 1e-12)).astype(np.float32)


def _window(
    center: tuple[float, float], radius: float, pose_scale: float, s: float, shape: tuple[int, int]
) -> tuple[slice, slice]:
    """Pixel slices around an image-coordinate point, ``radius`` (anatomy units) plus margin."""
    half = radius * pose_scale * s + 3.0
    cx = center[0] * s + 0.5 * shape[1]
    cy = center[1] * s + 0.5 * shape[0]
    r0, r1 = max(int(cy - half), 0), min(int(cy + half) + 2, shape[0])
    c0, c1 = max(int(cx - half), 0), min(int(cx + half) + 2, shape[1])
    return slice(r0, r1), slice(c0, c1)


def _box(mask: np.ndarray, label: str, offset: tuple[int, int] = (0, 0)) -> dict | None:
    """Bounding box of a mask as ``{"x", "y", "width", "height", "label"}``; None when empty.

    ``offset`` is the (row, column) of the mask's first pixel in the image.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return {
        "x": int(cols[0]) + offset[1],
        "y": int(rows[0]) + offset[0],
        "width": int(cols[-1] - cols[0] + 1),
        "height": int(rows[-1] - rows[0] + 1),
        "label": label,
    }


@dataclass(frozen=True)
class _Geometry:
    """Lung and heart shapes in anatomy coordinates; works on scalars and arrays alike."""

    anatomy: Anatomy
    ctr: float
    power: float = 2.5  # super-ellipse exponent: boxier lungs, sharper costophrenic angles

    @property
    def lung_ax(self) -> float:
        return 0.145 * self.anatomy.lung_width

    @property
    def lung_ay(self) -> float:
        return 0.30 * self.anatomy.lung_height

    def lung_cx(self, side: int) -> float:
        return side * 0.20 * self.anatomy.lung_width

    def lung_ay_side(self, side: int) -> float:
        return self.lung_ay * (1.0 - (self.anatomy.right_dome_raise if side < 0 else 0.0))

    def lung_cy(self, side: int) -> float:
        # shortening the lung from below keeps the apex in place
        return self.anatomy.lung_center_y - self.lung_ay + self.lung_ay_side(side)

    def lung_level(self, side: int, x, y):
        """Super-ellipse level ``|u|^2.5 + |t|^2.5`` of one lung (< 1 inside); ``side`` -1 is
        the image's left (the patient's right), +1 its right."""
        t = (y - self.lung_cy(side)) / self.lung_ay_side(side)
        ax = self.lung_ax * (1.0 + 0.25 * np.clip(t, -1.0, 1.0))  # egg shape: wide at the base
        u = np.abs((x - self.lung_cx(side)) / ax)
        t = np.abs(t)
        return u * u * np.sqrt(u) + t * t * np.sqrt(t)

    @property
    def thorax_width(self) -> float:
        """Outer edge to outer edge of the lungs at their widest."""
        t = np.linspace(-1.0, 1.0, 401)
        half = (1.0 + 0.25 * t) * (1.0 - np.abs(t) ** self.power) ** (1.0 / self.power)
        return 2.0 * (0.20 * self.anatomy.lung_width + self.lung_ax * float(half.max()))

    @property
    def diaphragm_y(self) -> float:
        """The lower (left, image-right) hemidiaphragm's dome."""
        return self.anatomy.lung_center_y + self.lung_ay

    @property
    def heart_axes(self) -> tuple[float, float, float]:
        """Semi-axes of the heart ellipse and its tilt (radians).

        Chosen so that the horizontal half-extent is ``ctr * thorax_width / 2`` and the vertical
        half-extent grows with the ratio.
        """
        tilt = math.radians(-25.0)
        half_x = 0.5 * self.ctr * self.thorax_width
        half_y = self.anatomy.heart_height * (1.0 + 0.6 * (self.ctr - 0.42))
        c2, s2 = math.cos(tilt) ** 2, math.sin(tilt) ** 2
        a2 = (half_x**2 * c2 - half_y**2 * s2) / (c2 - s2)
        b2 = (half_y**2 * c2 - half_x**2 * s2) / (c2 - s2)
        return math.sqrt(a2), math.sqrt(b2), tilt

    @property
    def heart_center(self) -> tuple[float, float]:
        # two thirds of the heart lie left of the patient's midline = right of the image (PA);
        # its lower part hides below the diaphragm
        half_x = 0.5 * self.ctr * self.thorax_width
        half_y = self.anatomy.heart_height * (1.0 + 0.6 * (self.ctr - 0.42))
        return 0.3 * half_x, self.diaphragm_y - 0.45 * half_y

    def heart_radius(self, x, y):
        """Elliptic radius of the heart (< 1 inside)."""
        major, minor, tilt = self.heart_axes
        hx, hy = self.heart_center
        c, s = math.cos(tilt), math.sin(tilt)
        u = (c * (x - hx) + s * (y - hy)) / major
        v = (-s * (x - hx) + c * (y - hy)) / minor
        return np.sqrt(u**2 + v**2)

    def aerated(self, side: int, x, y) -> bool:
        """Whether a point lies well inside a lung's aerated part (not behind the heart)."""
        return bool(self.lung_level(side, x, y) < 0.8**2.5 and self.heart_radius(x, y) > 1.15)


@dataclass(frozen=True)
class _Pose:
    scale: float
    rotation: float  # radians
    shift_x: float
    shift_y: float

    def to_anatomy(self, x, y):
        """Image coordinates (units of sqrt(rows*cols), centred) to anatomy coordinates."""
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        px, py = x - self.shift_x, y - self.shift_y
        return (c * px + s * py) / self.scale, (-s * px + c * py) / self.scale

    def to_image(self, ax, ay):
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        x = self.scale * (c * ax - s * ay) + self.shift_x
        y = self.scale * (s * ax + c * ay) + self.shift_y
        return x, y


def _draw_center(
    rng: np.random.Generator,
    geom: _Geometry,
    pose: _Pose,
    half_extent: tuple[float, float],
    radius: float,
    side: int,
    t_range: tuple[float, float],
) -> tuple[float, float]:
    """A lesion centre inside the aerated lung ``side`` and ``radius`` inside the image."""
    hx, hy = half_extent
    for _ in range(200):
        r = 0.7 * math.sqrt(rng.uniform())
        phi = rng.uniform(0.0, 2.0 * math.pi)
        t = float(np.clip(r * math.sin(phi), *t_range))
        x = geom.lung_cx(side) + geom.lung_ax * r * math.cos(phi)
        y = geom.lung_cy(side) + geom.lung_ay_side(side) * t
        ix, iy = pose.to_image(x, y)
        inside = abs(ix) < hx - radius and abs(iy) < hy - radius
        if inside and geom.aerated(side, x, y):
            return x, y
    # geometry always leaves room; this fallback keeps the function total
    return geom.lung_cx(side), geom.lung_cy(side) - 0.3 * geom.lung_ay
