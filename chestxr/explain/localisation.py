"""Does a CAM point at the annotated region? Pointing game and thresholded-map IoU."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Box = Sequence[float]  # (x0, y0, x1, y1), x = column, end-exclusive pixel coordinates


def _check_cam(cam: np.ndarray) -> np.ndarray:
    cam = np.asarray(cam, dtype=np.float64)
    if cam.ndim != 2:
        raise ValueError(f"cam must be a 2-D (H, W) map, got shape {cam.shape}")
    if not np.isfinite(cam).all():
        raise ValueError("cam contains NaN or infinite values")
    return cam


def _box_mask(shape: tuple[int, int], boxes: Sequence[Box], grow: float = 0.0) -> np.ndarray:
    """Union of the boxes as a boolean mask; each box grown by ``grow`` pixels on every side."""
    mask = np.zeros(shape, dtype=bool)
    for box in boxes:
        if len(box) != 4:
            raise ValueError(f"a box is (x0, y0, x1, y1), got {box!r}")
        x0, y0, x1, y1 = (float(v) for v in box)
        if x1 < x0 or y1 < y0:
            raise ValueError(f"box {box!r} has x1 < x0 or y1 < y0")
        r0 = max(int(np.floor(y0 - grow)), 0)
        r1 = min(int(np.ceil(y1 + grow)), shape[0])
        c0 = max(int(np.floor(x0 - grow)), 0)
        c1 = min(int(np.ceil(x1 + grow)), shape[1])
        if r1 > r0 and c1 > c0:
            mask[r0:r1, c0:c1] = True
    return mask


def cam_peak(cam: np.ndarray) -> tuple[int, int] | None:
    """``(row, col)`` of the CAM's maximum, or None for a flat map.

    An upsampled coarse map has plateaus of equal maxima (the whole border cell of a bilinear
    upsampling); ``argmax`` would take the plateau's first pixel, a corner. The peak is the
    maximal pixel nearest the centroid of all maximal pixels instead.

    Args:
        cam: ``(H, W)`` map.

    Returns:
        The peak's pixel position, or None when every pixel has the same value.

    Raises:
        ValueError: ``cam`` is not 2-D or not finite.
    """
    cam = _check_cam(cam)
    top = cam.max()
    if top <= cam.min():
        return None
    rows, cols = np.nonzero(cam >= top)
    nearest = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    return int(rows[nearest]), int(cols[nearest])


def pointing_game(cam: np.ndarray, boxes: Sequence[Box], *, tolerance: float = 0.0) -> bool:
    """Pointing game (Zhang et al. 2016): is the CAM's peak inside any annotated box?

    Args:
        cam: ``(H, W)`` map; boxes are in its pixel coordinates.
        boxes: ``(x0, y0, x1, y1)`` boxes (x = column, end-exclusive); none → a miss.
        tolerance: pixels by which each box is grown (Zhang et al. use 15 at ~224 px).

    Returns:
        True for a hit. A flat map (no peak) is a miss.

    Raises:
        ValueError: ``cam`` is not a finite 2-D map or a box is malformed.
    """
    peak = cam_peak(cam)
    if peak is None or len(boxes) == 0:
        return False
    return bool(_box_mask(np.shape(cam), boxes, grow=tolerance)[peak])


def cam_box_iou(cam: np.ndarray, boxes: Sequence[Box], threshold: float = 0.5) -> float:
    """IoU between the region where ``cam >= threshold * max(cam)`` and the union of the boxes.

    Args:
        cam: ``(H, W)`` map; boxes are in its pixel coordinates.
        boxes: ``(x0, y0, x1, y1)`` boxes (x = column, end-exclusive).
        threshold: fraction of the map's maximum, in (0, 1].

    Returns:
        IoU in [0, 1]; 0 when the map has no positive value or there are no boxes.

    Raises:
        ValueError: ``threshold`` outside (0, 1], or bad ``cam``/boxes.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    cam = _check_cam(cam)
    top = cam.max()
    if top <= 0 or len(boxes) == 0:
        return 0.0
    region = cam >= threshold * top
    truth = _box_mask(cam.shape, boxes)
    union = np.logical_or(region, truth).sum()
    return float(np.logical_and(region, truth).sum() / union) if union else 0.0


def boxes_to_input(boxes: Sequence[Box], geometry: Mapping[str, float]) -> list[tuple[float, ...]]:
    """Map boxes from original-image pixels to the square model input (the CAM's grid).

    Args:
        boxes: ``(x0, y0, x1, y1)`` boxes on the original image.
        geometry: the preprocessing geometry (``scale_y``, ``scale_x``, ``pad_top``, ``pad_left``),
            as for :func:`chestxr.explain.overlay.cam_to_original`.

    Returns:
        The boxes in input pixel coordinates.
    """
    sy, sx = float(geometry["scale_y"]), float(geometry["scale_x"])
    top, left = float(geometry["pad_top"]), float(geometry["pad_left"])
    return [
        (x0 * sx + left, y0 * sy + top, x1 * sx + left, y1 * sy + top) for x0, y0, x1, y1 in boxes
    ]
