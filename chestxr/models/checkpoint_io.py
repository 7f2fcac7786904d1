"""Lightning's checkpoint saves through chestxr's atomic writer.

Wired in ``conf/trainer/default.yaml`` (``plugins``): every ``best.ckpt``/``last.ckpt`` is
written to a temporary file beside its final name, fsynced and renamed, so a crash or a full disk
never leaves half a checkpoint under the final name, and a full disk ends with an error naming
the path.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from chestxr.utils.files import atomic_write


def save_checkpoint_file(checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """``torch.save(checkpoint, path)``, atomically, replacing an earlier file at ``path``.

    Raises:
        OSError: the disk is full (the message names ``path``; nothing is left there).
    """
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp), overwrite=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO``, saving through ``chestxr.utils.files.atomic_write``."""

    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        path: str | os.PathLike[str],
        storage_options: Any | None = None,
    ) -> None:
        """Write ``checkpoint`` to ``path`` whole or not at all.

        Raises:
            TypeError: ``storage_options`` is given (as in Lightning's own plugin).
            OSError: the disk is full (the message names ``path``).
        """
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        save_checkpoint_file(checkpoint, path)
