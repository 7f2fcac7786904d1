"""Seed ensembles and test-time augmentation in ``evaluate``: views, means, checks, files."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from chestxr.data.audit.scan import file_sha256
from chestxr.evaluate import evaluate
from chestxr.evaluation.artefacts import read_predictions
from chestxr.evaluation.ensemble import IDENTITY, Ensemble, View
from chestxr.evaluation.run import EvaluationSetupError, load_for_evaluation, tta_views
from chestxr.inference import load_model, predict_dataset
from chestxr.models.module import ChestXRClassifier
from tests.conftest import compose_config
from tests.helpers.checkpoints import save_classifier
from tests.test_evaluation_run import OVERRIDES, _youden_optima

STORED_THRESHOLD = 0.5  # each member's own operating point: must not be used for the mean score


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two untrained members (seeds 0 and 1) of the tiny synthetic task, saved as checkpoints."""
    tmp = tmp_path_factory.mktemp("ensemble")
    cfg = compose_config("train", tmp, OVERRIDES)
    ckpts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = instantiate(cfg.model).eval()
        model.thresholds.fill_(STORED_THRESHOLD)
        ckpts.append(save_classifier(model, tmp / f"seed{seed}.ckpt"))
    members = [load_model(p, device=torch.device("cpu")) for p in ckpts]
    return {"tmp": tmp, "cfg": cfg, "ckpts": ckpts, "members": members}


