"""Explanations of the classifier: Grad-CAM maps, their checks, overlays and reports.

- :mod:`~chestxr.explain.cam`: one class per CAM method over :class:`BaseCAM`, the registry,
  :func:`explain` (logits and every method's maps from one forward), :func:`cam_maps`,
  :func:`compute_cams` and :func:`top_finding_cams`.
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
    Explanation,
    TopFindingCams,
    cam_maps,
    check_methods,
    compute_cams,
    explain,
    register_cam,
    top_finding_cams,
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
    "Explanation",
    "ReportEntry",
    "TopFindingCams",
    "blend_overlay",
    "boxes_to_input",
    "cam_box_iou",
    "cam_maps",
    "cam_peak",
    "cam_to_original",
    "check_methods",
    "compute_cams",
    "deletion_curve",
    "explain",
    "outcome",
    "overlay_figure",
    "overlay_key",
    "pointing_game",
    "randomisation_check",
    "randomise_weights",
    "register_cam",
    "spearman",
    "top_finding_cams",
    "write_report_html",
    "write_secondary_capture",
]
