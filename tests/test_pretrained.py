"""ImageNet initialisation: torchvision's layout, exact stem folding, strict loading, offline."""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from chestxr.models import pretrained
from chestxr.models.pretrained import (
    IMAGENET_RGB_MEAN,
    IMAGENET_RGB_STD,
    IMAGENET_URL,
    fold_rgb_stem,
    grey_normalisation,
    init_from_checkpoint,
    init_from_imagenet,
    load_imagenet_state_dict,
    load_imagenet_weights,
)
from chestxr.models.resnet import build_resnet18

# torchvision.models.resnet18(): published parameter count (3 input channels, 1000 classes).
TORCHVISION_RESNET18_PARAMS = 11_689_512
IMAGE = 64  # small images keep each forward pass cheap


def _bn(prefix: str, n: int) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (f"{prefix}.weight", (n,)),
        (f"{prefix}.bias", (n,)),
        (f"{prefix}.running_mean", (n,)),
        (f"{prefix}.running_var", (n,)),
        (f"{prefix}.num_batches_tracked", ()),
    ]


def torchvision_resnet18_layout(num_classes: int = 1000) -> list[tuple[str, tuple[int, ...]]]:
    """Keys and shapes of torchvision's ``resnet18().state_dict()``, written from its architecture.

    BasicBlock: conv1 3x3 (stride on the first block of layers 2-4), bn1, conv2 3x3, bn2; the first
    block of layers 2-4 has ``downsample = Sequential(conv1x1 without bias, BatchNorm)``.
    """
    keys = [("conv1.weight", (64, 3, 7, 7)), *_bn("bn1", 64)]
    inplanes = 64
    for layer, (planes, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], start=1):
        for block in range(2):
            p = f"layer{layer}.{block}"
            cin = inplanes if block == 0 else planes
            keys += [(f"{p}.conv1.weight", (planes, cin, 3, 3)), *_bn(f"{p}.bn1", planes)]
            keys += [(f"{p}.conv2.weight", (planes, planes, 3, 3)), *_bn(f"{p}.bn2", planes)]
            if block == 0 and (stride != 1 or inplanes != planes):
                keys += [(f"{p}.downsample.0.weight", (planes, inplanes, 1, 1))]
                keys += _bn(f"{p}.downsample.1", planes)
        inplanes = planes
    keys += [("fc.weight", (num_classes, 512)), ("fc.bias", (num_classes,))]
    return keys


