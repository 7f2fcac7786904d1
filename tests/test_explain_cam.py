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


def test_layer4_cells_are_centred_on_stride_multiples_and_upsampled_there():
    """Cell i of ResNet-18's last stage sees input pixels centred on 32*i (not 32*i + 16)."""
    from chestxr.explain.cam import stride_aligned_upsampler
    from chestxr.models.resnet import build_resnet18

    net = build_resnet18(1).eval()
    with torch.no_grad():  # symmetric kernels: each cell's receptive field is centred exactly
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.fill_(1.0 / m.weight[0].numel())
    x = torch.rand(2, 1, 512, 512, generator=torch.Generator().manual_seed(0), requires_grad=True)
    feats = {}
    net.layer4.register_forward_hook(lambda m, i, o: feats.setdefault("a", o))
    net(x)
    a = feats["a"]
    assert a.shape[-2:] == (16, 16)
    for i, j in [(8, 8), (7, 9)]:  # interior cells: the ~430 px receptive field fits
        (g,) = torch.autograd.grad(a[:, :, i, j].sum(), x, retain_graph=True)
        w = g[:, 0].abs().sum(0)
        ys, xs = torch.meshgrid(torch.arange(512.0), torch.arange(512.0), indexing="ij")
        cy, cx = float((w * ys).sum() / w.sum()), float((w * xs).sum() / w.sum())
        # a plain resize would put the centre at 32 * i + 15.5
        assert abs(cy - 32 * i) < 2 and abs(cx - 32 * j) < 2, (cy, cx)
    # the upsampler puts a lone hot cell's peak on that pixel
    cam = torch.zeros(1, 1, 8, 8)
    cam[0, 0, 3, 4] = 1.0
    up = stride_aligned_upsampler((256, 256))(cam)[0, 0]
    peak = divmod(int(up.argmax()), 256)
    assert peak == (96, 128)


# -- the methods against independent full-backward computations ----------------------------------


def _full_backward(
    model: nn.Module, x: torch.Tensor, layer: str, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Activations and d(logit_k)/dA by a plain backward through everything (parameters too)."""
    model.zero_grad()
    store = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        x = x.clone().requires_grad_(True)
        out = model(x)
        store["a"].retain_grad()
        out[:, k].sum().backward()
    finally:
        handle.remove()
    return store["a"].detach().numpy(), store["a"].grad.numpy()


def _eq19_maps(acts: np.ndarray, grads: np.ndarray, size: int) -> np.ndarray:
    """Grad-CAM++ (Chattopadhyay et al. 2018, Eq. 19) in numpy, then the shared post-processing."""
    from chestxr.explain.cam import stride_aligned_upsampler

    g2, g3 = grads**2, grads**3
    denom = 2 * g2 + acts.sum(axis=(2, 3), keepdims=True) * g3
    alpha = np.divide(g2, denom, out=np.zeros_like(g2), where=denom != 0)
    weights = (alpha * np.maximum(grads, 0)).sum(axis=(2, 3))
    cam = np.maximum((weights[:, :, None, None] * acts).sum(axis=1, keepdims=True), 0)
    up = stride_aligned_upsampler((size, size))(torch.from_numpy(cam))[:, 0].numpy()
    lo = up.reshape(len(up), -1).min(1)[:, None, None]
    hi = up.reshape(len(up), -1).max(1)[:, None, None]
    return np.where(hi > lo, (up - lo) / np.where(hi > lo, hi - lo, 1), 0)


@pytest.mark.parametrize("layer", ["layer2", "layer3", "layer4"])
def test_gradcampp_is_eq19_on_any_layer(layer: str) -> None:
    # float64 so that alpha's division does not amplify rounding; two outputs, one forward
    model = _model(2, seed=1).double()
    x = _images(3, seed=2).double()
    ours = compute_cams(model, x, output_index=1, method="gradcam++", target_layer=layer)
    acts, grads = _full_backward(model, x, layer, 1)
    expected = _eq19_maps(acts, grads, 64)
    assert expected.reshape(3, -1).max(1).min() == 1.0  # informative maps, not all zeros
    np.testing.assert_allclose(ours, expected, atol=1e-6)


@pytest.mark.parametrize("shift", [89.0, -95.0])
def test_gradcampp_does_not_depend_on_the_logit_magnitude(shift: float) -> None:
    model = _model(1)
    x = _images(2)
    before = compute_cams(model, x, method="gradcam++", target_layer="layer4")
    with torch.no_grad():
        model.fc.bias += shift
    after = compute_cams(model, x, method="gradcam++", target_layer="layer4")
    assert before.reshape(2, -1).max(1).min() == 1.0
    np.testing.assert_allclose(after, before, atol=1e-6)


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_gradcam_equals_monai_full_backward(layer: str) -> None:
    from monai.visualize import GradCAM as MonaiGradCAM

    from chestxr.explain.cam import _normalise, stride_aligned_upsampler

    model = _model(2, seed=3)
    x = _images(3, seed=4)
    ours = compute_cams(model, x, output_index=1, method="gradcam", target_layer=layer)
    reference = (
        MonaiGradCAM(model, layer, upsampler=stride_aligned_upsampler, postprocessing=_normalise)(
            x, class_idx=1
        )[:, 0]
        .detach()
        .numpy()
    )
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_all_outputs_and_methods_from_one_forward_without_parameter_gradients() -> None:
    from chestxr.explain.cam import cam_maps

    model = _model(3)
    x = _images(2)
    calls = {"forward": 0, "stem_backward": 0}
    model.conv1.register_forward_hook(lambda *a: calls.__setitem__("forward", calls["forward"] + 1))
    model.conv1.register_full_backward_hook(
        lambda *a: calls.__setitem__("stem_backward", calls["stem_backward"] + 1)
    )
    maps = cam_maps(model, x, methods=["gradcam", "gradcam++"], target_layer="layer3")
    assert calls == {"forward": 1, "stem_backward": 0}
    assert all(p.grad is None for p in model.parameters())
    for method, got in maps.items():
        assert got.shape == (2, 3, 64, 64)
        for k in range(3):
            single = compute_cams(model, x, output_index=k, method=method, target_layer="layer3")
            np.testing.assert_allclose(got[:, k], single, atol=1e-6)


def test_registry_is_the_one_list_of_methods() -> None:
    from chestxr.explain.cam import CAM_REGISTRY, BaseCAM, check_methods, register_cam

    assert set(CAM_REGISTRY) >= {"gradcam", "gradcam++"}
    with pytest.raises(ValueError, match="'lime'"):
        check_methods(["gradcam", "lime"])
    with pytest.raises(ValueError, match="already registered"):
        register_cam("gradcam")(BaseCAM)
    model = _model(1)
    cam = CAM_REGISTRY["gradcam"](model, target_layer="layer3")
    np.testing.assert_allclose(
        cam(_images(2))[:, 0], compute_cams(model, _images(2), target_layer="layer3"), atol=1e-6
    )
