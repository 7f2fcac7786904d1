"""Checkpoints for tests: a probe of what ``last.ckpt`` holds, and a writer of small models."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from chestxr.utils.checkpoints import load_tensors_only


class LastCheckpointProbe(L.Callback):
    """Records, as each epoch after the first starts, the epoch stored in ``path`` (None: no file).

    A run killed at that moment resumes from what is recorded here.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.seen: list[int | None] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch > 0:
            held = load_tensors_only(self.path) if self.path.is_file() else None
            self.seen.append(None if held is None else int(held["epoch"]))


def save_classifier(model: L.LightningModule, path: Path, **extra: object) -> Path:
    """``model`` as a chestxr checkpoint in Lightning's format (what ``load_model`` reads),
    with ``extra`` top-level entries (e.g. ``chestxr=``, the run summary)."""
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": L.__version__,
            **extra,
        },
        path,
    )
    return path
