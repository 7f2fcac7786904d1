"""Patient (cluster) bootstrap intervals, paired AUC comparison and the DeLong test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from chestxr.evaluation import (
    BinaryMetrics,
    binary_metrics,
    bootstrap_distribution,
    cluster_bootstrap,
    delong_test,
    paired_auc_difference,
    roc_band,
)
from chestxr.evaluation.binary_metrics import weighted_auc


def _task(n: int, seed: int, signal: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(float)
    logits = signal * (2 * y - 1) + rng.normal(0, 1, n)
    return y, 1 / (1 + np.exp(-logits))


def _width(ci: tuple[float, float]) -> float:
    return ci[1] - ci[0]


def test_intervals_contain_point_estimate():
    y, p = _task(400, seed=0)
    groups = np.arange(400) // 2
    point = binary_metrics(y, p, 0.5)
    ci = cluster_bootstrap(BinaryMetrics(0.5), y, p, groups, n_resamples=500, seed=1)
    for name, (low, high) in ci.items():
        assert low <= point[name] <= high, name
        assert low < high, name


def test_intervals_narrow_as_sample_grows():
    widths = []
    for n in (100, 2000):
        y, p = _task(n, seed=2)
        ci = cluster_bootstrap(BinaryMetrics(0.5), y, p, None, n_resamples=400, seed=0)
        widths.append(_width(ci["roc_auc"]))
    assert widths[1] < widths[0] / 2.5  # ~ sqrt(20) = 4.5 in theory


def test_patient_intervals_wider_than_scan_intervals_when_scans_are_correlated():
    y_pat, p_pat = _task(60, seed=3)
    scans_per_patient = 10  # identical copies: perfectly correlated within a patient
    y, p = np.repeat(y_pat, scans_per_patient), np.repeat(p_pat, scans_per_patient)
    groups = np.repeat([f"patient-{i:03d}" for i in range(60)], scans_per_patient)
    naive = cluster_bootstrap(BinaryMetrics(0.5), y, p, None, n_resamples=500, seed=0)
    patient = cluster_bootstrap(BinaryMetrics(0.5), y, p, groups, n_resamples=500, seed=0)
    for name in ("roc_auc", "sensitivity", "specificity", "accuracy"):
        assert _width(patient[name]) > 2 * _width(naive[name]), name
    # The patient-level interval is that of the 60 patients with one scan each.
    one_each = cluster_bootstrap(BinaryMetrics(0.5), y_pat, p_pat, None, n_resamples=500, seed=0)
    assert _width(patient["roc_auc"]) == pytest.approx(_width(one_each["roc_auc"]), rel=1e-9)


def test_vectorised_and_generic_paths_agree():
    y, p = _task(150, seed=4)
    groups = np.arange(150) // 3
    fast = bootstrap_distribution(BinaryMetrics(0.4), y, p, groups, n_resamples=60, seed=5)

    def plain(yt, yp):  # no ``batched`` attribute: called once per resample
        return binary_metrics(yt, yp, 0.4)

    slow = bootstrap_distribution(plain, y, p, groups, n_resamples=60, seed=5)
    assert set(fast) == set(slow)
    for name in fast:
        np.testing.assert_allclose(fast[name], slow[name], rtol=1e-10, err_msg=name)


def test_standard_metrics_of_a_thousand_resamples_go_through_the_batched_path():
    """The evaluation's metrics are computed for blocks of resamples at once (its speed at scale
    is measured by ``benchmarks/bench_bootstrap.py``), never by a call per resample."""
    calls: list[int] = []

    class Counted(BinaryMetrics):
        def __call__(self, y_true, y_prob):
            raise AssertionError("one call per resample: the batched path was not taken")

        def batched(self, y_true, y_prob, weights):
            calls.append(len(weights))
            return super().batched(y_true, y_prob, weights)

    y, p = _task(1000, seed=7)
    ci = cluster_bootstrap(Counted(0.5), y, p, np.arange(1000) // 4, n_resamples=1000, seed=0)
    assert sum(calls) == 1000 and len(calls) < 1000
    assert ci == cluster_bootstrap(
        BinaryMetrics(0.5), y, p, np.arange(1000) // 4, n_resamples=1000, seed=0
    )


def test_float_metric_and_nan_labels_and_seed():
    y, p = _task(200, seed=6)
    y[::7] = np.nan
    ci = cluster_bootstrap(roc_auc_score, y, p, None, n_resamples=50, seed=0)
    assert set(ci) == {"value"}
    keep = ~np.isnan(y)
    same = cluster_bootstrap(roc_auc_score, y[keep], p[keep], None, n_resamples=50, seed=0)
    assert ci == same
    other = cluster_bootstrap(roc_auc_score, y, p, None, n_resamples=50, seed=1)
    assert other != ci


def test_roc_band_brackets_the_curve():
    y, p = _task(300, seed=8)
    band = roc_band(y, p, None, n_resamples=200, seed=0)
    assert band["fpr"].shape == band["low"].shape == band["high"].shape
    assert np.all(band["low"] <= band["high"])
    assert band["low"][50] < band["high"][50]


def test_delong_identical_predictions():
    y, p = _task(300, seed=9)
    res = delong_test(y, p, p.copy())
    assert res["delta"] == 0 and res["z"] == 0 and res["p_value"] == 1
    paired = paired_auc_difference(y, p, p.copy(), None, n_resamples=200, seed=0)
    assert paired["delta"] == 0 and paired["ci"] == [0.0, 0.0] and paired["p_value"] == 1.0


def test_clearly_different_models():
    rng = np.random.default_rng(10)
    y, good = _task(600, seed=10, signal=1.5)
    weak = np.clip(good + rng.normal(0, 0.6, good.size), 0, 1)
    dl = delong_test(y, good, weak)
    assert dl["auc_a"] == pytest.approx(roc_auc_score(y, good))
    assert dl["auc_b"] == pytest.approx(roc_auc_score(y, weak))
    assert dl["delta"] > 0 and dl["p_value"] < 1e-4
    paired = paired_auc_difference(y, good, weak, np.arange(600) // 2, 1000, seed=0)
    assert np.sign(paired["delta"]) == np.sign(dl["z"]) == 1
    assert paired["ci"][0] > 0 and paired["p_value"] < 0.01
    reverse = paired_auc_difference(y, weak, good, np.arange(600) // 2, 1000, seed=0)
    assert reverse["delta"] == pytest.approx(-paired["delta"])
    assert reverse["ci"][1] < 0


def test_delong_standard_error_matches_scan_bootstrap():
    rng = np.random.default_rng(12)
    y, a = _task(800, seed=12)
    b = np.clip(a + rng.normal(0, 0.15, a.size), 0, 1)
    dl = delong_test(y, a, b)
    # Scan bootstrap as draw counts (weighted AUC is checked against sklearn elsewhere).
    draws = rng.integers(0, y.size, size=(2000, y.size))
    counts = np.stack([np.bincount(d, minlength=y.size) for d in draws]).astype(float)
    diffs = weighted_auc(y, a, counts) - weighted_auc(y, b, counts)
    assert dl["se"] == pytest.approx(np.std(diffs), rel=0.15)


def test_delong_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        delong_test(np.ones(5), np.linspace(0, 1, 5), np.linspace(0, 1, 5))


@pytest.mark.parametrize("flip", [False, True])
def test_delong_with_a_single_positive_or_negative_gives_no_p_value(flip):
    # one positive (or, flipped, one negative): the variance over that one case is undefined,
    # not zero, so no p-value can be given (the old code reported p = 0.59 here)
    y, a = _task(40, seed=13)
    y[:] = 0
    y[7] = 1
    y = 1 - y if flip else y
    b = np.clip(a + np.random.default_rng(14).normal(0, 0.2, a.size), 0, 1)
    res = delong_test(y, a, b)
    assert res["p_value"] is None and res["z"] is None and res["se"] is None
    assert "at least 2 positives and 2 negatives" in res["reason"]
    assert res["auc_a"] == pytest.approx(roc_auc_score(y, a))
    assert res["delta"] == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    paired = paired_auc_difference(y, a, b, None, n_resamples=50, seed=0)
    assert paired["delong"]["p_value"] is None and paired["delong"]["reason"]


def test_delong_p_value_is_the_normal_tail_of_z():
    y, a = _task(300, seed=15)
    b = np.clip(a + np.random.default_rng(16).normal(0, 0.2, a.size), 0, 1)
    res = delong_test(y, a, b)
    assert res["reason"] is None
    assert res["p_value"] == pytest.approx(math.erfc(abs(res["z"]) / math.sqrt(2)))
