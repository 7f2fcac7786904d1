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

    The backbone's parameter group is in the optimizer from the start (with its learning rate,
    ``backbone_lr_factor`` times the head's, under the same schedule); while it is frozen its
    parameters get no gradient, so the optimizer leaves them as they are.

    Args:
        unfreeze_epoch: first epoch (0-based) in which the backbone trains.
    """

    def __init__(self, unfreeze_epoch: int = 2) -> None:
        super().__init__()
        self.unfreeze_epoch = unfreeze_epoch

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        self.freeze(backbone_modules(pl_module.net), train_bn=False)

    def finetune_function(
        self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        if epoch < self.unfreeze_epoch:
            return
        # every epoch from then on: a run resumed past that epoch is frozen again by setup
        self.make_trainable(backbone_modules(pl_module.net))
        if epoch == self.unfreeze_epoch:
            lr = optimizer.param_groups[0]["lr"]
            log.info("epoch %d: backbone unfrozen (lr %.2e)", epoch, lr)
