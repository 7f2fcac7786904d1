"""CAM overlays on the radiograph at its original geometry: PNG figures and RGB arrays."""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from chestxr.utils.files import atomic_write_bytes

log = logging.getLogger(__name__)

GEOMETRY_KEYS = ("scale_y", "scale_x", "pad_top", "pad_left", "size")


def cam_to_original(
    cam: np.ndarray, orig_shape: Sequence[int], geometry: Mapping[str, float]
) -> np.ndarray:
    """Undo the preprocessing geometry: a map on the square input → a map on the original image.

    The input was made by resizing the original ``(H, W)`` to ``(round(H * scale_y),
    round(W * scale_x))`` and padding it to ``size x size`` with ``pad_top`` rows above and
    ``pad_left`` columns to the left (keep-aspect: both scales ``size / max(H, W)``; a plain
    resize: ``size / H`` and ``size / W`` with no padding). The pad is cropped off and the rest
    resized (bilinear) to ``(H, W)``.

    Args:
        cam: ``(size, size)`` map on the model input.
        orig_shape: ``(H, W)`` of the original image.
        geometry: mapping with keys ``scale_y``, ``scale_x``, ``pad_top``, ``pad_left``, ``size``.

    Returns:
        ``(H, W)`` float32 map.

    Raises:
        ValueError: missing geometry keys, or a ``cam`` or geometry that do not fit together.
    """
    missing = [k for k in GEOMETRY_KEYS if k not in geometry]
    if missing:
        raise ValueError(f"geometry lacks keys {missing}; got {sorted(geometry)}")
    cam = np.asarray(cam, dtype=np.float32)
    size = int(geometry["size"])
    if cam.shape != (size, size):
        raise ValueError(f"cam shape {cam.shape} does not match geometry size {size}")
    height, width = (int(v) for v in orig_shape)
    h = round(height * float(geometry["scale_y"]))
    w = round(width * float(geometry["scale_x"]))
    top, left = int(geometry["pad_top"]), int(geometry["pad_left"])
    if h < 1 or w < 1 or top < 0 or left < 0 or top + h > size or left + w > size:
        raise ValueError(
            f"resized image {h}x{w} at offset ({top}, {left}) does not fit in {size}x{size}"
        )
    crop = torch.from_numpy(np.ascontiguousarray(cam[top : top + h, left : left + w]))
    out = F.interpolate(crop[None, None], size=(height, width), mode="bilinear")
    return out[0, 0].numpy()


def _window(image: np.ndarray, window: tuple[float, float] | None) -> tuple[float, float]:
    """Display window: the given one, else the 0.5-99.5 percentile range of the image."""
    if window is not None:
        return float(window[0]), float(window[1])
    lo, hi = np.percentile(image, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _check_pair(image: np.ndarray, cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image, dtype=np.float32)
    cam = np.asarray(cam, dtype=np.float32)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2 or cam.shape != image.shape:
        raise ValueError(
            f"image must be (H, W) and cam the same shape; got {image.shape} and {cam.shape} "
            "(map the CAM with cam_to_original first)"
        )
    return image, cam


def blend_overlay(
    image: np.ndarray,
    cam: np.ndarray,
    *,
    alpha: float = 0.4,
    cmap: str = "jet",
    window: tuple[float, float] | None = None,
) -> np.ndarray:
    """Pixel-exact RGB blend of the windowed grey image and the coloured CAM (no axes, no text).

    Args:
        image: ``(H, W)`` radiograph (or ``(1, H, W)``).
        cam: ``(H, W)`` map in [0, 1].
        alpha: opacity of the CAM colours.
        cmap: matplotlib colour map name.
        window: ``(low, high)`` display window; default the 0.5-99.5 percentiles.

    Returns:
        ``(H, W, 3)`` uint8 array, e.g. for
        :func:`~chestxr.explain.secondary_capture.write_secondary_capture`.

    Raises:
        ValueError: shapes that differ.
    """
    image, cam = _check_pair(image, cam)
    lo, hi = _window(image, window)
    grey = np.clip((image - lo) / (hi - lo), 0.0, 1.0)[..., None]
    colours = matplotlib.colormaps[cmap](np.clip(cam, 0.0, 1.0))[..., :3]
    rgb = (1.0 - alpha) * grey + alpha * colours
    return np.round(rgb * 255.0).astype(np.uint8)


def overlay_figure(
    image: np.ndarray,
    cam: np.ndarray,
    path: str | Path,
    *,
    title: str,
    boxes: Sequence[Sequence[float]] | None = None,
    colorbar: bool = True,
    alpha: float = 0.4,
    cmap: str = "jet",
    window: tuple[float, float] | None = None,
    width_in: float = 5.0,
    dpi: int = 100,
) -> Path:
    """Save a PNG of the CAM over the windowed radiograph, at the image's own aspect ratio.

    Args:
        image: ``(H, W)`` radiograph (original geometry: see :func:`cam_to_original`).
        cam: ``(H, W)`` map in [0, 1].
        path: PNG to write (parents created; replaced atomically).
        title: e.g. ``"pneumonia p=0.91 → positive (label: positive)"``.
        boxes: ``(x0, y0, x1, y1)`` boxes in image pixels, drawn as outlines.
        colorbar: draw a colour bar for the CAM.
        alpha: opacity of the CAM.
        cmap: matplotlib colour map.
        window: ``(low, high)`` grey display window; default the 0.5-99.5 percentiles.
        width_in: figure width in inches; the height follows the aspect ratio.
        dpi: resolution of the PNG.

    Returns:
        The path written.

    Raises:
        ValueError: shapes that differ.
    """
    image, cam = _check_pair(image, cam)
    height, width = image.shape
    lo, hi = _window(image, window)
    fig = Figure(figsize=(width_in, width_in * height / width + 0.6), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="bilinear")
    shown = ax.imshow(cam, cmap=cmap, vmin=0.0, vmax=1.0, alpha=alpha, interpolation="bilinear")
    for x0, y0, x1, y1 in boxes or ():
        ax.add_patch(
            Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="lime", lw=1.5)
        )
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    if colorbar:
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, label="CAM")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", metadata={"Software": None})
    out = atomic_write_bytes(path, buffer.getvalue(), overwrite=True)
    log.debug("wrote overlay %s", out)
    return out
