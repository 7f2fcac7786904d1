"""Batched train-time augmentation: MONAI's transforms and distributions, on a whole batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import AdjustContrast, Affine
from omegaconf import OmegaConf
from scipy import stats

from chestxr.data.batch_augment import N_PARAMS, BatchAugment
from tests.conftest import REPO_ROOT

S = 64


def _image() -> torch.Tensor:
    img = torch.zeros(1, 1, S, S)
    img[0, 0, 10:20, 5:30] = 1.0
    img[0, 0, 40:50, 40:45] = 0.5
    img += torch.linspace(0, 0.2, S)[None, None, None, :]
    return img


def _params(**values: float) -> torch.Tensor:
    names = ["affine", "angle", "zoom_y", "zoom_x", "shift_y", "shift_x", "contrast", "gamma"]
    names += ["scale_on", "scale", "shift_on", "shift"]
    p = torch.zeros(1, N_PARAMS, dtype=torch.float64)
    p[0, names.index("zoom_y")] = p[0, names.index("zoom_x")] = p[0, names.index("scale")] = 1.0
    p[0, names.index("gamma")] = 1.0
    for k, v in values.items():
        p[0, names.index(k)] = v
    return p


def test_affine_equals_monai_affine() -> None:
    """Rotation, per-axis zoom and shift: the same image as MONAI's Affine (bilinear, zeros)."""
    img = _image()
    for angle, zy, zx, ty, tx in [(0.2, 1.1, 0.95, 0.05, -0.03), (-0.12, 0.9, 1.08, -0.04, 0.05)]:
        p = _params(affine=1, angle=angle, zoom_y=zy, zoom_x=zx, shift_y=ty, shift_x=tx)
        ours = BatchAugment(prob=1).apply(img, p)[0]
        monai = Affine(
            rotate_params=angle,
            scale_params=(zy, zx),
            translate_params=(ty * S, tx * S),
            padding_mode="zeros",
            mode="bilinear",
            image_only=True,
        )(img[0])
        assert torch.allclose(ours, torch.as_tensor(monai), atol=1e-4)


def test_intensity_equals_monai() -> None:
    img = _image() * 0.8 + 0.1
    p = _params(contrast=1, gamma=1.2, scale_on=1, scale=1.07, shift_on=1, shift=-0.03)
    ours = BatchAugment(prob=1).apply(img, p)[0]
    expected = torch.as_tensor(AdjustContrast(1.2)(img[0])) * 1.07 - 0.03
    assert torch.allclose(ours, expected, atol=1e-5)


def test_off_is_identity_and_seeds_decide_per_sample() -> None:
    aug = BatchAugment(prob=0.5)
    imgs = _image().repeat(4, 1, 1, 1)
    off = aug.apply(imgs[:1], _params())
    assert torch.equal(off, imgs[:1])
    a = aug(imgs, [1, 2, 3, 4])
    b = aug(imgs[[2, 0]], [3, 1])  # same seeds, other batch and order: same images
    assert torch.allclose(a[[2, 0]], b, atol=1e-6)
    assert not torch.allclose(a[0], a[1])


def test_distribution_is_the_configured_one() -> None:
    """The parameters follow conf/data/base.yaml: each transform with `prob`, uniform ranges."""
    cfg = OmegaConf.load(REPO_ROOT / "conf" / "data" / "base.yaml").augment
    aug = BatchAugment(**OmegaConf.to_container(cfg))
    p = aug.draw(range(4000)).numpy()
    for col in (0, 6, 8, 10):  # affine, contrast, scale, shift switches
        assert abs(p[:, col].mean() - cfg.prob) < 0.03
    checks = [
        (1, -np.deg2rad(cfg.rotate_degrees), np.deg2rad(cfg.rotate_degrees)),
        (2, 1 - cfg.scale, 1 + cfg.scale),
        (3, 1 - cfg.scale, 1 + cfg.scale),
        (4, -cfg.translate, cfg.translate),
        (5, -cfg.translate, cfg.translate),
        (7, *cfg.contrast_gamma),
        (9, 1 - cfg.intensity_scale, 1 + cfg.intensity_scale),
        (11, -cfg.intensity_shift, cfg.intensity_shift),
    ]
    for col, lo, hi in checks:
        values = p[:, col]
        assert lo <= values.min() and values.max() <= hi
        assert stats.kstest(values, "uniform", args=(lo, hi - lo)).pvalue > 1e-3, col


def test_laterality_kept() -> None:
    """No flips: a mark on the left stays on the left under the largest configured changes."""
    aug = BatchAugment(prob=1.0, rotate_degrees=7, scale=0.1, translate=0.05, intensity_shift=0)
    img = torch.zeros(200, 1, S, S)
    img[:, 0, 28:36, 8:16] = 1.0
    out = aug(img, range(200))
    cols = torch.arange(S, dtype=torch.float32)
    mass = out[:, 0].sum(dim=1)  # (B, W)
    centre_x = (mass * cols).sum(dim=1) / mass.sum(dim=1)
    assert bool((centre_x < S / 2 - 8).all())
    theta = aug.affine_matrices(aug.draw(range(200)))
    assert bool((torch.linalg.det(theta[:, :, :2]) > 0).all())


def test_bad_settings_named() -> None:
    with pytest.raises(ValueError, match="prob"):
        BatchAugment(prob=1.5)
    with pytest.raises(ValueError, match="contrast_gamma"):
        BatchAugment(contrast_gamma=(1.2, 0.8))


def test_class_defaults_are_the_config_defaults():
    """One set of defaults: ``BatchAugment()`` augments as ``conf/data/base.yaml`` says."""
    import inspect

    config = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf/data/base.yaml").augment)
    params = inspect.signature(BatchAugment).parameters
    defaults = {k: p.default for k, p in params.items() if k != "image_size"}
    assert set(defaults) == set(config)
    for key, value in config.items():
        got = list(defaults[key]) if isinstance(value, list) else defaults[key]
        assert got == value, key
