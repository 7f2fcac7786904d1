"""The LightningModule: a one-channel ResNet-18 with sigmoid outputs, masked BCE and AUC logging."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn

from chestxr import keys
from chestxr.data.manifest import output_names
from chestxr.models.finetuning import STRATEGIES, StagedUnfreezing, backbone_modules
from chestxr.models.metrics import masked_auc
from chestxr.models.resnet import build_resnet18
from chestxr.models.schedules import optimizer_config

log = logging.getLogger(__name__)


def _plain_numpy_state() -> list[Any]:
    """numpy's global random state as plain Python values (checkpoints load with weights_only)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return [name, key.tolist(), int(pos), int(has_gauss), float(gauss)]


def _plain(value: Any) -> Any:
    """OmegaConf containers as plain dicts and lists (resolved); anything else unchanged."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


class NormalizedNet(nn.Module):
    """The network with its input normalisation: images in [0, 1] to logits (for export)."""

    def __init__(self, net: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, images: Tensor) -> Tensor:
        return self.net((images - self.mean) / self.std)


class ChestXRClassifier(L.LightningModule):
    """Fine-tunes a one-channel ResNet-18 on radiographs.

    Every task is a set of sigmoid outputs (binary: one, named after the positive class; multilabel:
    one per finding); unknown targets (NaN) are masked out of the loss and the metrics. Inputs are
    images in [0, 1]; the module normalises them with the statistics of its initial weights, so an
    exported network needs nothing but the preprocessed image.

    Args:
        task: ``binary`` or ``multilabel``.
        classes: the data config's classes (referenced, not repeated, in the model config).
        preprocess: the data preprocessing settings, stored so a checkpoint can read new scans.
        optimizer: config of a partial optimizer (``_target_``, ``_partial_: true``, its
            arguments), completed with parameter groups in ``configure_optimizers``.
        scheduler: config of a partial scheduler taking ``(optimizer, total_steps=...)``, or None.
        normalization: ``mean`` and ``std`` of the grey channel.
        pretrained: None (random init), ``imagenet`` (hub cache or download), or a path to
            torchvision's ``resnet18-f37072fd.pth``.
        init_checkpoint: a chestxr checkpoint whose backbone starts this run (head replaced when
            the outputs differ).
        pos_weight: None, ``auto`` (negatives/positives of the training split) or one value
            per output.
        finetune: ``strategy`` (``full``, ``linear_probe``, ``staged``), ``backbone_lr_factor``,
            ``unfreeze_epoch`` (staged).
        operating_point: ``rule`` (``youden``, ``sensitivity``, ``specificity``, ``fixed``) and
            ``target``, applied on the validation split after training.
        channels_last: use the channels-last memory format (faster convolutions on CPU and GPU).
        init_source: where the initial weights came from (``kind``, ``path``, ``sha256``), as
            recorded in a checkpoint's hyperparameters. chestxr fills it in when it reads
            ``pretrained`` or ``init_checkpoint``; when it is given, the weights come from a
            checkpoint's state dict, so the source is not read again (a checkpoint is
            self-contained: it loads after the source is deleted, and never downloads).
    """

    def __init__(
        self,
        task: str,
        classes: Sequence[str],
        preprocess: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        normalization: dict[str, float] | None = None,
        pretrained: str | None = None,
        init_checkpoint: str | None = None,
        pos_weight: str | Sequence[float] | None = None,
        finetune: dict[str, Any] | None = None,
        operating_point: dict[str, Any] | None = None,
        channels_last: bool = True,
        init_source: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # Hyperparameters are stored as plain containers so checkpoints load with weights_only.
        optimizer, scheduler, preprocess, classes, normalization, finetune, operating_point = (
            _plain(v)
            for v in (
                optimizer,
                scheduler,
                preprocess,
                classes,
                normalization,
                finetune,
                operating_point,
            )
        )
        self.save_hyperparameters(logger=False)
        self.output_names = output_names(task, classes)
        k = len(self.output_names)
        self.net = build_resnet18(k, in_channels=1)
        norm = normalization or {"mean": 0.5, "std": 0.25}
        self.register_buffer("mean", torch.tensor(float(norm["mean"])))
        self.register_buffer("std", torch.tensor(float(norm["std"])))
        # Decision thresholds chosen on validation after training; NaN until then.
        self.register_buffer("thresholds", torch.full((k,), float("nan")))
        self.register_buffer("pos_weight_", torch.ones(k))
        self.finetune = {
            "strategy": "full",
            "backbone_lr_factor": 1.0,
            "unfreeze_epoch": 2,
            **(finetune or {}),
        }
        if self.finetune["strategy"] not in STRATEGIES:
            raise ValueError(
                f"model.finetune.strategy must be one of {STRATEGIES}, "
                f"got {self.finetune['strategy']!r}"
            )
        self._init_weights(pretrained, init_checkpoint, _plain(init_source))
        if self.finetune["strategy"] == "linear_probe":
            for p in self.backbone_parameters():
                p.requires_grad_(False)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self._outputs: list[tuple[Tensor, Tensor]] = []

    # -- weights -------------------------------------------------------------------------------
    def _init_weights(
        self,
        pretrained: str | None,
        init_checkpoint: str | None,
        init_source: dict[str, Any] | None,
    ) -> None:
        """Read the initial weights once and record their source in the hyperparameters."""
        if pretrained and init_checkpoint:
            raise ValueError("give model.pretrained or model.init_checkpoint, not both")
        if init_source is not None:  # restored from a checkpoint: its state dict has the weights
            log.debug("initial weights were %s; not read again", init_source)
            return
        k = len(self.output_names)
        if pretrained:
            from chestxr.models.pretrained import init_from_imagenet, load_imagenet_weights

            state, record = load_imagenet_weights(None if pretrained == "imagenet" else pretrained)
            init_from_imagenet(self.net, state, num_outputs=k)
        elif init_checkpoint:
            from chestxr.models.pretrained import init_from_checkpoint

            record = init_from_checkpoint(
                self.net,
                init_checkpoint,
                num_outputs=k,
                normalization={"mean": float(self.mean), "std": float(self.std)},
                preprocess=dict(self.hparams.preprocess),
            )["source"]
        else:
            return
        self.hparams["init_source"] = record

    def backbone_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.net.named_parameters() if not n.startswith("fc.")]

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """A linear probe keeps its frozen backbone in eval mode (batch-norm statistics fixed)."""
        if self.finetune["strategy"] == "linear_probe":
            for m in backbone_modules(self.net):
                m.eval()

    def configure_callbacks(self) -> list[L.Callback]:
        if self.finetune["strategy"] == "staged":
            return [StagedUnfreezing(int(self.finetune["unfreeze_epoch"]))]
        return []

    # -- checkpoints: random states, for a resumed run that equals an uninterrupted one --------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "numpy": _plain_numpy_state(),
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if states and self._trainer is not None:  # a Trainer resuming, not load_from_checkpoint
            torch.set_rng_state(states["torch"])
            name, key, pos, has_gauss, gauss = states["numpy"]
            np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))
            random.setstate(states["python"])

    # -- forward and loss ----------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, K)`` for images ``(B, 1, H, W)`` in [0, 1]."""
        x = (images - self.mean) / self.std
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def inference_network(self) -> NormalizedNet:
        """A plain ``nn.Module`` (no Lightning state) computing the same logits, for export."""
        return NormalizedNet(self.net, float(self.mean), float(self.std)).eval()

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Binary cross-entropy per output, NaN targets masked."""
        known = ~torch.isnan(target)
        per = F.binary_cross_entropy_with_logits(
            logits.float(),
            torch.nan_to_num(target, nan=0.0),
            pos_weight=self.pos_weight_,
            reduction="none",
        )
        return (per * known).sum() / known.sum().clamp(min=1)

    def setup(self, stage: str) -> None:
        pw = self.hparams.pos_weight
        if stage == "fit" and pw is not None:
            if pw == "auto":
                pw = self.trainer.datamodule.positive_weights()
            self.pos_weight_.copy_(torch.as_tensor(np.asarray(pw, dtype=np.float32)))
            log.info("positive-class weights: %s", self.pos_weight_.tolist())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self.loss(self(batch[keys.IMAGE]), batch[keys.TARGET])
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(batch[keys.TARGET]),
        )
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        logits = self(batch[keys.IMAGE])
        target = batch[keys.TARGET]
        self.log(
            f"{stage}/loss",
            self.loss(logits, target),
            on_epoch=True,
            sync_dist=True,
            batch_size=len(target),
        )
        self._outputs.append((torch.sigmoid(logits.float()).detach(), target.detach()))

    def _eval_epoch_end(self, stage: str) -> None:
        if not self._outputs:
            return
        prob = torch.cat([p for p, _ in self._outputs])
        target = torch.cat([t for _, t in self._outputs])
        self._outputs.clear()
        if self.trainer.world_size > 1:  # AUC over every rank's predictions, not a mean of AUCs
            prob = self.all_gather(prob).flatten(0, 1)
            target = self.all_gather(target).flatten(0, 1)
        aucs = masked_auc(target.cpu().numpy(), prob.cpu().numpy())
        defined = [a for a in aucs if a is not None]
        if len(self.output_names) > 1:
            for name, a in zip(self.output_names, aucs, strict=True):
                if a is not None:
                    self.log(f"{stage}/auc_{name}", a, rank_zero_only=True)
        if not defined and not self.trainer.sanity_checking:
            log.warning("%s AUC undefined: the split holds one class only", stage)
        self.log(f"{stage}/auc", float(np.mean(defined)) if defined else 0.5, prog_bar=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return torch.sigmoid(self(batch[keys.IMAGE]).float())

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        factor = float(self.finetune.get("backbone_lr_factor", 1.0))
        head = list(self.net.fc.parameters())
        backbone = self.backbone_parameters()
        optimizer = instantiate(self.hparams.optimizer)(
            params=[{"params": backbone}, {"params": head}]
        )
        if factor != 1.0:  # discriminative learning rates: backbone lr = head lr x factor
            optimizer.param_groups[0]["lr"] *= factor
            optimizer.param_groups[0]["initial_lr"] = optimizer.param_groups[0]["lr"]
        scheduler = self.hparams.scheduler
        return optimizer_config(
            optimizer,
            None if scheduler is None else instantiate(scheduler),
            self.trainer.estimated_stepping_batches,
        )
