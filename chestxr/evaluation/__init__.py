"""Clinical evaluation of K sigmoid outputs: metrics at an operating point, patient-level
bootstrap intervals, calibration, paired model comparison, figures and report files.

Conventions: ``y_true`` is (N, K) 0/1 with NaN where a label is unknown (masked per output),
``y_prob`` (N, K) probabilities, ``names`` the K output names, ``patient_ids`` (N,) the bootstrap
unit. A scan is predicted positive when ``prob >= threshold``.

Modules: ``binary_metrics`` (THE metric registry ``METRICS`` and its point/bootstrap functions),
``bootstrap`` (patient bootstrap, DeLong), ``calibration``, ``operating_point``, ``results`` (the
``metrics.json`` content and its schema), ``artefacts`` (the files of a run), ``html`` (the
``summary.html`` template), ``plots``, ``comparison`` (two models on the same scans), ``ensemble``
(seed ensembles and test-time augmentation: a mean of logits) and ``run`` (evaluate a model on a
split: what ``python -m chestxr.evaluate`` and ``train`` call).
"""

from __future__ import annotations

from chestxr.evaluation.artefacts import read_predictions, write_evaluation
from chestxr.evaluation.binary_metrics import (
    METRICS,
    SCALAR_METRICS,
    BinaryMetrics,
    Metric,
    binary_metrics,
    weighted_binary_metrics,
)
from chestxr.evaluation.bootstrap import (
    bootstrap_distribution,
    cluster_bootstrap,
    delong_test,
    paired_auc_difference,
    roc_band,
)
from chestxr.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    logit,
    reliability_curve,
    temperature_scale_probabilities,
)
from chestxr.evaluation.operating_point import choose_threshold, choose_thresholds
from chestxr.evaluation.plots import plot_confusion_matrix, plot_pr, plot_reliability, plot_roc
from chestxr.evaluation.results import SCHEMA, evaluate_predictions

__all__ = [
    "METRICS",
    "SCALAR_METRICS",
    "SCHEMA",
    "BinaryMetrics",
    "Metric",
    "apply_temperature",
    "binary_metrics",
    "bootstrap_distribution",
    "choose_threshold",
    "choose_thresholds",
    "cluster_bootstrap",
    "delong_test",
    "evaluate_predictions",
    "expected_calibration_error",
    "fit_temperature",
    "logit",
    "paired_auc_difference",
    "plot_confusion_matrix",
    "plot_pr",
    "plot_reliability",
    "plot_roc",
    "read_predictions",
    "reliability_curve",
    "roc_band",
    "temperature_scale_probabilities",
    "weighted_binary_metrics",
    "write_evaluation",
]
