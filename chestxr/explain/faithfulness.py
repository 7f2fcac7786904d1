"""Is a CAM about the model? Model-randomisation check and deletion curves."""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import torch
from monai.networks.layers import GaussianFilter
from scipy.stats import spearmanr
from torch import nn

from chestxr.explain.cam import compute_cams

log = logging.getLogger(__name__)

_NORM_LAYERS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
    nn.LayerNorm,
)
DELETION_BASELINES = ("blur", "mean")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (``scipy.stats.spearmanr``, tie-averaged ranks) of two arrays.

    Args:
        a: any shape; flattened.
        b: same number of elements as ``a``.

    Returns:
        The correlation; NaN when either array is constant (undefined).

    Raises:
        ValueError: the sizes differ.
    """
    a, b = np.ravel(a), np.ravel(b)
    if a.size != b.size:
        raise ValueError(f"arrays differ in size: {a.size} vs {b.size}")
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def randomise_weights(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every weight re-initialised from a seeded generator.

    Weights of two or more dimensions (convolutions, linear layers) are drawn with Kaiming-normal
    initialisation, other parameters (biases) are zeroed, and normalisation layers are reset to
    a fresh state (unit scale, zero shift, running statistics 0 and 1).

    Args:
        model: the trained model; left untouched.
        seed: seed of the ``torch.Generator`` the new weights come from.

    Returns:
        The randomised copy, on the model's device.
    """
    clone = copy.deepcopy(model)
    gen = None
    with torch.no_grad():
        for module in clone.modules():
            if isinstance(module, _NORM_LAYERS):
                module.reset_parameters()
                continue
            for param in module.parameters(recurse=False):
                if gen is None or gen.device != param.device:
                    gen = torch.Generator(device=param.device).manual_seed(seed)
                if param.ndim >= 2:
                    nn.init.kaiming_normal_(
                        param, mode="fan_out", nonlinearity="relu", generator=gen
                    )
                else:
                    nn.init.zeros_(param)
    return clone


def randomisation_check(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    *,
    output_index: int = 0,
    method: str = "gradcam",
    target_layer: str = "layer4",
    seed: int = 0,
) -> dict:
    """Model-randomisation sanity check (Adebayo et al. 2018, "Sanity checks for saliency maps").

    A map that explains the model must change when the model's weights are destroyed; a map that
    survives randomisation reflects the image (edges, brightness), not what the model learnt.

    Args:
        model: the trained model (not modified: a randomised deep copy is used).
        images: ``(B, C, S, S)`` batch.
        output_index: the output explained.
        method: a registered CAM method (``"gradcam"``, ``"gradcam++"``).
        target_layer: as for :func:`~chestxr.explain.cam.compute_cams`.
        seed: seed of the random weights.

    Returns:
        ``{"spearman_mean": float, "spearman": [float per image], "n_undefined": int}``.
        A flat randomised map counts as 0 (nothing of the trained map survived); the value is
        NaN, and left out of the mean, where the trained map itself is flat. Low values (say
        below 0.3) are what a faithful method gives.
    """
    trained = compute_cams(
        model, images, output_index=output_index, method=method, target_layer=target_layer
    )
    randomised = compute_cams(
        randomise_weights(model, seed=seed),
        images,
        output_index=output_index,
        method=method,
        target_layer=target_layer,
    )
    rhos = []
    for a, b in zip(trained, randomised, strict=True):
        # A flat randomised map next to an informative trained one shares no ordering with it.
        flat_b = np.ptp(b) == 0 and np.ptp(a) > 0
        rhos.append(0.0 if flat_b else spearman(a, b))
    defined = [r for r in rhos if not math.isnan(r)]
    mean = float(np.mean(defined)) if defined else float("nan")
    log.info("randomisation (%s): mean Spearman %.3f over %d maps", method, mean, len(defined))
    return {"spearman_mean": mean, "spearman": rhos, "n_undefined": len(rhos) - len(defined)}


