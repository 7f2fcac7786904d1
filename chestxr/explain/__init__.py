"""Explanations of the classifier: Grad-CAM maps, their checks, overlays and reports.

- :mod:`~chestxr.explain.cam`: one class per CAM method over :class:`BaseCAM`, the registry,
  :func:`cam_maps` (every method and output from one forward) and :func:`compute_cams`.
- :mod:`~chestxr.explain.localisation`: pointing game and CAM-box IoU against annotated boxes.
- :mod:`~chestxr.explain.faithfulness`: model-randomisation check and deletion curves.
- :mod:`~chestxr.explain.overlay`: maps back to the original geometry, PNG figures, RGB blends.
- :mod:`~chestxr.explain.report_page`: the self-contained HTML page (Jinja2 template).
- :mod:`~chestxr.explain.report_builder`: :func:`report_model`, the report of a split.
- :mod:`~chestxr.explain.secondary_capture`: overlays as DICOM Secondary Capture objects.
"""

from __future__ import annotations

from chestxr.explain.cam import (
    CAM_METHODS,
    CAM_REGISTRY,
    BaseCAM,
    cam_maps,
    check_methods,
    compute_cams,
    register_cam,
)
from chestxr.explain.faithfulness import (
    deletion_curve,
    randomisation_check,
    randomise_weights,
    spearman,
)
from chestxr.explain.localisation import boxes_to_input, cam_box_iou, cam_peak, pointing_game
from chestxr.explain.overlay import blend_overlay, cam_to_original, overlay_figure
from chestxr.explain.report_page import ReportEntry, outcome, overlay_key, write_report_html
from chestxr.explain.secondary_capture import write_secondary_capture

__all__ = [
    "CAM_METHODS",
    "CAM_REGISTRY",
    "BaseCAM",
    "ReportEntry",
    "blend_overlay",
    "boxes_to_input",
    "cam_box_iou",
    "cam_maps",
    "cam_peak",
    "cam_to_original",
    "check_methods",
    "compute_cams",
    "deletion_curve",
    "outcome",
    "overlay_figure",
    "overlay_key",
    "pointing_game",
    "randomisation_check",
    "randomise_weights",
    "register_cam",
    "spearman",
    "write_report_html",
    "write_secondary_capture",
]
