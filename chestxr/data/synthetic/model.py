"""What a synthetic image is made of: the findings, a patient's anatomy, an image's encoding, and
the random draws that pick them (each a pure function of its generator)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FINDINGS = ("opacity", "effusion", "cardiomegaly", "nodule")
NO_FINDING = "normal"
GENERATOR_VERSION = "2"  # bump whenever the output of a given seed changes
MIN_SIZE = 64  # smallest rows or columns a phantom is rendered at

_SLOPES = (1.0, 0.5, 2.0)
_INTERCEPTS = (0.0, -1024.0, 100.0)


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
