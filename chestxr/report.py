"""``python -m chestxr.report ckpt_path=PATH [data=...] [experiment=...]``: Grad-CAM report of
held-out scans.

Per scan: the windowed image, one overlay per CAM method and output, probability, decision and
ground truth; where lesion boxes are known, the pointing game and the IoU of the thresholded CAM;
on a few scans, the model-randomisation check and deletion curves. Writes ``report.html``
(self-contained), ``overlays/*.jpg`` and ``cam_metrics.json``; the work is done by
:func:`chestxr.explain.report_builder.report_model`, settings in ``conf/report/default.yaml``.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from chestxr.explain.cam import check_methods
from chestxr.explain.report_builder import report_model
from chestxr.inference import load_model
from chestxr.utils.files import ensure_fresh_run_dir

__all__ = ["report"]


def report(cfg: DictConfig) -> dict[str, Any]:
    """Report ``cfg.ckpt_path`` on the data config's ``cfg.split`` split."""
    from chestxr.evaluation.run import data_for_model

    check_methods(list(cfg.report.methods))  # before any folder or model: fail fast
    out_dir = ensure_fresh_run_dir(cfg.paths.output_dir)
    model = load_model(cfg.ckpt_path)
    return report_model(model, data_for_model(cfg.data, model), out_dir, cfg.report, cfg.split)


@hydra.main(version_base="1.3", config_path="../conf", config_name="report")
def main(cfg: DictConfig) -> None:
    report(cfg)


if __name__ == "__main__":
    main()
