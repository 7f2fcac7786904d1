"""CAMs of a model trained to find a bright square: they point at it, die with randomised weights,
and deleting the pixels they rank first removes the evidence faster than random deletion.

At 64 px ResNet-18's ``layer4`` is a 2 x 2 grid, too coarse to localise anything; ``layer2`` is
8 x 8, the grid ``layer4`` has at 256 px, so the trained-model checks read ``layer2``.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import torch
from torch import nn

from chestxr.explain import (
    compute_cams,
    deletion_curve,
    pointing_game,
    randomisation_check,
    randomise_weights,
    spearman,
)
from chestxr.models.resnet import build_resnet18

log = logging.getLogger(__name__)
SIZE, SIDE, LAYER = 64, 16, "layer2"


def _squares(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[tuple]]:
    """Noise with a random brightness offset; odd samples carry a bright square (the box)."""
    x = torch.rand(n, 1, SIZE, SIZE, generator=gen) * 0.5
    x += (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.4  # mean brightness gives nothing away
    y = (torch.arange(n) % 2).float()
    boxes = []
    for i in range(n):
        x0, y0 = torch.randint(0, SIZE - SIDE + 1, (2,), generator=gen).tolist()
        if y[i] > 0:
            x[i, 0, y0 : y0 + SIDE, x0 : x0 + SIDE] += 0.5
        boxes.append((x0, y0, x0 + SIDE, y0 + SIDE))
    return x, y, boxes


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, list[tuple]]:
    """ResNet-18 trained 20 steps (batch 16) on the square task; held-out positives and boxes."""
    start, cpu = time.perf_counter(), time.process_time()
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = build_resnet18(1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(20):
        x, y, _ = _squares(16, gen)
        loss = nn.functional.binary_cross_entropy_with_logits(net(x)[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # 20 steps leave the BatchNorm running statistics far from the data's: re-estimate them.
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        net(_squares(64, gen)[0])
    net.eval()
    x, y, boxes = _squares(32, torch.Generator().manual_seed(1))
    with torch.no_grad():
        p = torch.sigmoid(net(x)[:, 0])
    assert ((p > 0.5).float() == y).float().mean() >= 0.9, "the square task was not learnt"
    pos = y > 0
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    log.info("trained in %.1f s wall, %.1f s CPU", wall, cpu)
    return net, x[pos], [b for b, keep in zip(boxes, pos.tolist(), strict=True) if keep]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_trained_cams_point_at_the_square(trained, method: str) -> None:
    net, x, boxes = trained
    cams = compute_cams(net, x, method=method, target_layer=LAYER)
    # the usual pointing-game tolerance (Zhang et al. 2016 allow 15 px at full size): here a quarter
    # of the square, as the features of this briefly trained net fire on its top-left edge
    hits = [pointing_game(c, [b], tolerance=SIDE / 4) for c, b in zip(cams, boxes, strict=True)]
    assert np.mean(hits) >= 0.7


def test_cams_do_not_survive_weight_randomisation(trained) -> None:
    net, x, _ = trained
    result = randomisation_check(net, x[:8], target_layer=LAYER, seed=0)
    assert len(result["spearman"]) == 8
    assert result["n_undefined"] == 0
    assert result["spearman_mean"] < 0.3
    # the check compares against the trained maps: the model itself is untouched
    assert all(p.abs().sum() > 0 for p in net.parameters())


def test_deleting_salient_pixels_beats_random_order(trained) -> None:
    net, x, _ = trained
    cams = compute_cams(net, x[:8], target_layer=LAYER)
    for baseline in ("blur", "mean"):
        curve = deletion_curve(net, x[:8], cams, steps=10, baseline=baseline)
        assert curve["mean_auc"] < curve["random_mean_auc"] - 0.1
        assert np.mean(curve["curves"], axis=0)[0] > 0.9  # nothing deleted: still positive


def test_deletion_curve_endpoints_and_shape() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(1)
        net = build_resnet18(2).eval()
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    cams = np.random.default_rng(0).random((2, 32, 32))
    curve = deletion_curve(net, x, cams, output_index=1, steps=4, baseline="mean")
    assert curve["fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    with torch.no_grad():
        p = torch.sigmoid(net(x)[:, 1]).numpy()
        p_gone = torch.sigmoid(net(x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x))[:, 1]).numpy()
    for order in ("curves", "random_curves"):
        ends = np.array([[c[0], c[-1]] for c in curve[order]])
        np.testing.assert_allclose(ends[:, 0], p, atol=1e-5)
        np.testing.assert_allclose(ends[:, 1], p_gone, atol=1e-5)
    with pytest.raises(ValueError, match="baseline"):
        deletion_curve(net, x, cams, baseline="zeros")
    with pytest.raises(ValueError, match="cams"):
        deletion_curve(net, x, cams[:1])


def test_randomise_weights_copies_and_is_seeded() -> None:
    net = build_resnet18(1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    a, b, c = (randomise_weights(net, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    assert not torch.equal(a.fc.weight, net.fc.weight)
    assert torch.equal(a.bn1.running_var, torch.ones_like(a.bn1.running_var))


def test_spearman_matches_scipy_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=200).astype(float)  # many ties
    b = a + rng.normal(0, 2, size=200)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert np.isnan(spearman(np.ones(5), np.arange(5.0)))
    with pytest.raises(ValueError, match="size"):
        spearman(np.ones(4), np.ones(5))
