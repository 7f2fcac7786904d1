"""Synthetic chest radiographs as real DICOM files: chestxr's download-free default data set.

Each image is a chest-like phantom (body outline, lungs with vessel texture, spine, ribs, clavicles,
heart) rendered as a float *attenuation* image (bright = attenuating, what
``read_radiograph`` returns), then encoded the ways real files differ: CR or DX, MONOCHROME1 or 2,
12 or 16 stored bits, rescale slope/intercept, window centre/width. Findings (``opacity``,
``effusion``, ``cardiomegaly``, ``nodule``) are painted inside the lung fields and their bounding
boxes written to the manifest. Image size, encoding and view are drawn independently of the label,
so none of them is a shortcut.

Everything is a pure function of the seed: patient ``p`` takes its anatomy from
``SeedSequence(seed, spawn_key=(1, p))``, image ``i`` its pose, findings and noise from
``SeedSequence(seed, spawn_key=(2, i))``, and the plan (patients, labels, sizes, encodings) comes
from ``default_rng(seed)``. :func:`regenerate_phantom` rebuilds the float phantom of any manifest
row, with or without its findings, for tests and for checking Grad-CAM against the true lesion.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import inspect
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

log = logging.getLogger(__name__)

FINDINGS = ("opacity", "effusion", "cardiomegaly", "nodule")
NO_FINDING = "normal"
GENERATOR_VERSION = "2"  # bump whenever the output of a given seed changes
MANIFEST_NAME = "manifest.csv"
PARAMS_NAME = "synthetic.json"
MANUFACTURER = "chestxr-synthetic"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
MANIFEST_COLUMNS_HEAD = ("path", "label")
MANIFEST_COLUMNS_TAIL = (
    "patient_id",
    "study_uid",
    "series_uid",
    "sop_uid",
    "modality",
    "photometric",
    "bits_stored",
    "view",
    "sex",
    "age",
    "rows",
    "columns",
    "boxes",
)

_SLOPES = (1.0, 0.5, 2.0)
_INTERCEPTS = (0.0, -1024.0, 100.0)
_ASPECT_RANGE = (0.85, 1.15)
_MIN_SIZE = 64
_MULTI_FINDING_P = 0.4  # with several findings, each is present with this chance (at least one)


@dataclass(frozen=True)
class Anatomy:
    """A patient's body, in units of ``sqrt(rows * cols)`` around the image centre (y down)."""

    body_width: float
    lung_width: float
    lung_height: float
    lung_center_y: float
    right_dome_raise: float  # the patient's right (image-left) hemidiaphragm sits higher
    ctr: float  # cardiothoracic ratio of the normal heart
    heart_height: float
    tissue: float  # attenuation of the soft tissue at the body's midline
    lung_depth: float  # attenuation the aerated lung removes
    rib_spacing: float
    rib_start: float
    clavicles: bool
    gastric_bubble: bool


@dataclass(frozen=True)
class Encoding:
    """How the attenuation image becomes stored pixel values and a DICOM header."""

    modality: str  # "CR" or "DX"
    photometric: str  # "MONOCHROME1" (stored inverted) or "MONOCHROME2"
    bits_stored: int
    slope: float
    intercept: float
    low: int  # stored value of attenuation 0 (MONOCHROME2) or 1 (MONOCHROME1)
    high: int


@dataclass(frozen=True)
class Phantom:
    """A rendered phantom.

    Attributes:
        attenuation: ``(rows, cols)`` float32 in [0, 1], bright = attenuating.
        lung_mask: aerated lung fields (heart excluded).
        heart_mask: the heart shadow.
        lesion_mask: pixels of the painted findings (the heart for cardiomegaly).
        boxes: one ``{"x", "y", "width", "height", "label"}`` per lesion, pixel coordinates.
        ctr: cardiothoracic ratio of the rendered heart.
    """

    attenuation: np.ndarray
    lung_mask: np.ndarray
    heart_mask: np.ndarray
    lesion_mask: np.ndarray
    boxes: tuple[dict, ...] = field(default_factory=tuple)
    ctr: float = 0.0


