"""Self-supervised pretraining of the one-channel ResNet-18: SimCLR's contrastive objective.

Method: SimCLR (Chen, Kornblith, Norouzi and Hinton, "A Simple Framework for Contrastive Learning
of Visual Representations", ICML 2020): two random views of each scan go through the backbone and
a projection MLP; the NT-Xent loss pulls the two views of a scan together and pushes them away from
the other ``2B - 2`` views of the batch.

Why SimCLR here: it is the method self-supervised work on chest radiographs started from (Azizi et
al., "Big Self-Supervised Models Advance Medical Image Classification", ICCV 2021, pretrained on
CheXpert with it; MoCo-CXR is its momentum-queue variant); it has no collapse mode to guard against
(SimSiam and BYOL depend on a predictor, stop-gradient, and for BYOL a momentum encoder, whose
failure is silent), and its one extra hyperparameter is the temperature. Its known weakness, fewer
negatives in small batches, costs accuracy gradually rather than breaking training; batches of
64-256 views work on CPU and GPU alike.

The pretrained backbone is written as a chestxr checkpoint (:func:`write_backbone_checkpoint`):
the classifier's keys under ``net.``, with a head of zero outputs that
``model.init_checkpoint=PATH`` always replaces.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader

from chestxr import __version__, keys
from chestxr.data.ssl_views import RadiographViews
from chestxr.models.pretrained import CHECKPOINT_PREFIX, HEAD_KEYS
from chestxr.models.resnet import build_resnet18
from chestxr.models.schedules import optimizer_config
from chestxr.utils.files import atomic_write

log = logging.getLogger(__name__)

FEATURES = 512  # ResNet-18's pooled features


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """SimCLR's normalised-temperature cross-entropy over the ``2B`` views of a batch.

    Args:
        z1: ``(B, D)`` projections of the first views.
        z2: ``(B, D)`` projections of the second views (row ``i`` pairs with ``z1[i]``).
        temperature: the softmax temperature, positive.

    Returns:
        The mean loss, and the share of views whose most similar other view is their partner.

    Raises:
        ValueError: shapes differ, fewer than two pairs, or a temperature that is not positive.
    """
    if z1.shape != z2.shape or z1.ndim != 2 or z1.shape[0] < 2:
        raise ValueError(f"need two (B >= 2, D) batches of equal shape, got {z1.shape}, {z2.shape}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    accuracy = (sim.argmax(dim=1) == partner).float().mean()
    return F.cross_entropy(sim, partner), accuracy


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


class SimCLRPretraining(L.LightningModule):
    """SimCLR on unlabelled radiographs; the backbone is chestxr's classifier network.

    Args:
        optimizer: config of a partial optimizer (``_target_``, ``_partial_: true``, arguments).
        scheduler: config of a partial scheduler taking ``(optimizer, total_steps=...)``, or None.
        preprocess: the data preprocessing settings (stored with the weights, for the record).
        normalization: ``mean`` and ``std`` of the grey channel; fine-tuning must use the same.
        views: keyword arguments of :class:`chestxr.data.ssl_views.RadiographViews`.
        hidden_dim: width of the projection MLP's hidden layer.
        projection_dim: dimension of the projections the loss compares.
        temperature: NT-Xent temperature.
        seed: seeds the views' generator (combined with the step and the process rank).
        channels_last: use the channels-last memory format.
    """

    def __init__(
        self,
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        preprocess: dict[str, Any] | None = None,
        normalization: dict[str, float] | None = None,
        views: dict[str, Any] | None = None,
        hidden_dim: int = 512,
        projection_dim: int = 128,
        temperature: float = 0.2,
        seed: int = 0,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        optimizer, scheduler, preprocess, normalization, views = (
            _plain(v) for v in (optimizer, scheduler, preprocess, normalization, views)
        )
        self.save_hyperparameters(logger=False)
        if not temperature > 0:
            raise ValueError(f"model.temperature must be positive, got {temperature!r}")
        self.views = RadiographViews(**(views or {}))
        self.net = build_resnet18(1, in_channels=1)
        self.net.fc = None  # pooled features out; the classifier's head is added on export
        self.projector = nn.Sequential(
            nn.Linear(FEATURES, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, projection_dim),
        )
        norm = normalization or {"mean": 0.5, "std": 0.25}
        self.register_buffer("mean", torch.tensor(float(norm["mean"])))
        self.register_buffer("std", torch.tensor(float(norm["std"])))
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def features(self, images: Tensor) -> Tensor:
        """Pooled backbone features ``(B, 512)`` of images ``(B, 1, H, W)`` in [0, 1]."""
        x = (images - self.mean) / self.std
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _generator(self) -> torch.Generator:
        state = np.random.SeedSequence([self.hparams.seed, self.global_rank, self.global_step])
        return torch.Generator().manual_seed(int(state.generate_state(1)[0]))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images = batch[keys.IMAGE]
        v1, v2 = self.views(images, self._generator())
        z = self.projector(self.features(torch.cat([v1, v2])))
        loss, accuracy = nt_xent(*z.chunk(2), self.hparams.temperature)
        n = len(images)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("train/pair_acc", accuracy, on_epoch=True, batch_size=n)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = instantiate(self.hparams.optimizer)(params=self.parameters())
        scheduler = self.hparams.scheduler
        return optimizer_config(
            optimizer,
            None if scheduler is None else instantiate(scheduler),
            self.trainer.estimated_stepping_batches,
        )


def backbone_state_dict(net: nn.Module) -> dict[str, Tensor]:
    """The classifier network's state dict from a backbone without head: ``fc`` of zero outputs.

    A zero-output head never fits a classifier's, so ``init_from_checkpoint`` drops it and logs
    that the head is freshly initialised; every other key must match exactly.
    """
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    if any(k in state for k in HEAD_KEYS):
        raise ValueError(f"expected a backbone without head, got keys {HEAD_KEYS} in it")
    state["fc.weight"] = torch.zeros(0, FEATURES)
    state["fc.bias"] = torch.zeros(0)
    return state


def write_backbone_checkpoint(
    module: SimCLRPretraining, path: str | Path, info: dict[str, Any]
) -> Path:
    """Write the pretrained backbone as a chestxr checkpoint for ``model.init_checkpoint``.

    Args:
        module: the trained pretraining module.
        path: the ``.ckpt`` file to write (atomically; an existing file is replaced).
        info: what the checkpoint's ``chestxr`` entry records (data, steps, loss).

    Returns:
        The path written.
    """
    state = {CHECKPOINT_PREFIX + k: v for k, v in backbone_state_dict(module.net).items()}
    ckpt = {
        "state_dict": state,
        "chestxr": {
            "chestxr_version": __version__,
            "kind": "pretrained_backbone",
            "method": "simclr",
            "normalization": {"mean": float(module.mean), "std": float(module.std)},
            "preprocess": module.hparams.preprocess,
            **info,
        },
    }
    return atomic_write(path, lambda tmp: torch.save(ckpt, tmp), overwrite=True)


@torch.no_grad()
def pooled_features(
    net: nn.Module, loader: DataLoader, *, mean: float, std: float
) -> tuple[np.ndarray, np.ndarray]:
    """Frozen pooled features of every sample of ``loader`` (for linear probes).

    Args:
        net: a ResNet whose ``fc`` is None or is temporarily bypassed (set to None here).
        loader: yields chestxr sample dictionaries (``image``, ``target``).
        mean: grey-channel mean the network expects.
        std: grey-channel std.

    Returns:
        ``(N, 512)`` float32 features and ``(N, K)`` targets.
    """
    fc, net.fc = net.fc, None
    was_training = net.training
    net.eval()
    try:
        feats, targets = [], []
        for batch in loader:
            x = (batch[keys.IMAGE].float() - mean) / std
            feats.append(net(x).float().cpu().numpy())
            targets.append(np.asarray(batch[keys.TARGET], dtype=np.float32))
    finally:
        net.fc = fc
        net.train(was_training)
    return np.concatenate(feats), np.concatenate(targets)
