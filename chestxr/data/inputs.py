"""Scans nobody labelled: finding them (a file, a folder, a manifest) and reading them safely."""

from __future__ import annotations

import csv
import errno
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from chestxr import keys
from chestxr.data.transforms import compose, preprocessing
from chestxr.io import RadiographReadError
from chestxr.utils.ids import find_cause

#: Sample key holding why a file could not be read ("" when it was).
ERROR = "error"
#: Batch key of the (path, reason) pairs of a batch's unreadable files.
FAILED = "failed"
MANIFEST_SUFFIXES = (".csv",)


def find_inputs(
    source: str | os.PathLike[str], extensions: list[str]
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The files to predict, and those that cannot even be listed (with the reason).

    ``source`` is one image file, a manifest (a ``.csv`` with a ``path`` column, relative paths
    from its folder) or a folder walked recursively (symlinks followed; hidden files skipped).

    Returns:
        (files, unreadable): the candidate files, sorted for a folder; symlink loops and dangling
        symlinks under a folder, each with its reason.

    Raises:
        FileNotFoundError: the input does not exist.
        ValueError: a manifest without a ``path`` column, or a folder with nothing to predict.
    """
    src = Path(source).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"input not found: {src}")
    if src.is_file():
        if src.suffix.lower() not in MANIFEST_SUFFIXES:
            return [src], []
        with open(src, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if "path" not in (reader.fieldnames or []):
                raise ValueError(f"{src}: a manifest input needs a 'path' column")
            paths = [Path(r["path"]) for r in reader]
        return [p if p.is_absolute() else src.parent / p for p in paths], []
    wanted = {e.lower() for e in extensions}
    files, bad = _walk(src, wanted)
    if not files and not bad:
        raise ValueError(f"{src}: no file with an extension in {sorted(wanted)}")
    return sorted(files), sorted(bad)


def _walk(root: Path, wanted: set[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files under ``root`` with a wanted suffix; symlink loops and dead links as unreadable."""
    files: list[Path] = []
    bad: list[tuple[Path, str]] = []
    # the real folders on the way from root to each folder: a link to one of them is a loop
    chain = {str(root): {os.path.realpath(root)}}

    def on_error(err: OSError) -> None:
        bad.append((Path(err.filename or root), f"folder could not be listed: {err.strerror}"))

    for folder, dirnames, filenames in os.walk(root, followlinks=True, onerror=on_error):
        for name in list(dirnames):
            path = os.path.join(folder, name)
            real = os.path.realpath(path)
            if real in chain[folder]:
                dirnames.remove(name)
                bad.append((Path(path), "symlink loop: it leads back to a folder above it"))
            else:
                chain[path] = chain[folder] | {real}
        for name in filenames:
            path = Path(folder) / name
            if name.startswith(".") or path.suffix.lower() not in wanted:
                continue
            try:
                path.stat()
            except OSError as err:
                what = "symlink loop" if err.errno == errno.ELOOP else "dangling symlink"
                bad.append((path, f"{what}: {err.strerror}"))
                continue
            files.append(path)
    return files, bad


class SafeDataset(Dataset):
    """Preprocesses files; a read failure becomes a sample that carries its reason.

    Args:
        files: the files.
        preprocess: the model's preprocessing settings
            (:func:`~chestxr.data.transforms.preprocessing`).
    """

    def __init__(self, files: list[Path], preprocess: dict[str, Any]) -> None:
        self.files = files
        self.transform = compose(preprocessing(**preprocess))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = str(self.files[i])
        try:
            sample = self.transform({keys.IMAGE: path})
        except Exception as err:
            cause = find_cause(err, RadiographReadError)
            reason = cause.reason if cause is not None else f"{type(err).__name__}: {err}"
            return {keys.IMAGE: None, keys.PATH: path, ERROR: reason}
        return {keys.IMAGE: sample[keys.IMAGE], keys.PATH: path, ERROR: ""}


def collate_safe(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of :class:`SafeDataset` samples: the readable ones stacked, the others listed.

    Returns:
        ``image`` ``(B, 1, S, S)`` (B may be 0), ``path`` (of those images), ``failed``
        ([(path, reason)]).
    """
    good = [b for b in batch if not b[ERROR]]
    images = [torch.as_tensor(b[keys.IMAGE]) for b in good]
    return {
        keys.IMAGE: torch.stack(images) if images else torch.empty(0),
        keys.PATH: [b[keys.PATH] for b in good],
        FAILED: [(b[keys.PATH], b[ERROR]) for b in batch if b[ERROR]],
    }