# ----------------------------------------------------------------------------- random draws


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's anatomy.

    Args:
        rng: the patient's generator.

    Returns:
        The anatomy.
    """
    u = rng.uniform
    return Anatomy(
        body_width=u(0.93, 1.06),
        lung_width=u(0.93, 1.06),
        lung_height=u(0.92, 1.07),
        lung_center_y=u(-0.07, -0.03),
        right_dome_raise=u(0.0, 0.06),
        ctr=u(0.38, 0.46),
        heart_height=u(0.16, 0.18),
        tissue=u(0.5, 0.58),
        lung_depth=u(0.28, 0.34),
        rib_spacing=u(0.058, 0.068),
        rib_start=u(-0.4, -0.37),
        clavicles=bool(u() < 0.85),
        gastric_bubble=bool(u() < 0.6),
    )


def sample_encoding(rng: np.random.Generator) -> Encoding:
    """Draw how one image is stored (independently of its content).

    DX For Presentation fixes the rescale to slope 1, intercept 0 (PS3.3 C.8.11.3), so only CR
    files vary them.

    Args:
        rng: the plan's generator.

    Returns:
        The encoding.
    """
    modality = "CR" if rng.uniform() < 0.5 else "DX"
    photometric = "MONOCHROME1" if rng.uniform() < 0.4 else "MONOCHROME2"
    bits = 12 if rng.uniform() < 0.5 else 16
    slope = float(_SLOPES[rng.integers(len(_SLOPES))])
    intercept = float(_INTERCEPTS[rng.integers(len(_INTERCEPTS))])
    if modality == "DX":
        slope, intercept = 1.0, 0.0
    top = 2**bits - 1
    low = round(rng.uniform(0.01, 0.08) * top)
    high = round(rng.uniform(0.85, 0.98) * top)
    return Encoding(modality, photometric, bits, slope, intercept, low, high)


def phantom_rng(seed: int, kind: int, index: int) -> np.random.Generator:
    """The generator of patient (``kind=1``) or image (``kind=2``) ``index`` of a seed."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(kind, index)))


# ----------------------------------------------------------------------------- rendering helpers


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


# ----------------------------------------------------------------------------- the phantom