def _images(n: int = 3, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1] (blurred noise), so bilinear sampling is near-exact."""
    x = torch.rand(n, 1, size // 8, size // 8, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic").clamp(0, 1)


def _standard(setup) -> list[View]:
    return tta_views({**OmegaConf.to_container(setup["cfg"].evaluation), "tta": "standard"})


def test_identity_only_tta_equals_the_plain_model(setup):
    model, x = setup["members"][0], _images()
    ens = Ensemble([model])
    assert ens.views == [IDENTITY]
    with torch.no_grad():
        assert torch.equal(ens(x), model(x))  # bit-identical: no resampling, a mean of one
    assert tta_views({"tta": None}) == []
    assert torch.isnan(ens.thresholds).all()  # the member's stored 0.5 is not the ensemble's


def test_each_view_is_the_intended_transform():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 3, 6] = 1.0  # right of the centre, one row above it
    # +90 degrees: counter-clockwise as displayed (exact at 90: pixel centres map onto centres)
    assert torch.allclose(View(rotate_deg=90)(x), torch.rot90(x, 1, dims=(2, 3)), atol=1e-6)
    # shift [0.25, 0.125] of 8 px: 2 px right and 1 px down, zeros where nothing came from
    moved = View(shift=(0.25, 0.125))(x)
    expected = torch.zeros_like(x)
    expected[0, 0, 1:, 2:] = x[0, 0, :-1, :-2]
    assert torch.allclose(moved, expected, atol=1e-6)
    # scale 1.1: a horizontal ramp is magnified about the centre (slope / 1.1, same centre value)
    ramp = torch.linspace(0.1, 0.9, 64).expand(1, 1, 64, 64).contiguous()
    zoomed = View(scale=1.1)(ramp)[0, 0, 32, 8:56]
    centre = (ramp[0, 0, 0, 31] + ramp[0, 0, 0, 32]) / 2
    cols = torch.arange(8, 56, dtype=torch.float32)
    step = float(ramp[0, 0, 0, 1] - ramp[0, 0, 0, 0])
    assert torch.allclose(zoomed, centre + (cols - 31.5) * step / 1.1, atol=1e-5)
    # +5 then -5 degrees: back to the image in the centre (bilinear twice blurs a little)
    img = _images(1, 64)
    back = View(rotate_deg=-5)(View(rotate_deg=5)(img))
    assert (back - img)[..., 16:48, 16:48].abs().max() < 0.02
    assert (View(rotate_deg=5)(img) - img)[..., 16:48, 16:48].abs().max() > 0.05


def test_no_view_flips_the_image(setup):
    views = _standard(setup)
    assert views[0] == IDENTITY and len(views) == 6
    x = torch.zeros(1, 1, 64, 64)
    x[0, 0, 20:44, 8:24] = 1.0  # a bright block on the image's left only
    for view in views:
        m = view.matrix()[:, :2]
        assert torch.det(m) > 0, view  # orientation kept: no reflection
        out = view(x)[0, 0]
        assert out[:, :32].sum() > 10 * out[:, 32:].sum(), view  # still on the left


@pytest.mark.parametrize(
    ("tta", "message"),
    [
        ([{"flip": True}], r"evaluation.tta\[0\].flip: flips are refused"),
        ([{"scale": 1.1}, {"hflip": 1}], r"evaluation.tta\[1\].hflip: flips are refused"),
        ([{"rotat_deg": 5}], r"evaluation.tta\[0\].rotat_deg is not a view setting"),
        ([{"rotate_deg": float("nan")}], r"evaluation.tta\[0\].rotate_deg must be a finite"),
        ([{"shift": [0.1, float("inf")]}], r"evaluation.tta\[0\].shift\[1\] must be a finite"),
        ([{"scale": 0}], r"evaluation.tta\[0\].scale must be > 0"),
        ([{"shift": 0.1}], r"evaluation.tta\[0\].shift must be \[x, y\]"),
        ([{"rotate_deg": 5}, {"rotate_deg": 5.0}], r"evaluation.tta\[1\] .* listed twice"),
        ("strong", r"evaluation.tta='strong' is not a preset; known: \['standard'\]"),
        (True, r"evaluation.tta must be null, a preset name or a non-empty list"),
    ],
)
def test_bad_tta_settings_are_refused_naming_the_key(setup, tta, message):
    evaluation = {**OmegaConf.to_container(setup["cfg"].evaluation), "tta": tta}
    with pytest.raises(EvaluationSetupError, match=message):
        tta_views(evaluation)
    with pytest.raises(EvaluationSetupError, match=message):  # before any checkpoint is read
        load_for_evaluation(["missing_a.ckpt", "missing_b.ckpt"], evaluation)


def test_a_bad_preset_entry_is_named_in_the_preset():
    with pytest.raises(EvaluationSetupError, match=r"tta_presets.mine\[0\].flip_lr"):
        tta_views({"tta": "mine", "tta_presets": {"mine": [{"flip_lr": True}]}})


def test_ensemble_logits_are_the_mean_of_the_members(setup):
    a, b = setup["members"]
    views = _standard(setup)
    x = _images(4)
    with torch.no_grad():
        separate = [a(x), b(x)]
        assert not torch.allclose(separate[0], separate[1], atol=1e-3)  # the mean is not trivial
        assert torch.allclose(Ensemble([a, b])(x), (separate[0] + separate[1]) / 2, atol=1e-5)
        per_view = [m(v(x)) for v in views for m in (a, b)]
        expected = torch.stack(per_view).mean(dim=0)
        assert torch.allclose(Ensemble([a, b], views)(x), expected, atol=1e-5)


def test_members_that_differ_in_preprocessing_are_refused(setup, tmp_path):
    cfg = setup["cfg"]
    other = instantiate(cfg.model, preprocess={**cfg.data.preprocess, "image_size": 96})
    odd = save_classifier(other, tmp_path / "other_size.ckpt")
    with pytest.raises(
        EvaluationSetupError, match=r"other_size\.ckpt differs from .*seed0\.ckpt on .*preprocess"
    ):
        load_for_evaluation([setup["ckpts"][0], odd], {})
    rule = instantiate(cfg.model, operating_point={"rule": "sensitivity", "target": 0.9})
    odd = save_classifier(rule, tmp_path / "other_rule.ckpt")
    with pytest.raises(EvaluationSetupError, match=r"other_rule\.ckpt differs .*\.operating_point"):
        load_for_evaluation([setup["ckpts"][0], odd], {})


def test_the_same_checkpoint_twice_is_refused(setup, tmp_path):
    first = setup["ckpts"][0]
    with pytest.raises(EvaluationSetupError, match=r"same checkpoint twice: .* the same file as"):
        load_for_evaluation([first, first.parent / ".." / first.parent.name / first.name], {})
    copy = shutil.copy(first, tmp_path / "copy.ckpt")
    with pytest.raises(EvaluationSetupError, match=r"copy\.ckpt is a copy of .*seed0\.ckpt"):
        load_for_evaluation([first, copy], {})
    with pytest.raises(EvaluationSetupError, match="empty list"):
        load_for_evaluation([], {})


def test_one_checkpoint_in_a_list_is_the_plain_model(setup):
    model = load_for_evaluation([str(setup["ckpts"][0])], {"tta": None})
    assert isinstance(model, ChestXRClassifier)
    assert model.thresholds.tolist() == [STORED_THRESHOLD]


def _evaluate_both_members(setup, out, *overrides: str):
    """The ``evaluate`` config of the two-member ensemble on the synthetic task, into ``out``."""
    data = [o for o in OVERRIDES if o.startswith("data.")]
    ckpts = setup["ckpts"]
    return compose_config(
        "evaluate",
        out,
        [*data, f"ckpt_path=[{ckpts[0]},{ckpts[1]}]", "evaluation.n_bootstrap=20", *overrides],
    )


def test_evaluate_a_two_member_ensemble_with_tta(setup):
    tmp, ckpts = setup["tmp"], setup["ckpts"]
    cfg = _evaluate_both_members(setup, tmp, "evaluation.tta=standard")
    metrics = evaluate(cfg)
    written = json.loads((tmp / "run" / "metrics.json").read_text())
    out = written["outputs"]["opacity"]
    views = _standard(setup)
    assert out["threshold_rule"]["members"] == [
        {"path": str(p), "sha256": file_sha256(p)} for p in ckpts
    ]
    assert out["threshold_rule"]["tta_views"] == [v.as_dict() for v in views]
    assert out["threshold_rule"]["chosen_on"] == "validation"
    assert metrics["outputs"]["opacity"]["threshold"] == out["threshold"]

    # what was scored: the mean logit of both members over the six views, computed here apart
    scorer = Ensemble(setup["members"], views)
    dm = instantiate(cfg.data, preprocess=dict(setup["members"][0].hparams.preprocess))
    val = predict_dataset(scorer, dm.dataset("val", train=False))
    test = predict_dataset(scorer, dm.dataset("test", train=False))
    optima = _youden_optima(val["target"][:, 0], val["prob"][:, 0].astype(np.float64))
    assert any(math.isclose(out["threshold"], t, rel_tol=1e-6) for t in optima), optima
    assert out["threshold"] != STORED_THRESHOLD
    csv = read_predictions(tmp / "run" / "predictions.csv")
    mine = dict(zip(test["path"], test["prob"][:, 0], strict=True))
    assert np.allclose(csv["y_prob"][:, 0], [mine[p] for p in csv["paths"]], atol=1e-6)


def test_temperature_scaling_of_an_ensemble_is_fitted_on_its_mean_logit(setup):
    """With an ensemble, the temperature is fitted on validation to the members' mean logit and
    calibrates that logit on the test split; the decisions stay those of the uncalibrated mean
    at its operating point."""
    from chestxr.evaluation.calibration import apply_temperature, fit_temperature, logit

    out = setup["tmp"] / "calibrated"
    cfg = _evaluate_both_members(setup, out, "evaluation.temperature_scaling=true")
    evaluate(cfg)
    written = json.loads((out / "run" / "metrics.json").read_text())["outputs"]["opacity"]

    scorer = Ensemble(setup["members"], [IDENTITY])
    dm = instantiate(cfg.data, preprocess=dict(setup["members"][0].hparams.preprocess))
    val = predict_dataset(scorer, dm.dataset("val", train=False))
    test = predict_dataset(scorer, dm.dataset("test", train=False))
    temperature = fit_temperature(val["logit"], val["target"])
    assert written["threshold_rule"]["temperature"] == pytest.approx(temperature, rel=1e-6)
    assert not math.isclose(temperature, 1.0, rel_tol=1e-3)  # it calibrates
    calibrated = dict(
        zip(test["path"], apply_temperature(test["logit"], temperature)[:, 0], strict=True)
    )
    csv = read_predictions(out / "run" / "predictions.csv")
    assert np.allclose(csv["y_prob"][:, 0], [calibrated[p] for p in csv["paths"]], atol=1e-6)
    # the operating point moved with the probabilities: the same scans are positive
    uncalibrated = dict(zip(test["path"], test["prob"][:, 0], strict=True))
    raw_threshold = float(apply_temperature(logit(written["threshold"]), 1.0 / temperature))
    raw = np.array([uncalibrated[p] for p in csv["paths"]])
    assert np.array_equal(csv["y_prob"][:, 0] >= written["threshold"], raw >= raw_threshold - 1e-9)
