"""Metrics, operating points and calibration against scikit-learn and hand-counted values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.special import expit
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    f1_score,
    roc_auc_score,
)

from chestxr.evaluation import (
    METRICS,
    SCALAR_METRICS,
    apply_temperature,
    binary_metrics,
    choose_threshold,
    choose_thresholds,
    expected_calibration_error,
    fit_temperature,
    logit,
    reliability_curve,
    temperature_scale_probabilities,
    weighted_binary_metrics,
)
from chestxr.evaluation.results import schema_description

Y = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0, 1], dtype=float)
P = np.array([0.9, 0.2, 0.65, 0.4, 0.55, 0.1, 0.8, 0.35, 0.7, 0.3])


def _random_task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(float)
    p = np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1).round(2)  # rounding creates ties
    return y, p


def test_confusion_based_metrics_by_hand():
    m = binary_metrics(Y, P, threshold=0.5)
    # Predicted positive (p >= 0.5): idx 0, 2, 4, 6, 8. Truth positive: 0, 2, 3, 6, 9.
    tp, fp, fn, tn = 3, 2, 2, 3  # tp: 0, 2, 6; fp: 4, 8; fn: 3, 9; tn: 1, 5, 7
    assert m["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["ppv"] == pytest.approx(tp / (tp + fp))
    assert m["npv"] == pytest.approx(tn / (tn + fn))
    assert (m["n"], m["n_positive"], m["n_negative"]) == (10, 5, 5)
    assert m["threshold"] == 0.5


def test_scores_match_sklearn():
    y, p = _random_task(300, seed=3)
    m = binary_metrics(y, p, threshold=0.45)
    pred = (p >= 0.45).astype(int)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["average_precision"] == pytest.approx(average_precision_score(y, p))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p))


def test_ece_by_hand():
    y = np.array([1, 0, 1, 0, 1])
    p = np.array([0.05, 0.15, 0.92, 0.95, 0.98])
    # bin 0 [0, .1]: y=1 p=.05 -> |1 - .05| * 1/5; bin 1 (.1, .2]: |0 - .15| * 1/5;
    # bin 9 (.9, 1]: mean y = 2/3, mean p = .95 -> |2/3 - .95| * 3/5.
    expected = 0.95 / 5 + 0.15 / 5 + abs(2 / 3 - 0.95) * 3 / 5
    assert expected_calibration_error(y, p) == pytest.approx(expected)
    assert binary_metrics(y, p, 0.5)["ece"] == pytest.approx(expected)


def test_reliability_curve_matches_sklearn_on_nonempty_bins():
    y, p = _random_task(400, seed=5)
    p[:3] = [0.1, 0.2, 1.0]  # values on bin edges
    rc = reliability_curve(y, p, n_bins=10)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    nonempty = [i for i, c in enumerate(rc["counts"]) if c]
    np.testing.assert_allclose([rc["observed_frequency"][i] for i in nonempty], prob_true)
    np.testing.assert_allclose([rc["mean_predicted"][i] for i in nonempty], prob_pred)
    assert sum(rc["counts"]) == 400


def test_nan_labels_are_masked():
    y = np.r_[Y, [np.nan, np.nan]]
    p = np.r_[P, [0.99, 0.01]]
    assert binary_metrics(y, p, 0.5) == binary_metrics(Y, P, 0.5)
    assert choose_threshold(y, p) == choose_threshold(Y, P)


def test_undefined_values_are_none():
    y = np.zeros(4)
    m = binary_metrics(y, np.array([0.1, 0.2, 0.3, 0.4]), threshold=0.9)
    assert m["roc_auc"] is None and m["average_precision"] is None
    assert m["sensitivity"] is None and m["ppv"] is None and m["f1"] is None
    assert m["specificity"] == 1.0 and m["npv"] == 1.0
    empty = binary_metrics(np.full(3, np.nan), np.full(3, 0.5), 0.5)
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["ece"] is None


@pytest.mark.parametrize(("y", "p"), [([0, 1, 2], [0.1, 0.2, 0.3]), ([0, 1], [0.1, 1.5])])
def test_invalid_inputs_raise(y, p):
    with pytest.raises(ValueError):
        binary_metrics(np.array(y, float), np.array(p), 0.5)


def test_weighted_metrics_with_unit_weights_equal_binary_metrics():
    y, p = _random_task(250, seed=7)
    m = binary_metrics(y, p, 0.5)
    w = weighted_binary_metrics(y, p, 0.5, np.ones((2, y.size)))
    for key, values in w.items():
        np.testing.assert_allclose(values, m[key], rtol=1e-12, err_msg=key)


def test_weighted_metrics_equal_metrics_on_duplicated_rows():
    y, p = _random_task(120, seed=8)
    counts = np.random.default_rng(0).integers(0, 4, y.size)
    idx = np.repeat(np.arange(y.size), counts)
    m = binary_metrics(y[idx], p[idx], 0.4)
    w = weighted_binary_metrics(y, p, 0.4, counts[None, :].astype(float))
    for key, values in w.items():
        assert values[0] == pytest.approx(m[key], rel=1e-12), key


def _brute_force_youden(y: np.ndarray, p: np.ndarray) -> float:
    best = -np.inf
    for t in np.unique(p):
        pred = p >= t
        j = pred[y == 1].mean() + (~pred[y == 0]).mean() - 1
        best = max(best, j)
    return best


def _sens_spec(y: np.ndarray, p: np.ndarray, t: float) -> tuple[float, float]:
    pred = p >= t
    return pred[y == 1].mean(), (~pred[y == 0]).mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_youden_is_the_brute_force_argmax(seed):
    y, p = _random_task(200, seed)
    t = choose_threshold(y, p, "youden")
    sens, spec = _sens_spec(y, p, t)
    assert sens + spec - 1 == pytest.approx(_brute_force_youden(y, p))


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_sensitivity_rule_reaches_target_at_highest_threshold(target):
    y, p = _random_task(300, seed=4)
    t = choose_threshold(y, p, "sensitivity", target)
    assert _sens_spec(y, p, t)[0] >= target
    higher = np.unique(p)[np.unique(p) > t]
    assert all(_sens_spec(y, p, h)[0] < target for h in higher)


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_specificity_rule_reaches_target_at_lowest_threshold(target):
    y, p = _random_task(300, seed=6)
    t = choose_threshold(y, p, "specificity", target)
    assert _sens_spec(y, p, t)[1] >= target
    lower = np.unique(p)[np.unique(p) < t]
    assert all(_sens_spec(y, p, low)[1] < target for low in lower)


def test_specificity_one_when_top_score_is_negative():
    y, p = np.array([0, 1, 0.0]), np.array([0.9, 0.5, 0.1])
    t = choose_threshold(y, p, "specificity", 1.0)
    assert t > 0.9 and _sens_spec(y, p, t)[1] == 1.0


def test_nothing_positive_threshold_survives_the_models_float32_buffer():
    """The threshold above every score is stored in the model's float32 buffer; the next float64
    above a float32 score rounded back to that score there, so the top scan was called positive
    while the log said nothing was."""
    y = np.array([0, 1, 0.0])
    p = np.array([0.9, 0.5, 0.1], np.float32)  # as evaluation predicts them
    stored = torch.tensor([choose_threshold(y, p, "specificity", 1.0)], dtype=torch.float32)
    assert float(stored[0]) > float(p.max())


def test_fixed_rule_and_errors():
    assert choose_threshold([0, 1], [0.2, 0.7], "fixed", 0.3) == 0.3
    with pytest.raises(ValueError, match="no positive case"):
        choose_threshold(np.zeros(5), np.linspace(0, 1, 5))
    with pytest.raises(ValueError, match="unknown threshold rule"):
        choose_threshold(Y, P, "max_f1")
    with pytest.raises(ValueError, match="target"):
        choose_threshold(Y, P, "sensitivity")


def test_choose_thresholds_per_output():
    y = np.stack([Y, 1 - Y], axis=1)
    p = np.stack([P, 1 - P], axis=1)
    out = choose_thresholds(y, p, ["a", "b"])
    assert out == {"a": choose_threshold(Y, P), "b": choose_threshold(1 - Y, 1 - P)}


@pytest.mark.parametrize("temperature", [0.5, 2.5])
def test_temperature_scaling_recovers_known_temperature(temperature):
    rng = np.random.default_rng(11)
    true_logits = rng.normal(0, 2.0, 20000)
    y = (rng.random(true_logits.size) < 1 / (1 + np.exp(-true_logits))).astype(float)
    observed = true_logits * temperature  # a model over/under-confident by this factor
    fitted = fit_temperature(observed, y)
    assert fitted == pytest.approx(temperature, rel=0.05)
    calibrated = apply_temperature(observed, fitted)
    raw = apply_temperature(observed, 1.0)
    assert expected_calibration_error(y, calibrated) < expected_calibration_error(y, raw)
    assert math.isfinite(fitted)


@pytest.mark.parametrize("temperature", [0.5, 2.5])
def test_temperature_scaling_keeps_decisions_at_float32_ties(temperature):
    """Confident logits round to one float32 probability; the threshold chosen on validation is
    one of them. A test scan whose logit is a little lower but whose probability is the same is
    positive at that threshold, and stays positive once calibrated (mapping the threshold's own
    logit moved it below: the CI failure of 2026-12-02). The calibrated probabilities are the
    logits' own, at full precision."""
    logits = np.array([[14.0], [13.97], [13.9], [2.0], [-3.0], [0.0], [-40.0], [40.0]], np.float32)
    prob = expit(logits)  # float32, as evaluation computes it
    threshold = prob[0]  # a validation scan's probability
    assert prob[1, 0] == threshold[0] and logits[1, 0] < logits[0, 0]  # the tie is real
    assert prob[2, 0] < threshold[0]
    scaled, scaled_threshold = temperature_scale_probabilities(logits, threshold, temperature)
    assert ((scaled >= scaled_threshold) == (prob >= threshold)).all()
    assert scaled == pytest.approx(apply_temperature(logits, temperature), rel=0, abs=0)
    old = apply_temperature(logit(threshold), temperature)  # the threshold's own logit, mapped
    assert (scaled[1] < old).all()  # what moved the tied scan below it before