def fake_torchvision_state_dict(seed: int = 0, num_classes: int = 1000) -> OrderedDict:
    """Random values in torchvision's layout, scaled so eval-mode activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, shape in torchvision_resnet18_layout(num_classes):
        if key.endswith("num_batches_tracked"):
            value = torch.tensor(1000, dtype=torch.long)
        elif key.endswith(("bn2.weight", "downsample.1.weight")):  # damp the residual branches
            value = 0.2 + 0.4 * torch.rand(shape, generator=g)
        elif key.endswith("running_var") or (len(shape) == 1 and key.endswith("weight")):
            value = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) == 1:  # bias, running_mean
            value = 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = 1
            for n in shape[1:]:
                fan_in *= n
            value = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        state[key] = value
    return state


def _grey(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 1, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def _rgb_reference(state: dict, head_from: torch.nn.Module | None = None) -> torch.nn.Module:
    """A 3-channel net holding ``state`` unfolded (head copied from ``head_from`` when given)."""
    state = dict(state)
    if head_from is not None:
        state["fc.weight"] = head_from.fc.weight.detach().clone()
        state["fc.bias"] = head_from.fc.bias.detach().clone()
    net = build_resnet18(state["fc.weight"].shape[0], in_channels=3)
    net.load_state_dict(state, strict=True)
    return net.eval()


def _per_channel(grey: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_RGB_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_RGB_STD).view(1, 3, 1, 1)
    return (grey.repeat(1, 3, 1, 1) - mean) / std


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory) -> tuple:
    state = fake_torchvision_state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18-f37072fd.pth"
    torch.save(state, path)
    return path, state


def test_torchvision_layout_is_monai_resnet18_with_torchvision_topology():
    layout = torchvision_resnet18_layout()
    monai_state = build_resnet18(1000, in_channels=3).state_dict()
    assert [k for k, _ in layout] == list(monai_state)
    assert {k: s for k, s in layout} == {k: tuple(v.shape) for k, v in monai_state.items()}
    learnable = sum(
        torch.Size(s).numel()
        for k, s in layout
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert learnable == TORCHVISION_RESNET18_PARAMS


@pytest.mark.parametrize("k", [1, 14, 1000])
def test_parameter_count_is_torchvision_minus_stem_channels_and_head(k):
    net = build_resnet18(k)
    expected = TORCHVISION_RESNET18_PARAMS - 2 * 64 * 49 - (512 * 1000 + 1000) + (512 * k + k)
    assert sum(p.numel() for p in net.parameters()) == expected


@pytest.mark.parametrize("k", [3, 1000])
def test_plain_sum_fold_equals_rgb_net_on_repeated_image(imagenet_like, k, caplog):
    path, original = imagenet_like
    state = load_imagenet_state_dict(path)
    net = build_resnet18(k)
    fresh_fc = net.fc.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger=pretrained.__name__):
        report = init_from_imagenet(net, state, num_outputs=k, rgb_stats=None)
    assert any("adapted ['conv1.weight']" in r.getMessage() for r in caplog.records)

    assert report["adapted"] == ["conv1.weight"]
    if k == 1000:
        assert report["dropped"] == [] and report["loaded"] == len(original)
        torch.testing.assert_close(net.fc.weight, original["fc.weight"], rtol=0, atol=0)
    else:
        assert report["dropped"] == ["fc.bias", "fc.weight"]
        assert report["loaded"] == len(original) - 2
        torch.testing.assert_close(net.fc.weight, fresh_fc, rtol=0, atol=0)
    torch.testing.assert_close(
        net.layer4[1].conv2.weight, original["layer4.1.conv2.weight"], rtol=0, atol=0
    )

    rgb = _rgb_reference(original, head_from=net if k != 1000 else None)
    x = (_grey() - 0.45) / 0.23  # any scalar normalisation: the same x goes to both nets
    with torch.no_grad():
        out1, out3 = net.eval()(x), rgb(x.repeat(1, 3, 1, 1))
    assert out1.shape == (2, k)
    assert (out1 - out3).abs().max().item() < 1e-4
    assert out1.abs().max().item() > 1e-2  # a real comparison, not of two near-zero outputs


def test_normalised_fold_is_exact_for_channel_common_filters(imagenet_like):
    """Filters equal over R, G, B: the whole net matches per-channel normalisation, borders too."""
    _, original = imagenet_like
    state = dict(original)
    state["conv1.weight"] = original["conv1.weight"][:, :1].repeat(1, 3, 1, 1)
    net = build_resnet18(1000)
    report = init_from_imagenet(net, state, num_outputs=1000)
    assert report["adapted"] == ["bn1.running_mean", "conv1.weight"]
    m, s = grey_normalisation()
    grey = _grey()
    with torch.no_grad():
        out1 = net.eval()((grey - m) / s)
        out3 = _rgb_reference(state)(_per_channel(grey))
    assert (out1 - out3).abs().max().item() < 1e-4
    # The scalar pair matters: the naive mean of means / std of stds does not give the same output.
    with torch.no_grad():
        naive = net((grey - 0.449) / 0.226)
    assert (naive - out3).abs().max().item() > 5e-4


def test_normalised_fold_stem_is_exact_inside_the_image_for_any_filters(imagenet_like):
    """Colour-opponent filters: exact where the 7x7 window lies inside the image, not at the rim."""
    _, original = imagenet_like
    net = build_resnet18(1).eval()
    init_from_imagenet(net, original, num_outputs=1)
    rgb = _rgb_reference(original)
    m, s = grey_normalisation()
    grey = _grey()
    with torch.no_grad():
        conv1, conv3 = net.conv1((grey - m) / s), rgb.conv1(_per_channel(grey))
        stem1, stem3 = net.bn1(conv1), rgb.bn1(conv3)
    inside = (slice(None), slice(None), slice(2, -1), slice(2, -1))  # 7x7, stride 2, padding 3
    # Gain exact for every filter: the conv outputs differ by one constant per filter.
    residual = (conv3 - conv1)[inside].flatten(2)
    assert residual.std(dim=2).max().item() < 1e-5
    assert residual.mean(dim=2).abs().max().item() > 1e-3  # ...which bn1.running_mean absorbs:
    assert (stem1 - stem3)[inside].abs().max().item() < 1e-4
    assert (stem1 - stem3).abs().max().item() > 1e-3  # the rim keeps the colour residual


def test_grey_normalisation():
    m, s = grey_normalisation((0.3, 0.3, 0.3), (0.2, 0.2, 0.2))
    assert m == pytest.approx(0.3) and s == pytest.approx(0.2)
    m, s = grey_normalisation()
    assert min(IMAGENET_RGB_MEAN) < m < max(IMAGENET_RGB_MEAN)
    assert min(IMAGENET_RGB_STD) < s < max(IMAGENET_RGB_STD)
    # the fold's channel weights s / std_c average to one: the stem keeps timm's scale
    assert sum(s / v for v in IMAGENET_RGB_STD) == pytest.approx(3.0)
    with pytest.raises(ValueError, match=r"-0\.1"):
        grey_normalisation((0.5, 0.5, 0.5), (0.2, -0.1, 0.2))
    with pytest.raises(ValueError, match="same non-zero length"):
        grey_normalisation((0.5, 0.5), (0.2, 0.2, 0.2))


def test_fold_rgb_stem_shapes_and_errors():
    w = torch.randn(8, 3, 7, 7)
    torch.testing.assert_close(fold_rgb_stem(w), w.sum(dim=1, keepdim=True))
    assert torch.equal(fold_rgb_stem(w, 3), w)
    assert fold_rgb_stem(w, 5).shape == (8, 5, 7, 7)
    assert fold_rgb_stem(w.half()).dtype == torch.float16
    with pytest.raises(ValueError, match=r"\(8, 1, 7, 7\)"):
        fold_rgb_stem(torch.randn(8, 1, 7, 7))
    with pytest.raises(ValueError, match="in_channels=3"):
        fold_rgb_stem(w, 3, rgb_std=IMAGENET_RGB_STD)


def test_wrong_keys_are_named(imagenet_like):
    _, original = imagenet_like
    state = dict(original)
    state["layer1.0.conv_1.weight"] = state.pop("layer1.0.conv1.weight")
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight.*layer1\.0\.conv_1\.weight"):
        init_from_imagenet(build_resnet18(2), state, num_outputs=2)
    state = dict(original)
    state["layer3.1.conv2.weight"] = torch.zeros(256, 256, 1, 1)
    with pytest.raises(ValueError, match=r"layer3\.1\.conv2\.weight \(256, 256, 1, 1\)"):
        init_from_imagenet(build_resnet18(2), state, num_outputs=2)
    with pytest.raises(ValueError, match="num_outputs=3"):
        init_from_imagenet(build_resnet18(2), original, num_outputs=3)


def test_offline_without_file_names_the_hub_path(tmp_path, monkeypatch, imagenet_like):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    expected = tmp_path / "checkpoints" / "resnet18-f37072fd.pth"

    def no_network(*args, **kwargs):
        raise AssertionError("must not download when offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(FileNotFoundError) as err:
        load_imagenet_state_dict(online=False)
    assert str(expected) in str(err.value) and "model.pretrained=false" in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        load_imagenet_state_dict(tmp_path / "nowhere.pth")

    # once the file is there, offline loading finds it
    path, original = imagenet_like
    expected.parent.mkdir()
    expected.write_bytes(path.read_bytes())
    loaded = load_imagenet_state_dict(online=False)
    assert loaded.keys() == original.keys()
    torch.testing.assert_close(loaded["fc.bias"], original["fc.bias"], rtol=0, atol=0)


def test_online_downloads_into_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    calls = []

    def fake_download(url, dst, hash_prefix=None, **kwargs):
        calls.append((url, dst, hash_prefix))
        torch.save({"w": torch.ones(2)}, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    state, record = load_imagenet_weights()
    assert torch.equal(state["w"], torch.ones(2))
    ((url, dst, prefix),) = calls
    assert url == IMAGENET_URL and prefix == "f37072fd"
    assert dst == str(tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    assert record == {
        "kind": "imagenet",
        "path": dst,
        "sha256": hashlib.sha256(Path(dst).read_bytes()).hexdigest(),
    }


def _lightning_checkpoint(path, net: torch.nn.Module) -> None:
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    state["criterion.pos_weight"] = torch.ones(net.fc.out_features)
    torch.save({"state_dict": state, "epoch": 3, "hyper_parameters": {"num_outputs": 2}}, path)


@pytest.mark.parametrize("k", [2, 5])
def test_checkpoint_keeps_backbone_and_swaps_head(tmp_path, imagenet_like, k):
    _, original = imagenet_like
    trained = build_resnet18(2)
    init_from_imagenet(trained, original, num_outputs=2)
    with torch.no_grad():
        trained.fc.weight.normal_()
    ckpt = tmp_path / "last.ckpt"
    _lightning_checkpoint(ckpt, trained)

    net = build_resnet18(k)
    fresh_fc = net.fc.weight.detach().clone()
    report = init_from_checkpoint(net, ckpt, num_outputs=k)
    for key, value in trained.state_dict().items():
        if not key.startswith("fc."):
            torch.testing.assert_close(net.state_dict()[key], value, rtol=0, atol=0)
    if k == 2:
        assert report["dropped"] == []
        torch.testing.assert_close(net.fc.weight, trained.fc.weight, rtol=0, atol=0)
    else:
        assert report["dropped"] == ["fc.bias", "fc.weight"]
        torch.testing.assert_close(net.fc.weight, fresh_fc, rtol=0, atol=0)
    assert report["loaded"] == len(trained.state_dict()) - len(report["dropped"])


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt"):
        init_from_checkpoint(build_resnet18(2), tmp_path / "missing.ckpt", num_outputs=2)
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"model.fc.bias": torch.zeros(2)}}, bad)
    with pytest.raises(ValueError, match=r"no keys under 'net\.'"):
        init_from_checkpoint(build_resnet18(2), bad, num_outputs=2)
    three = tmp_path / "rgb.ckpt"
    _lightning_checkpoint(three, build_resnet18(2, in_channels=3))
    with pytest.raises(ValueError, match=r"conv1\.weight \(64, 3, 7, 7\) vs \(64, 1, 7, 7\)"):
        init_from_checkpoint(build_resnet18(2), three, num_outputs=2)


def _backbone_checkpoint(path: Path, *, mean: float, image_size: int) -> Path:
    from chestxr.models.ssl import SimCLRPretraining, write_backbone_checkpoint

    module = SimCLRPretraining(
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True},
        preprocess={"image_size": image_size, "resize": "pad", "voi": "header"},
        normalization={"mean": mean, "std": 0.25},
        channels_last=False,
    )
    return write_backbone_checkpoint(module, path, {"steps": 0})


def _classifier(ckpt: Path, *, mean: float = 0.5, image_size: int = 32):
    from chestxr.models.module import ChestXRClassifier

    return ChestXRClassifier(
        task="binary",
        classes=["a", "b"],
        preprocess={"image_size": image_size, "resize": "pad", "voi": "header"},
        normalization={"mean": mean, "std": 0.25},
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True},
        init_checkpoint=str(ckpt),
        channels_last=False,
    )


def test_pretrained_backbone_normalisation_must_match(tmp_path, caplog):
    """A backbone pretrained on differently normalised images is refused, naming both; one
    pretrained at another image size loads with a warning."""
    ckpt = _backbone_checkpoint(tmp_path / "backbone.ckpt", mean=0.4, image_size=32)
    with pytest.raises(ValueError, match="pretrained on images normalised") as info:
        _classifier(ckpt, mean=0.5)
    assert "0.4" in str(info.value) and "0.5" in str(info.value)
    assert _classifier(ckpt, mean=0.4).hparams.init_source["kind"] == "chestxr_checkpoint"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with caplog.at_level(logging.WARNING, logger="chestxr.models.pretrained"):
        _classifier(ckpt, mean=0.4, image_size=64)
    assert any("image_size=32" in r.getMessage() for r in caplog.records), caplog.text