def render_phantom(
    rng: np.random.Generator,
    rows: int,
    cols: int,
    findings: Sequence[str] = (),
    *,
    anatomy: Anatomy | None = None,
    paint_findings: bool = True,
) -> Phantom:
    """Render one chest phantom as a float attenuation image.

    The random draws do not depend on ``paint_findings``: the same generator state renders the same
    patient, pose and noise with and without its lesions.

    Args:
        rng: the image's generator (consumed).
        rows: image height in pixels.
        cols: image width in pixels.
        findings: findings to place, a subset of :data:`FINDINGS`.
        anatomy: the patient's anatomy; drawn from ``rng`` when None.
        paint_findings: False renders the same image without its lesions.

    Returns:
        The phantom, with masks and boxes in pixel coordinates.

    Raises:
        ValueError: an unknown finding or a size below 64 pixels.
    """
    unknown = sorted(set(findings) - set(FINDINGS))
    if unknown:
        raise ValueError(f"unknown findings {unknown}; known: {FINDINGS}")
    if min(rows, cols) < _MIN_SIZE:
        raise ValueError(f"image size must be at least {_MIN_SIZE} pixels, got {rows}x{cols}")
    if anatomy is None:
        anatomy = sample_anatomy(rng)
    s = math.sqrt(rows * cols)
    half_extent = (0.5 * cols / s, 0.5 * rows / s)
    pose = _Pose(
        scale=rng.uniform(0.9, 1.04),
        rotation=math.radians(rng.uniform(-4.0, 4.0)),
        shift_x=rng.uniform(-0.03, 0.03),
        shift_y=rng.uniform(-0.03, 0.03),
    )
    exposure = (rng.uniform(-0.03, 0.04), rng.uniform(0.85, 1.1), rng.uniform(0.85, 1.2))
    noise_sigma = rng.uniform(0.006, 0.02)
    big_ctr = rng.uniform(0.58, 0.66)
    has_cm = "cardiomegaly" in findings
    # lesion centres avoid the enlarged heart whether or not it is painted
    geom = _Geometry(anatomy, big_ctr if has_cm else anatomy.ctr)

    # --- draw every finding's parameters (the same draws whether painted or not)
    opacity_blobs: list[tuple[int, float, float, float, np.ndarray]] = []
    if "opacity" in findings:
        for _ in range(int(rng.integers(1, 4))):
            side = -1 if rng.uniform() < 0.5 else 1
            radius = rng.uniform(0.09, 0.14) * cols / s
            cx, cy = _draw_center(rng, geom, pose, half_extent, radius, side, (-0.6, 0.6))
            lobes = rng.normal(0.0, 0.3 * radius, size=(int(rng.integers(3, 6)), 2))
            sigmas = rng.uniform(0.55, 0.85, size=len(lobes)) * radius
            opacity_blobs.append(
                (side, cx, cy, rng.uniform(0.6, 0.85), np.column_stack([lobes, sigmas]))
            )
    effusion = None
    if "effusion" in findings:
        side = -1 if rng.uniform() < 0.5 else 1
        effusion = (side, rng.uniform(0.2, 0.55), rng.uniform(0.06, 0.12), rng.uniform(0.8, 0.95))
    nodules: list[tuple[float, float, float, float]] = []
    if "nodule" in findings:
        for _ in range(int(rng.integers(1, 3))):
            side = -1 if rng.uniform() < 0.5 else 1
            radius = rng.uniform(0.02, 0.03) * cols / s
            cx, cy = _draw_center(rng, geom, pose, half_extent, radius, side, (-0.75, 0.65))
            nodules.append((cx, cy, radius, rng.uniform(1.0, 1.25)))

    if has_cm and not paint_findings:
        geom = _Geometry(anatomy, anatomy.ctr)

    # --- pixel grids in anatomy coordinates, and the random fields
    yv = ((np.arange(rows, dtype=np.float32) + 0.5) - 0.5 * rows) / s
    xv = ((np.arange(cols, dtype=np.float32) + 0.5) - 0.5 * cols) / s
    X, Y = pose.to_anatomy(xv[None, :], yv[:, None])
    X, Y = X.astype(np.float32), Y.astype(np.float32)
    AX = np.abs(X)
    texture = _smooth_noise(rng, (rows, cols), 0.006 * s)
    vessel_noise = _smooth_noise(rng, (rows, cols), 0.03 * s)
    blob_noise = _smooth_noise(rng, (rows, cols), 0.02 * s)
    white = rng.standard_normal((rows, cols), dtype=np.float32)

    # --- body: trunk, sloping shoulders, neck
    half_w = 0.44 * anatomy.body_width * (1.0 - 0.25 * (Y + 0.1) ** 2)
    shoulder = -0.44 + 1.2 * np.maximum(AX - 0.09, 0.0) ** 2 + 4.0 * np.maximum(AX - 0.33, 0.0) ** 2
    body_d = np.maximum(np.minimum(half_w - AX, Y - shoulder), np.minimum(0.075 - AX, 1.0))
    body = _step(body_d, 0.008)
    thickness = np.sqrt(np.clip(1.0 - (X / half_w) ** 2, 0.0, 1.0))
    att = 0.02 + body * anatomy.tissue * (0.72 + 0.28 * thickness)

    # --- lungs, heart, aortic knob, gastric bubble
    level_l = geom.lung_level(-1, X, Y)
    level_r = geom.lung_level(1, X, Y)
    lung_l = _step((1.0 - level_l) / geom.power, 0.015)  # (1 - level) / p ~ distance in radii
    lung_r = _step((1.0 - level_r) / geom.power, 0.015)
    envelope = _step((1.0 - np.minimum(level_l, level_r)) / geom.power, 0.05)
    heart = _step(1.0 - geom.heart_radius(X, Y), 0.02)
    knob_y = anatomy.lung_center_y - 0.13 * anatomy.lung_height
    knob = _step(0.035 - np.sqrt((X - 0.055) ** 2 + (Y - knob_y) ** 2), 0.005)
    lungs = np.maximum(lung_l, lung_r) * (1.0 - heart) * (1.0 - knob)
    heart_mask = (heart > 0.5) & (geom.diaphragm_y > Y)  # the part that shows
    if anatomy.gastric_bubble:  # air under the patient's left hemidiaphragm (image right)
        bottom = geom.lung_cy(1) + geom.lung_ay_side(1)
        bubble_r = np.sqrt(((X - 0.19) / 1.4) ** 2 + (Y - bottom - 0.06) ** 2)
        att -= 0.08 * _step(0.04 - bubble_r, 0.006) * body

    # vessels: wavy streaks radiating from each hilum (cos(18 angle + noise) from a complex
    # power, cheaper than arctan2), fading towards the periphery
    vessels = np.zeros_like(att)
    wobble = np.cos(2.0 * vessel_noise) + 1j * np.sin(2.0 * vessel_noise)
    for side in (-1, 1):
        dx = X - side * 0.09 * anatomy.lung_width
        dy = Y - (anatomy.lung_center_y + 0.03)
        r = np.sqrt(dx * dx + dy * dy) + 1e-6
        z = (dx + 1j * dy) / r
        z2 = z * z
        z16 = ((z2 * z2) ** 2) ** 2
        streak = (0.5 + 0.5 * (z16 * z2 * wobble).real) ** 4
        vessels += streak * _step(r - 0.04, 0.01) * np.exp(-r / 0.11)
        vessels += 0.6 * np.exp(-((r / 0.045) ** 2))
    lung_fill = 1.0 - 0.45 * np.minimum(vessels, 1.0) - 0.04 * texture

    # --- findings: consolidation and fluid replace air (and hide the vessels), nodules add density
    replaced = np.zeros_like(att)  # share of the lung's air replaced, per pixel
    added = np.zeros_like(att)  # density added on top, in units of lung_depth
    lesion = np.zeros((rows, cols), dtype=bool)
    boxes: list[dict] = []

    def mark(mask: np.ndarray, win: tuple[slice, slice], label: str) -> None:
        box = _box(mask, label, offset=(win[0].start, win[1].start))
        if box is not None:
            lesion[win] |= mask
            boxes.append(box)

    full = (slice(0, rows), slice(0, cols))
    if paint_findings:
        for _side, cx, cy, strength, lobes in opacity_blobs:
            reach = float(np.max(np.hypot(lobes[:, 0], lobes[:, 1]) + 2.2 * lobes[:, 2]))
            win = _window(pose.to_image(cx, cy), reach, pose.scale, s, (rows, cols))
            x, y = X[win] - cx, Y[win] - cy
            fld = np.zeros_like(x)
            for dx, dy, sg in lobes:
                fld += np.exp(((x - dx) ** 2 + (y - dy) ** 2) * (-0.5 / sg**2))
            fld = fld / max(float(fld.max()), 1e-6)
            # a ragged edge, but no specks away from the blob
            fld = fld + 0.12 * blob_noise[win] * np.minimum(2.0 * fld, 1.0)
            density = _step(fld - 0.45, 0.03) * (0.92 + 0.08 * texture[win])
            replaced[win] = np.maximum(replaced[win], strength * density)
            mark((density > 0.3) & (lungs[win] > 0.25), win, "opacity")
        if effusion is not None:
            side, t_level, meniscus, strength = effusion
            level = geom.lung_cy(side) + t_level * geom.lung_ay_side(side)
            lateral = np.clip(side * (X - geom.lung_cx(side)) / geom.lung_ax * 0.5 + 0.5, 0.0, 1.5)
            fluid = _step(Y - (level - meniscus * lateral**2), 0.005)
            fluid = fluid * (lung_l if side < 0 else lung_r)
            replaced = np.maximum(replaced, strength * fluid)
            mark((fluid > 0.5) & (lungs > 0.25), full, "effusion")
        if has_cm:
            mark(heart_mask, full, "cardiomegaly")
        for cx, cy, radius, strength in nodules:
            win = _window(pose.to_image(cx, cy), 1.5 * radius, pose.scale, s, (rows, cols))
            d = np.sqrt((X[win] - cx) ** 2 + (Y[win] - cy) ** 2)
            spot = _step(radius - d, 0.08 * radius)
            added[win] += strength * spot * (1.0 + 0.3 * np.clip(1.0 - d / radius, 0.0, 1.0))
            mark((spot > 0.5) & (lungs[win] > 0.25), win, "nodule")
    att -= anatomy.lung_depth * lungs * lung_fill * (1.0 - replaced)
    att += anatomy.lung_depth * added * lungs

    # --- bones: spine, posterior and anterior ribs, clavicles; the trachea's air
    vert = 0.5 + 0.5 * np.cos(Y * (2.0 * np.pi / 0.05)) ** 2
    att += 0.1 * _step(0.04 - AX, 0.003) * (0.75 + 0.25 * vert) * body
    phase = (Y + 0.1 * AX - 1.6 * AX**2 - anatomy.rib_start) / anatomy.rib_spacing
    frac = phase - np.floor(phase)
    ribs = _step(frac, 0.025) * _step(0.45 - frac, 0.025) * ((phase > 0) & (phase < 10))
    ribs = ribs * (1.0 + 0.6 * _step(frac - 0.36, 0.015))  # the denser lower cortex
    ribs = ribs * _step(AX - 0.04, 0.005) * _step(half_w - 0.015 - AX, 0.004)
    ant_phase = (Y - 0.5 * (0.42 - AX) - anatomy.rib_start + 0.02) / (1.15 * anatomy.rib_spacing)
    ant_frac = ant_phase - np.floor(ant_phase)
    ant = _step(ant_frac, 0.03) * _step(0.3 - ant_frac, 0.03) * ((ant_phase > 0) & (ant_phase < 6))
    ant = ant * _step(AX - 0.1, 0.02) * _step(half_w - 0.03 - AX, 0.005)
    att += body * (0.15 + 0.85 * envelope * (1.0 - 0.6 * heart)) * (0.06 * ribs + 0.025 * ant)
    if anatomy.clavicles:
        clav_y = anatomy.rib_start + 0.04 - 0.12 * (AX - 0.05) + 0.4 * (AX - 0.2) ** 2
        clav = _step(0.013 - np.abs(Y - clav_y), 0.002) * _step(AX - 0.03, 0.005)
        att += 0.08 * clav * _step(0.36 - AX, 0.005)
    trachea_top = anatomy.lung_center_y - 0.08
    att -= 0.08 * _step(0.016 - AX, 0.0025) * _step(trachea_top - Y, 0.005)

    # --- exposure and noise
    offset, gain, gamma = exposure
    att = offset + gain * np.clip(att, 0.0, 1.0) ** gamma
    att = att + noise_sigma * (0.6 + 0.8 * np.clip(att, 0.0, 1.0)) * white
    att = np.clip(att, 0.0, 1.0).astype(np.float32)
    return Phantom(
        attenuation=att,
        lung_mask=lungs > 0.5,
        heart_mask=heart_mask,
        lesion_mask=lesion,
        boxes=tuple(boxes),
        ctr=geom.ctr,
    )