def _removal_orders(cams: np.ndarray, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per image, pixel indices from most to least salient (ties in random order) and at random."""
    flat = cams.reshape(len(cams), -1)
    salient = np.stack([np.lexsort((gen.random(row.size), -row)) for row in flat])
    random = np.stack([gen.permutation(row.size) for row in flat])
    return salient, random


def deletion_curve(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    cams: np.ndarray,
    *,
    output_index: int = 0,
    steps: int = 10,
    baseline: str = "blur",
    seed: int = 0,
) -> dict:
    """Deletion metric (Petsiuk et al. 2018): probability as the most salient pixels are removed.

    At each of ``steps + 1`` fractions ``k`` from 0 to 1, the top ``k`` of pixels by CAM value are
    replaced by the baseline image and the sigmoid probability of the output is recorded. A
    faithful map makes the probability fall fast: a small area under the curve. The same curve
    with pixels removed in random order is the reference to beat.

    Args:
        model: module mapping ``(B, C, S, S)`` images to logits.
        images: ``(B, C, S, S)`` batch.
        cams: ``(B, S, S)`` maps, e.g. from :func:`~chestxr.explain.cam.compute_cams`.
        output_index: the output whose probability is followed.
        steps: number of deletion steps (>= 1).
        baseline: what removed pixels become: ``"blur"`` (a Gaussian blur of the image, sigma
            1/16 of the side) or ``"mean"`` (the image's mean).
        seed: seed for the random order and for breaking ties in the CAM order.

    Returns:
        ``{"fractions": [steps + 1 floats], "curves": [[float] per image], "auc": [float per
        image], "mean_auc": float, "random_curves": ..., "random_auc": ..., "random_mean_auc":
        float}``; AUCs are trapezoidal over the fraction in [0, 1].

    Raises:
        ValueError: bad ``steps``/``baseline``, or ``cams`` not matching ``images``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if baseline not in DELETION_BASELINES:
        raise ValueError(f"baseline must be one of {DELETION_BASELINES}, got {baseline!r}")
    x = torch.as_tensor(images).detach()
    cams = np.asarray(cams, dtype=np.float64)
    if x.ndim != 4 or cams.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(
            f"cams must be (B, H, W) matching images (B, C, H, W); got {cams.shape} and "
            f"{tuple(x.shape)}"
        )
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(device=param.device, dtype=param.dtype)
    n_pix = cams[0].size
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * n_pix).astype(int)
    salient, random = _removal_orders(cams, np.random.default_rng(seed))

    was_training = model.training
    model.eval()
    curves = {"cam": [], "random": []}
    try:
        with torch.inference_mode():
            if baseline == "blur":
                sigma = max(x.shape[-1], x.shape[-2]) / 16.0
                fill = GaussianFilter(spatial_dims=2, sigma=sigma).to(x.device)(x)
            else:
                fill = x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x)
            rank_pos = torch.empty(n_pix, dtype=torch.long, device=x.device)
            for i in range(len(x)):
                for name, order in (("cam", salient[i]), ("random", random[i])):
                    # rank_pos[p] = position of pixel p in the removal order
                    rank_pos[torch.as_tensor(order, device=x.device)] = torch.arange(
                        n_pix, device=x.device
                    )
                    limits = torch.as_tensor(counts, device=x.device).view(-1, 1)
                    removed = (rank_pos.view(1, -1) < limits).view(-1, 1, *x.shape[2:])
                    batch = torch.where(removed, fill[i : i + 1], x[i : i + 1])
                    probs = torch.sigmoid(model(batch)[:, output_index].float())
                    curves[name].append(probs.cpu().numpy().astype(float).tolist())
    finally:
        model.train(was_training)

    def auc(curve: list[float]) -> float:
        c = np.asarray(curve)
        return float(np.sum((c[1:] + c[:-1]) / 2.0 * np.diff(fractions)))

    out = {"fractions": fractions.tolist()}
    for name, prefix in (("cam", ""), ("random", "random_")):
        aucs = [auc(c) for c in curves[name]]
        out[f"{prefix}curves"] = curves[name]
        out[f"{prefix}auc"] = aucs
        out[f"{prefix}mean_auc"] = float(np.mean(aucs)) if aucs else float("nan")
    log.info(
        "deletion AUC %.3f (random order %.3f) over %d images",
        out["mean_auc"],
        out["random_mean_auc"],
        len(x),
    )
    return out
