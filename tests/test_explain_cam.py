"""compute_cams: shapes, inference mode, class selection, and that it leaves the model alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from chestxr.explain import compute_cams
from chestxr.models.resnet import build_resnet18


def _model(num_outputs: int, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_resnet18(num_outputs).eval()


def _images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_maps_in_inference_mode_match_maps_outside(method: str) -> None:
    model = _model(1)
    x = _images(2)
    outside = compute_cams(model, x, method=method, target_layer="layer3")
    with torch.inference_mode():
        inside = compute_cams(model, x.clone(), method=method, target_layer="layer3")
    with torch.no_grad():
        under_no_grad = compute_cams(model, x, method=method, target_layer="layer3")
    assert inside.shape == (2, 64, 64)
    assert inside.dtype == np.float32
    assert inside.min() >= 0.0
    assert inside.max() <= 1.0
    assert np.isclose(inside.reshape(2, -1).max(axis=1), 1.0).all()
    np.testing.assert_allclose(inside, outside, atol=1e-5)
    np.testing.assert_allclose(under_no_grad, outside, atol=1e-5)


def test_output_index_selects_that_outputs_map() -> None:
    model = _model(2)
    x = _images(2)
    first = compute_cams(model, x, output_index=0, target_layer="layer3")
    second = compute_cams(model, x, output_index=1, target_layer="layer3")
    assert np.abs(first - second).max() > 0.05
    with pytest.raises(ValueError, match="output_index 2"):
        compute_cams(model, x, output_index=2, target_layer="layer3")


def test_gradcampp_batch_equals_one_image_at_a_time() -> None:
    # MONAI's Grad-CAM++ broadcasts exp(score) over the wrong axis when B > 1; cam.py fixes it.
    # float64: Grad-CAM++'s alpha (g^2 / (2 g^2 + sum A g^3)) amplifies float32 rounding to 1e-2.
    model = _model(1).double()
    x = _images(3).double()
    batch = compute_cams(model, x, method="gradcam++", target_layer="layer3")
    single = [compute_cams(model, img, method="gradcam++", target_layer="layer3") for img in x]
    single = np.concatenate(single)
    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_model_state_is_restored_and_no_hooks_left() -> None:
    model = _model(1).train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compute_cams(model, _images(2), target_layer="layer4")
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in model.parameters())
    # eval mode during the call: BatchNorm running statistics untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.layer4._forward_hooks
    assert not model.layer4._backward_hooks


class _Wrapped(nn.Module):
    """Like the Lightning module: normalises its input and keeps the network as ``net``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 0.5) / 0.25)


def test_nested_target_layer_and_bad_arguments() -> None:
    net = _model(1)
    x = _images(1)
    cams = compute_cams(_Wrapped(net), x[0], target_layer="net.layer3")
    np.testing.assert_allclose(
        cams, compute_cams(net, (x - 0.5) / 0.25, target_layer="layer3"), atol=1e-5
    )
    with pytest.raises(ValueError, match="layer9"):
        compute_cams(net, x, target_layer="layer9")
    with pytest.raises(ValueError, match="method"):
        compute_cams(net, x, method="lime")
    with pytest.raises(ValueError, match="shape"):
        compute_cams(net, x[0, 0], target_layer="layer3")