# ----------------------------------------------------------------------------- DICOM encoding


def encode_pixels(attenuation: np.ndarray, encoding: Encoding) -> np.ndarray:
    """Stored pixel values of an attenuation image (inverted for MONOCHROME1).

    Args:
        attenuation: float image in [0, 1], bright = attenuating.
        encoding: the stored range and photometric interpretation.

    Returns:
        ``uint16`` stored values in ``[0, 2**bits_stored - 1]``.
    """
    a = np.clip(attenuation, 0.0, 1.0)
    if encoding.photometric == "MONOCHROME1":
        a = 1.0 - a
    return np.rint(encoding.low + a * (encoding.high - encoding.low)).astype(np.uint16)


def _ds_number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def build_dataset(
    stored: np.ndarray,
    encoding: Encoding,
    *,
    body_mask: np.ndarray,
    pixel_spacing: float,
    patient: dict,
    study: dict,
) -> Dataset:
    """A complete DICOM data set (with file meta) for one encoded image.

    Args:
        stored: ``uint16`` stored values.
        encoding: how they were encoded.
        body_mask: pixels whose values the window must cover.
        pixel_spacing: mm per pixel (square pixels).
        patient: ``id``, ``name``, ``sex``, ``birth_date``.
        study: ``study_uid``, ``series_uid``, ``sop_uid``, ``date``, ``time``, ``age``, ``view``,
            ``number``.

    Returns:
        The data set, ready for ``dcmwrite(..., enforce_file_format=True)``.
    """
    dx = encoding.modality == "DX"
    sop_class = DX_PRESENTATION_STORAGE if dx else CR_IMAGE_STORAGE
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = study["sop_uid"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "CHESTXR_SYN" + GENERATOR_VERSION

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = study["sop_uid"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study["date"]
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = study["time"]
    ds.AccessionNumber = ""
    ds.Modality = encoding.modality
    if dx:
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = MANUFACTURER
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CHEST"
    ds.SeriesDescription = f"CHEST {study['view']}"
    ds.PatientName = patient["name"]
    ds.PatientID = patient["id"]
    ds.PatientBirthDate = patient["birth_date"]
    ds.PatientSex = patient["sex"]
    ds.PatientAge = f"{study['age']:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = study["view"]
    ds.StudyInstanceUID = study["study_uid"]
    ds.SeriesInstanceUID = study["series_uid"]
    ds.StudyID = str(study["number"])
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = encoding.photometric
    ds.Rows, ds.Columns = stored.shape
    spacing = _ds_number(pixel_spacing) if pixel_spacing >= 1 else f"{pixel_spacing:.4f}"
    ds.PixelSpacing = [spacing, spacing]
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = encoding.bits_stored
    ds.HighBit = encoding.bits_stored - 1
    ds.PixelRepresentation = 0
    if dx:
        ds.PixelIntensityRelationship = "LOG"
        # -1: higher values = less beam intensity (= more attenuation), as MONOCHROME2 stores it
        ds.PixelIntensityRelationshipSign = -1 if encoding.photometric == "MONOCHROME2" else 1
        ds.PresentationLUTShape = "INVERSE" if encoding.photometric == "MONOCHROME1" else "IDENTITY"
        ds.DetectorType = "DIRECT"
    # every 7th body pixel is plenty for two percentiles, and 20x faster
    values = stored[body_mask][::7].astype(np.float64) * encoding.slope + encoding.intercept
    if values.size == 0:
        values = stored.astype(np.float64) * encoding.slope + encoding.intercept
    lo, hi = np.percentile(values, [0.5, 99.5])
    ds.WindowCenter = _ds_number(0.5 * (lo + hi))
    ds.WindowWidth = _ds_number(max(1.05 * (hi - lo), 1.0))
    ds.RescaleIntercept = _ds_number(encoding.intercept)
    ds.RescaleSlope = _ds_number(encoding.slope)
    ds.RescaleType = "US"
    ds.PixelData = stored.astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    return ds


# ----------------------------------------------------------------------------- the data set


def _resolve_params(
    n_images: int = 600,
    n_patients: int | None = None,
    findings: Sequence[str] = ("opacity",),
    positive_fraction: float = 0.5,
    seed: int = 0,
    size_range: tuple[int, int] = (320, 448),
) -> dict:
    """Validated, JSON-ready parameters with the defaults filled in."""
    if isinstance(findings, str):
        findings = (findings,)
    findings = tuple(str(f) for f in findings)
    if not findings or len(set(findings)) != len(findings) or set(findings) - set(FINDINGS):
        raise ValueError(f"findings must be distinct names from {FINDINGS}, got {list(findings)}")
    findings = tuple(f for f in FINDINGS if f in findings)
    n_images = int(n_images)
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    if n_patients is None:
        n_patients = max(1, round(0.7 * n_images))
    n_patients = int(n_patients)
    if not 1 <= n_patients <= n_images:
        raise ValueError(f"n_patients must be in [1, n_images={n_images}], got {n_patients}")
    if not 0.0 <= float(positive_fraction) <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    lo, hi = (int(v) for v in size_range)
    if not _MIN_SIZE <= lo <= hi:
        raise ValueError(
            f"size_range must be (lo, hi) with {_MIN_SIZE} <= lo <= hi, got {size_range}"
        )
    return {
        "n_images": n_images,
        "n_patients": n_patients,
        "findings": list(findings),
        "positive_fraction": float(positive_fraction),
        "seed": int(seed),
        "size_range": [lo, hi],
    }


def _params_key(params: dict) -> str:
    text = json.dumps({"version": GENERATOR_VERSION, **params}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _draw_size(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int]:
    """Rows and columns in [lo, hi] with aspect in 0.85..1.15, independent of anything else."""
    while True:
        rows, cols = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        if _ASPECT_RANGE[0] <= cols / rows <= _ASPECT_RANGE[1]:
            return rows, cols


def _studies_per_patient(rng: np.random.Generator, n_images: int, n_patients: int) -> np.ndarray:
    """At least one study per patient; the rest spread so some have 2-3 (more only if needed)."""
    counts = np.ones(n_patients, dtype=np.int64)
    cap = 3
    for _ in range(n_images - n_patients):
        open_ = np.flatnonzero(counts < cap)
        while open_.size == 0:
            cap += 1
            open_ = np.flatnonzero(counts < cap)
        counts[open_[rng.integers(open_.size)]] += 1
    return counts


def _image_findings(
    rng: np.random.Generator, n_images: int, findings: tuple[str, ...], positive_fraction: float
) -> list[tuple[str, ...]]:
    """Findings per image: exactly round(fraction * n) positives, at least one finding each."""
    n_pos = round(positive_fraction * n_images)
    positive = np.zeros(n_images, dtype=bool)
    positive[rng.permutation(n_images)[:n_pos]] = True
    out: list[tuple[str, ...]] = []
    for pos in positive:
        if not pos:
            out.append(())
            continue
        if len(findings) == 1:
            out.append(findings)
            continue
        while True:
            present = rng.uniform(size=len(findings)) < _MULTI_FINDING_P
            if present.any():
                break
        out.append(tuple(f for f, p in zip(findings, present, strict=True) if p))
    return out


def _width(n: int) -> int:
    return max(4, len(str(n)))


def generate_synthetic(
    out_dir: str | PathLike[str],
    *,
    n_images: int = 600,
    n_patients: int | None = None,
    findings: Sequence[str] = ("opacity",),
    positive_fraction: float = 0.5,
    seed: int = 0,
    size_range: tuple[int, int] = (320, 448),
) -> Path:
    """Write a synthetic chest radiograph data set: DICOM files and a manifest.

    Files go to ``out_dir/images/P0007/S1/IM0001.dcm`` (patient, study number, instance); the
    manifest ``out_dir/manifest.csv`` has one row per image (see :data:`MANIFEST_COLUMNS_TAIL`) and
    ``out_dir/synthetic.json`` records the parameters. The same arguments write identical files.

    Args:
        out_dir: destination folder (created).
        n_images: number of images (one per study).
        n_patients: number of patients; ``round(0.7 * n_images)`` when None.
        findings: the findings that positive images may have, from :data:`FINDINGS`.
        positive_fraction: share of images with at least one finding.
        seed: seed of everything.
        size_range: inclusive range of rows and columns (aspect kept within 0.85..1.15).

    Returns:
        The manifest path.

    Raises:
        ValueError: a parameter out of range or an unknown finding.
    """
    params = _resolve_params(n_images, n_patients, findings, positive_fraction, seed, size_range)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    findings_t = tuple(params["findings"])
    n_images, n_patients, seed = params["n_images"], params["n_patients"], params["seed"]
    key = _params_key(params)
    log.info("generating %d synthetic images of %d patients into %s", n_images, n_patients, out)

    rng = np.random.default_rng(seed)
    counts = _studies_per_patient(rng, n_images, n_patients)
    image_findings = _image_findings(rng, n_images, findings_t, params["positive_fraction"])
    pw = _width(n_patients)
    epoch = datetime.date(2012, 1, 1)

    rows_out: list[dict] = []
    index = 0
    for p in range(n_patients):
        number = f"{p + 1:0{pw}d}"
        patient = {
            "id": f"P{number}",
            "name": f"SYNTHETIC^{number}",
            "sex": "F" if rng.uniform() < 0.5 else "M",
        }
        base_age = int(rng.integers(18, 90))
        date = epoch + datetime.timedelta(days=int(rng.integers(0, 3000)))
        first_date = date
        patient["birth_date"] = (date - datetime.timedelta(days=365 * base_age + 100)).strftime(
            "%Y%m%d"
        )
        anatomy = sample_anatomy(phantom_rng(seed, 1, p))
        for k in range(int(counts[p])):
            if k:
                date += datetime.timedelta(days=int(rng.integers(20, 800)))
            rows, cols = _draw_size(rng, *params["size_range"])
            encoding = sample_encoding(rng)
            view = "PA" if rng.uniform() < 0.7 else "AP"
            fov_mm = rng.uniform(350.0, 430.0)
            seconds = int(rng.integers(7 * 3600, 19 * 3600))
            uid_src = [MANUFACTURER, GENERATOR_VERSION, key, patient["id"], str(k + 1)]
            study = {
                "study_uid": generate_uid(entropy_srcs=[*uid_src, "study"]),
                "series_uid": generate_uid(entropy_srcs=[*uid_src, "series"]),
                "sop_uid": generate_uid(entropy_srcs=[*uid_src, "instance"]),
                "date": date.strftime("%Y%m%d"),
                "time": f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
                "age": base_age + (date - first_date).days // 365,
                "view": view,
                "number": k + 1,
            }
            present = image_findings[index]
            phantom = render_phantom(
                phantom_rng(seed, 2, index), rows, cols, present, anatomy=anatomy
            )
            stored = encode_pixels(phantom.attenuation, encoding)
            ds = build_dataset(
                stored,
                encoding,
                body_mask=phantom.attenuation > 0.15,
                pixel_spacing=fov_mm / math.sqrt(rows * cols),
                patient=patient,
                study=study,
            )
            rel = Path("images", patient["id"], f"S{k + 1}", "IM0001.dcm")
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            dcmwrite(out / rel, ds, enforce_file_format=True)
            row = {"path": rel.as_posix(), "label": "|".join(present) or NO_FINDING}
            row.update({f: int(f in present) for f in findings_t})
            row.update(
                patient_id=patient["id"],
                study_uid=study["study_uid"],
                series_uid=study["series_uid"],
                sop_uid=study["sop_uid"],
                modality=encoding.modality,
                photometric=encoding.photometric,
                bits_stored=encoding.bits_stored,
                view=view,
                sex=patient["sex"],
                age=study["age"],
                rows=rows,
                columns=cols,
                boxes=json.dumps(list(phantom.boxes)),
            )
            rows_out.append(row)
            index += 1

    columns = [*MANIFEST_COLUMNS_HEAD, *findings_t, *MANIFEST_COLUMNS_TAIL]
    _write_atomic_text(out / PARAMS_NAME, json.dumps({"version": GENERATOR_VERSION, **params}))
    manifest = out / MANIFEST_NAME
    tmp = manifest.with_name(manifest.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows_out)
    os.replace(tmp, manifest)
    log.info("wrote %s (%d rows)", manifest, len(rows_out))
    return manifest


def _write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)


def ensure_synthetic(cache_dir: str | PathLike[str], **params) -> Path:
    """The synthetic data set for ``params``, generated on first use and cached.

    The folder is ``cache_dir/synthetic-<hash of the parameters and generator version>``. It is
    generated into a temporary sibling and renamed into place, so a reader never sees a partial
    set; when another process finishes first, its folder is used.

    Args:
        cache_dir: where the data sets live.
        **params: keyword arguments of :func:`generate_synthetic`.

    Returns:
        The manifest path.

    Raises:
        TypeError: an argument :func:`generate_synthetic` does not take.
        ValueError: a parameter out of range.
        FileExistsError: the target folder exists without a manifest (delete it).
    """
    try:
        inspect.signature(_resolve_params).bind(**params)
    except TypeError as err:
        raise TypeError(
            f"ensure_synthetic got unexpected parameters {sorted(params)}: {err}"
        ) from None
    resolved = _resolve_params(**params)
    cache = Path(cache_dir)
    final = cache / f"synthetic-{_params_key(resolved)}"
    manifest = final / MANIFEST_NAME
    if manifest.is_file():
        log.info("using cached synthetic data set %s", final)
        return manifest
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=cache))
    try:
        generate_synthetic(tmp, **resolved)
        try:
            os.rename(tmp, final)
        except OSError:
            if not manifest.is_file():
                raise FileExistsError(
                    f"{final} exists but holds no {MANIFEST_NAME}; delete it and retry"
                ) from None
            log.info("another process generated %s meanwhile; using it", final)
        else:
            log.info("generated synthetic data set %s", final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def regenerate_phantom(
    manifest_path: str | PathLike[str], index: int, *, paint_findings: bool = True
) -> Phantom:
    """Re-render the float phantom behind row ``index`` of a synthetic manifest.

    Args:
        manifest_path: a manifest written by :func:`generate_synthetic`.
        index: the row (0-based, in file order).
        paint_findings: False renders the same image without its lesions.

    Returns:
        The phantom whose encoding is the row's DICOM file.

    Raises:
        FileNotFoundError: no ``synthetic.json`` beside the manifest.
        IndexError: ``index`` beyond the manifest.
    """
    manifest_path = Path(manifest_path)
    params_file = manifest_path.with_name(PARAMS_NAME)
    if not params_file.is_file():
        raise FileNotFoundError(f"{params_file} not found: not a synthetic data set")
    params = json.loads(params_file.read_text(encoding="utf-8"))
    with open(manifest_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not 0 <= index < len(rows):
        raise IndexError(f"index {index} outside the manifest's {len(rows)} rows")
    row = rows[index]
    seed = int(params["seed"])
    patient = int(row["patient_id"][1:]) - 1
    present = () if row["label"] == NO_FINDING else tuple(row["label"].split("|"))
    return render_phantom(
        phantom_rng(seed, 2, index),
        int(row["rows"]),
        int(row["columns"]),
        present,
        anatomy=sample_anatomy(phantom_rng(seed, 1, patient)),
        paint_findings=paint_findings,
    )