def test_temperature_scaling_refuses_to_change_a_decision():
    """At a small temperature, sigmoid(logit / T) is exactly 1.0 in float64 for high logits: a
    scan just below a high threshold would reach it, so the evaluation stops instead."""
    logits = np.array([[8.0], [9.0]], np.float32)
    with pytest.raises(ValueError, match=r"change 1 decision\(s\), first at row 0, output 0"):
        temperature_scale_probabilities(logits, expit(logits[1]), 0.2)
    with pytest.raises(ValueError, match=r"logits \(N, K\) and thresholds \(K,\)"):
        temperature_scale_probabilities(logits[:, 0], expit(logits[1]), 2.0)


def test_sigmoid_and_logit_hold_at_extreme_logits_without_warnings():
    z = np.array([-1000.0, -40.0, 0.0, 40.0, 1000.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # np.exp(-x) overflowed with a RuntimeWarning here
        p = apply_temperature(z, 1.0)
        back = logit(np.array([1e-12, 0.25, 0.5, 0.75]))
    assert p[0] == 0.0 and p[-1] == 1.0 and p[2] == 0.5
    assert p[1] == pytest.approx(math.exp(-40.0), rel=1e-12)  # not rounded to 0
    assert back == pytest.approx([math.log(1e-7 / (1 - 1e-7)), math.log(1 / 3), 0.0, math.log(3)])


def test_undefined_metrics_are_none_with_a_reason():
    m = binary_metrics(np.zeros(6), np.linspace(0.1, 0.9, 6), threshold=0.95)
    assert m["roc_auc"] is None and m["sensitivity"] is None and m["ppv"] is None
    assert m["undefined"]["roc_auc"] == "needs both a positive and a negative case"
    assert m["undefined"]["sensitivity"] == "no positive case"
    assert m["undefined"]["ppv"] == "no scan predicted positive"
    assert "specificity" not in m["undefined"] and m["specificity"] == 1.0
    assert set(m["undefined"]) == {k for k in SCALAR_METRICS if m[k] is None}


def test_registry_drives_metrics_bootstrap_and_schema():
    names = [m.name for m in METRICS]
    assert tuple(names) == SCALAR_METRICS and len(set(names)) == len(names)
    y, p = _random_task(120, seed=9)
    point = binary_metrics(y, p, 0.5)
    batched = weighted_binary_metrics(y, p, 0.5, np.ones((1, y.size)))
    assert set(names) <= set(point) and set(batched) == set(names)
    text = schema_description()
    assert all(f" {m.name} " in text and m.undefined in text for m in METRICS)
