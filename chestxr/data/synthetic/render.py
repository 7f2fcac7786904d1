"""The phantom: one chest radiograph rendered as a float attenuation image, with its findings.

Every random draw of an image happens first, in a fixed order (:func:`_draw_image`, then
:func:`_draw_fields`), so the same generator state renders the same patient, pose and noise with
and without its lesions; the painting steps after that are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from chestxr.data.synthetic.geometry import (
    _box,
    _draw_center,
    _Geometry,
    _Pose,
    _smooth_noise,
    _step,
    _window,
)
from chestxr.data.synthetic.model import FINDINGS, MIN_SIZE, Anatomy, Phantom, sample_anatomy

# opacity: (side, centre x, centre y, strength, lobes as rows of (dx, dy, sigma))
_Blob = tuple[int, float, float, float, np.ndarray]


@dataclass(frozen=True)
class _Draws:
    """An image's random choices, drawn before any pixel is computed."""

    pose: _Pose
    exposure: tuple[float, float, float]  # offset, gain, gamma
    noise_sigma: float
    geom: _Geometry  # with the enlarged heart when the image has cardiomegaly
    opacity_blobs: list[_Blob]
    effusion: tuple[int, float, float, float] | None  # side, level, meniscus, strength
    nodules: list[tuple[float, float, float, float]]  # centre x, centre y, radius, strength


@dataclass(frozen=True)
class _Fields:
    """The random pixel fields of an image."""

    texture: np.ndarray
    vessel_noise: np.ndarray
    blob_noise: np.ndarray
    white: np.ndarray


def _draw_image(
    rng: np.random.Generator,
    anatomy: Anatomy,
    findings: Sequence[str],
    rows: int,
    cols: int,
) -> _Draws:
    """Pose, exposure, noise level and every finding's parameters (drawn whether painted or not)."""
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
    # lesion centres avoid the enlarged heart whether or not it is painted
    geom = _Geometry(anatomy, big_ctr if "cardiomegaly" in findings else anatomy.ctr)

    opacity_blobs: list[_Blob] = []
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
    return _Draws(pose, exposure, noise_sigma, geom, opacity_blobs, effusion, nodules)


def _draw_fields(rng: np.random.Generator, rows: int, cols: int) -> _Fields:
    """Lung texture, vessel wobble, lesion-edge noise and white noise, in this order."""
    s = math.sqrt(rows * cols)
    return _Fields(
        texture=_smooth_noise(rng, (rows, cols), 0.006 * s),
        vessel_noise=_smooth_noise(rng, (rows, cols), 0.03 * s),
        blob_noise=_smooth_noise(rng, (rows, cols), 0.02 * s),
        white=rng.standard_normal((rows, cols), dtype=np.float32),
    )


