"""Fine-tuning strategies: which parts of the backbone train, and when."""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.optim import Optimizer

log = logging.getLogger(__name__)

STRATEGIES = ("full", "linear_probe", "staged")


def backbone_modules(net: nn.Module) -> list[nn.Module]:
    """The ResNet's children other than the classifier ``fc``."""
    return [m for name, m in net.named_children() if name != "fc"]


class StagedUnfreezing(BaseFinetuning):
    """Train the head alone, then from ``unfreeze_epoch`` on the whole network.

    The backbone joins the optimizer as its own parameter group with the head's learning rate
    times ``lr_factor`` (Lightning's ``BaseFinetuning`` mechanics).

    Args:
        unfreeze_epoch: first epoch (0-based) in which the backbone trains.
        lr_factor: backbone learning rate relative to the head's.
    """

    def __init__(self, unfreeze_epoch: int = 2, lr_factor: float = 0.1) -> None:
        super().__init__()
        self.unfreeze_epoch = unfreeze_epoch
        self.lr_factor = lr_factor

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        self.freeze(backbone_modules(pl_module.net), train_bn=False)

    def finetune_function(
        self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        if epoch == self.unfreeze_epoch:
            lr = optimizer.param_groups[0]["lr"] * self.lr_factor
            self.unfreeze_and_add_param_group(
                backbone_modules(pl_module.net), optimizer, lr=lr, train_bn=True
            )
            log.info("epoch %d: backbone unfrozen (lr %.2e)", epoch, lr)