def _anatomy_grid(pose: _Pose, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Anatomy coordinates (x, y) of every pixel centre, float32."""
    s = math.sqrt(rows * cols)
    yv = ((np.arange(rows, dtype=np.float32) + 0.5) - 0.5 * rows) / s
    xv = ((np.arange(cols, dtype=np.float32) + 0.5) - 0.5 * cols) / s
    X, Y = pose.to_anatomy(xv[None, :], yv[:, None])
    return X.astype(np.float32), Y.astype(np.float32)


def _body(anatomy: Anatomy, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The trunk with sloping shoulders and the neck: ``(body mask, half width per row)``."""
    AX = np.abs(X)
    half_w = 0.44 * anatomy.body_width * (1.0 - 0.25 * (Y + 0.1) ** 2)
    shoulder = -0.44 + 1.2 * np.maximum(AX - 0.09, 0.0) ** 2 + 4.0 * np.maximum(AX - 0.33, 0.0) ** 2
    body_d = np.maximum(np.minimum(half_w - AX, Y - shoulder), np.minimum(0.075 - AX, 1.0))
    return _step(body_d, 0.008), half_w


@dataclass(frozen=True)
class _Chest:
    """Soft masks of the lungs and the heart."""

    lung_l: np.ndarray
    lung_r: np.ndarray
    envelope: np.ndarray  # the lungs' outline, softly
    heart: np.ndarray
    lungs: np.ndarray  # aerated lung: heart and aortic knob excluded
    heart_mask: np.ndarray  # the part of the heart that shows above the diaphragm


def _chest(geom: _Geometry, anatomy: Anatomy, X: np.ndarray, Y: np.ndarray) -> _Chest:
    """Lungs, heart and aortic knob."""
    level_l = geom.lung_level(-1, X, Y)
    level_r = geom.lung_level(1, X, Y)
    lung_l = _step((1.0 - level_l) / geom.power, 0.015)  # (1 - level) / p ~ distance in radii
    lung_r = _step((1.0 - level_r) / geom.power, 0.015)
    envelope = _step((1.0 - np.minimum(level_l, level_r)) / geom.power, 0.05)
    heart = _step(1.0 - geom.heart_radius(X, Y), 0.02)
    knob_y = anatomy.lung_center_y - 0.13 * anatomy.lung_height
    knob = _step(0.035 - np.sqrt((X - 0.055) ** 2 + (Y - knob_y) ** 2), 0.005)
    lungs = np.maximum(lung_l, lung_r) * (1.0 - heart) * (1.0 - knob)
    heart_mask = (heart > 0.5) & (geom.diaphragm_y > Y)
    return _Chest(lung_l, lung_r, envelope, heart, lungs, heart_mask)


def _subtract_gastric_bubble(
    att: np.ndarray, geom: _Geometry, X: np.ndarray, Y: np.ndarray, body: np.ndarray
) -> None:
    """Air under the patient's left hemidiaphragm (image right), in place."""
    bottom = geom.lung_cy(1) + geom.lung_ay_side(1)
    bubble_r = np.sqrt(((X - 0.19) / 1.4) ** 2 + (Y - bottom - 0.06) ** 2)
    att -= 0.08 * _step(0.04 - bubble_r, 0.006) * body


def _lung_fill(
    anatomy: Anatomy, X: np.ndarray, Y: np.ndarray, texture: np.ndarray, vessel_noise: np.ndarray
) -> np.ndarray:
    """Share of the lung's air left by the vessels and texture (1 = all air).

    Vessels are wavy streaks radiating from each hilum (cos(18 angle + noise) from a complex
    power, cheaper than arctan2), fading towards the periphery.
    """
    vessels = np.zeros_like(X)
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
    return 1.0 - 0.45 * np.minimum(vessels, 1.0) - 0.04 * texture


@dataclass
class _Lesions:
    """What the findings do to the lungs, and where they are."""

    replaced: np.ndarray  # share of the lung's air replaced, per pixel
    added: np.ndarray  # density added on top, in units of lung_depth
    mask: np.ndarray
    boxes: list[dict]

    def mark(self, mask: np.ndarray, win: tuple[slice, slice], label: str) -> None:
        box = _box(mask, label, offset=(win[0].start, win[1].start))
        if box is not None:
            self.mask[win] |= mask
            self.boxes.append(box)


def _paint_findings(
    draws: _Draws,
    chest: _Chest,
    fields: _Fields,
    X: np.ndarray,
    Y: np.ndarray,
    has_cardiomegaly: bool,
) -> _Lesions:
    """Consolidation and fluid replace air (and hide the vessels); nodules add density."""
    rows, cols = X.shape
    s = math.sqrt(rows * cols)
    pose, geom, lungs = draws.pose, draws.geom, chest.lungs
    out = _Lesions(np.zeros_like(X), np.zeros_like(X), np.zeros((rows, cols), dtype=bool), [])
    full = (slice(0, rows), slice(0, cols))
    for _side, cx, cy, strength, lobes in draws.opacity_blobs:
        reach = float(np.max(np.hypot(lobes[:, 0], lobes[:, 1]) + 2.2 * lobes[:, 2]))
        win = _window(pose.to_image(cx, cy), reach, pose.scale, s, (rows, cols))
        x, y = X[win] - cx, Y[win] - cy
        fld = np.zeros_like(x)
        for dx, dy, sg in lobes:
            fld += np.exp(((x - dx) ** 2 + (y - dy) ** 2) * (-0.5 / sg**2))
        fld = fld / max(float(fld.max()), 1e-6)
        # a ragged edge, but no specks away from the blob
        fld = fld + 0.12 * fields.blob_noise[win] * np.minimum(2.0 * fld, 1.0)
        density = _step(fld - 0.45, 0.03) * (0.92 + 0.08 * fields.texture[win])
        out.replaced[win] = np.maximum(out.replaced[win], strength * density)
        out.mark((density > 0.3) & (lungs[win] > 0.25), win, "opacity")
    if draws.effusion is not None:
        side, t_level, meniscus, strength = draws.effusion
        level = geom.lung_cy(side) + t_level * geom.lung_ay_side(side)
        lateral = np.clip(side * (X - geom.lung_cx(side)) / geom.lung_ax * 0.5 + 0.5, 0.0, 1.5)
        fluid = _step(Y - (level - meniscus * lateral**2), 0.005)
        fluid = fluid * (chest.lung_l if side < 0 else chest.lung_r)
        out.replaced = np.maximum(out.replaced, strength * fluid)
        out.mark((fluid > 0.5) & (lungs > 0.25), full, "effusion")
    if has_cardiomegaly:
        out.mark(chest.heart_mask, full, "cardiomegaly")
    for cx, cy, radius, strength in draws.nodules:
        win = _window(pose.to_image(cx, cy), 1.5 * radius, pose.scale, s, (rows, cols))
        d = np.sqrt((X[win] - cx) ** 2 + (Y[win] - cy) ** 2)
        spot = _step(radius - d, 0.08 * radius)
        out.added[win] += strength * spot * (1.0 + 0.3 * np.clip(1.0 - d / radius, 0.0, 1.0))
        out.mark((spot > 0.5) & (lungs[win] > 0.25), win, "nodule")
    return out


def _add_bones(
    att: np.ndarray,
    anatomy: Anatomy,
    X: np.ndarray,
    Y: np.ndarray,
    body: np.ndarray,
    half_w: np.ndarray,
    chest: _Chest,
) -> None:
    """Spine, posterior and anterior ribs, clavicles; the trachea's air. In place."""
    AX = np.abs(X)
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
    visible = 0.15 + 0.85 * chest.envelope * (1.0 - 0.6 * chest.heart)
    att += body * visible * (0.06 * ribs + 0.025 * ant)
    if anatomy.clavicles:
        clav_y = anatomy.rib_start + 0.04 - 0.12 * (AX - 0.05) + 0.4 * (AX - 0.2) ** 2
        clav = _step(0.013 - np.abs(Y - clav_y), 0.002) * _step(AX - 0.03, 0.005)
        att += 0.08 * clav * _step(0.36 - AX, 0.005)
    trachea_top = anatomy.lung_center_y - 0.08
    att -= 0.08 * _step(0.016 - AX, 0.0025) * _step(trachea_top - Y, 0.005)


def _expose(att: np.ndarray, draws: _Draws, white: np.ndarray) -> np.ndarray:
    """Exposure curve and signal-dependent noise; float32 in [0, 1]."""
    offset, gain, gamma = draws.exposure
    att = offset + gain * np.clip(att, 0.0, 1.0) ** gamma
    att = att + draws.noise_sigma * (0.6 + 0.8 * np.clip(att, 0.0, 1.0)) * white
    return np.clip(att, 0.0, 1.0).astype(np.float32)


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
    if min(rows, cols) < MIN_SIZE:
        raise ValueError(f"image size must be at least {MIN_SIZE} pixels, got {rows}x{cols}")
    if anatomy is None:
        anatomy = sample_anatomy(rng)
    draws = _draw_image(rng, anatomy, findings, rows, cols)
    has_cm = "cardiomegaly" in findings
    geom = draws.geom
    if has_cm and not paint_findings:
        geom = _Geometry(anatomy, anatomy.ctr)
        draws = replace(draws, geom=geom)
    X, Y = _anatomy_grid(draws.pose, rows, cols)
    fields = _draw_fields(rng, rows, cols)

    body, half_w = _body(anatomy, X, Y)
    thickness = np.sqrt(np.clip(1.0 - (X / half_w) ** 2, 0.0, 1.0))
    att = 0.02 + body * anatomy.tissue * (0.72 + 0.28 * thickness)
    chest = _chest(geom, anatomy, X, Y)
    if anatomy.gastric_bubble:
        _subtract_gastric_bubble(att, geom, X, Y, body)
    lung_fill = _lung_fill(anatomy, X, Y, fields.texture, fields.vessel_noise)
    if paint_findings:
        lesions = _paint_findings(draws, chest, fields, X, Y, has_cm)
    else:
        lesions = _Lesions(np.zeros_like(att), np.zeros_like(att), np.zeros(att.shape, bool), [])
    att -= anatomy.lung_depth * chest.lungs * lung_fill * (1.0 - lesions.replaced)
    att += anatomy.lung_depth * lesions.added * chest.lungs
    _add_bones(att, anatomy, X, Y, body, half_w, chest)
    return Phantom(
        attenuation=_expose(att, draws, fields.white),
        lung_mask=chest.lungs > 0.5,
        heart_mask=chest.heart_mask,
        lesion_mask=lesions.mask,
        boxes=tuple(lesions.boxes),
        ctr=geom.ctr,
    )
