"""The Lightning data module: manifest → patient-level splits → cached MONAI datasets → loaders."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from monai.data import CacheDataset, Dataset
from monai.transforms import Compose
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

from chestxr import keys
from chestxr.data.batch_augment import BatchAugment
from chestxr.data.cache import CachedDataset, CacheStore
from chestxr.data.manifest import Manifest, load_manifest, output_names
from chestxr.data.splits import assign_splits
from chestxr.data.transforms import compose, preprocessing
from chestxr.io import RadiographReadError
from chestxr.utils.files import atomic_write_text
from chestxr.utils.ids import find_cause

log = logging.getLogger(__name__)

CACHE_MODES = ("disk", "memory", "none")
ON_ERROR = ("raise", "skip")
READER_VERSION = 1  # bump when the reader's output changes, to invalidate preprocessing caches


def preprocess_key(preprocess: dict[str, Any]) -> str:
    """Short hash of the preprocessing settings, naming their cache folder."""
    blob = json.dumps({"reader": READER_VERSION, **preprocess}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def auto_num_workers(cache: str) -> int:
    """Loader workers that fit the machine.

    Beside a GPU the loader must keep up with thousands of images per second: up to 8 workers,
    one core left for the main process. On a CPU-only machine the workers and the training step
    share the same cores, so every CPU-millisecond a worker spends is taken from the step: with a
    cache (reads in microseconds; augmentation runs on whole batches) none; without, one fewer
    than the cores.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if torch.cuda.is_available():
        return max(1, min(8, cores - 1))
    return 0 if cache in ("disk", "memory") else max(0, cores - 1)


def make_items(manifest: Manifest, rows: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Sample dictionaries (path, target, patient, row) for the given manifest rows."""
    rows = np.arange(len(manifest)) if rows is None else rows
    return [
        {
            keys.IMAGE: str(manifest.paths[i]),
            keys.PATH: str(manifest.paths[i]),
            keys.TARGET: manifest.targets[i],
            keys.PATIENT_ID: str(manifest.patient_ids[i]),
            keys.INDEX: int(i),
        }
        for i in rows
    ]


class SeededSampler(Sampler):
    """Shuffled (or weighted) indices, each paired with a seed for that sample's random transforms.

    One generator, seeded from the global torch RNG when an epoch starts, draws both the order and
    the seeds: augmentation follows ``seed_everything`` whatever the number of workers, and a
    resumed run (which restores the global RNG) repeats it exactly.

    Args:
        n: dataset length.
        weights: sampling weights (drawn with replacement); None for a plain shuffle.
    """

    def __init__(self, n: int, weights: np.ndarray | None = None) -> None:
        self.n = n
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        if self.weights is None:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        seeds = torch.randint(0, 2**31 - 1, (self.n,), generator=g)
        yield from zip(order.tolist(), seeds.tolist(), strict=True)


class _Seeded(TorchDataset):
    """Takes ``(index, seed)`` keys from :class:`SeededSampler`; the seed travels with the sample
    (``keys.SEED``) to the batched augmentation after the batch reaches the device."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        sample = dict(self.dataset[index])
        sample[keys.SEED] = seed
        return sample


class _Checked(TorchDataset):
    """Yields ``(row, "")`` for a sample that preprocesses, ``(row, reason)`` for one that fails."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, str]:
        try:
            self.dataset[i]
        except Exception as err:
            cause = find_cause(err, RadiographReadError)
            return i, cause.reason if cause is not None else f"{type(err).__name__}: {err}"
        return i, ""


class RadiographDataModule(L.LightningDataModule):
    """Data for training, validation and testing, from one manifest.

    Args:
        manifest: path of the manifest CSV, or a callable returning it (such as a partial of
            :func:`chestxr.data.synthetic.ensure_synthetic`, called in ``prepare_data``).
        task: ``binary`` or ``multilabel``.
        classes: ``[NEGATIVE, POSITIVE]`` (binary) or the findings (multilabel).
        preprocess: keyword arguments of :func:`chestxr.data.transforms.preprocessing`.
        augment: keyword arguments of :class:`chestxr.data.batch_augment.BatchAugment`, applied to
            training batches after they reach the device; None for no augmentation.
        split: ``val_fraction``, ``test_fraction``, ``seed`` for rows without a ``split``.
        batch_size: samples per batch (per process under DDP).
        num_workers: loader worker processes, or ``auto``: none on a CPU-only machine with a
            cache (a cached scan is read in microseconds, and a worker would take a core from the
            training step), up to 8 beside a GPU (see :func:`auto_num_workers`).
        cache: ``disk`` (:mod:`chestxr.data.cache`: 16-bit images in shared shards, keyed by the
            source file's identity and the preprocessing settings, checked on every read),
            ``memory`` or ``none``.
        cache_dir: root folder of the disk cache (one sub-folder per preprocessing settings).
        sampler: ``null`` (shuffle) or ``weighted`` (balance positives and negatives; binary).
        no_finding: label tokens meaning "no finding" (multilabel).
        uncertain: policy for ``-1`` labels: ``ignore``, ``zeros`` or ``ones``.
        on_error: ``raise`` (an unreadable file stops the run, naming it) or ``skip`` (every file is
            decoded once up front, filling the disk cache; unreadable ones are left out, listed
            with their reasons in ``skipped.csv`` in ``report_dir``, and counted in the log).
        max_skip_fraction: with ``skip``, the largest share of files that may be unreadable before
            the run stops with an error.
        report_dir: folder for ``skipped.csv`` (the run folder).
        read_labels: false for unlabelled scans (pretraining): labels are not read, targets NaN.
    """

    def __init__(
        self,
        manifest: str | os.PathLike[str] | Callable[[], Path],
        task: str,
        classes: Sequence[str],
        preprocess: dict[str, Any],
        augment: dict[str, Any] | None = None,
        split: dict[str, Any] | None = None,
        batch_size: int = 32,
        num_workers: int | str = "auto",
        cache: str = "disk",
        cache_dir: str | os.PathLike[str] | None = None,
        sampler: str | None = None,
        no_finding: Sequence[str] = ("No Finding", "normal"),
        uncertain: str = "ignore",
        on_error: str = "raise",
        max_skip_fraction: float = 0.01,
        report_dir: str | os.PathLike[str] | None = None,
        read_labels: bool = True,
    ) -> None:
        super().__init__()
        if cache not in CACHE_MODES:
            raise ValueError(f"data.cache must be one of {CACHE_MODES}, got {cache!r}")
        if cache == "disk" and cache_dir is None:
            raise ValueError("data.cache=disk needs data.cache_dir")
        if sampler not in (None, "weighted"):
            raise ValueError(f"data.sampler must be null or 'weighted', got {sampler!r}")
        self.task = task
        self.classes = [str(c) for c in classes]
        self.output_names = output_names(task, self.classes)
        self.preprocess = dict(preprocess)
        self.augment = dict(augment) if augment is not None else None
        self.batch_augment = BatchAugment(**self.augment) if self.augment is not None else None
        self.split = {"val_fraction": 0.15, "test_fraction": 0.15, "seed": 0, **(split or {})}
        self.batch_size = batch_size
        self.num_workers = auto_num_workers(cache) if num_workers == "auto" else int(num_workers)
        self.cache = cache
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.sampler = sampler
        self.no_finding = list(no_finding)
        self.uncertain = uncertain
        if on_error not in ON_ERROR:
            raise ValueError(f"data.on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.on_error = on_error
        self.max_skip_fraction = max_skip_fraction
        self.report_dir = Path(report_dir) if report_dir is not None else None
        self.read_labels = read_labels
        self.readable: np.ndarray | None = None
        self._manifest_source = manifest
        self.manifest: Manifest | None = None
        self.datasets: dict[str, Dataset] = {}
        self._store: CacheStore | None = None

    # -- manifest and splits -------------------------------------------------------------------
    def manifest_path(self) -> Path:
        """The manifest CSV, generating it first when the config gives a generator."""
        source = self._manifest_source
        return Path(source() if callable(source) else source).expanduser()

    def prepare_data(self) -> None:
        self.manifest_path()

    def load(self) -> Manifest:
        """Read the manifest and give every row its split (idempotent)."""
        if self.manifest is None:
            m = load_manifest(
                self.manifest_path(),
                task=self.task,
                classes=self.classes,
                no_finding=self.no_finding,
                uncertain=self.uncertain,
                read_labels=self.read_labels,
            )
            m.splits = assign_splits(m.patient_ids, m.targets, m.splits, **self.split)
            self.manifest = m
            if self.on_error == "skip":
                self.readable = self._check_files(m)
            counts = {s: int((m.splits == s).sum()) for s in ("train", "val", "test")}
            log.info("manifest %s: %d scans, splits %s", m.source, len(m), counts)
        return self.manifest

    def rows(self, split: str) -> np.ndarray:
        """Manifest rows of a split (readable ones only, under ``on_error=skip``)."""
        mask = self.load().splits == split
        if self.readable is not None:
            mask &= self.readable
        return np.flatnonzero(mask)

    def _check_files(self, m: Manifest) -> np.ndarray:
        """Decode every file once; returns the readable mask, recording the others.

        Raises:
            RuntimeError: more than ``max_skip_fraction`` of the files are unreadable.
        """
        items, transform = make_items(m), compose(self.preprocessing_transforms())
        # a memory cache decodes every file when it is built, and would crash on the first bad
        # one: the check reads through a plain dataset (the disk cache keeps what it decodes)
        plain = self.cache == "memory"
        checked = _Checked(Dataset(items, transform) if plain else self._wrap(items, transform))
        loader = DataLoader(checked, batch_size=64, num_workers=self.num_workers, collate_fn=list)
        failures = [(i, reason) for batch in loader for i, reason in batch if reason]
        readable = np.ones(len(m), dtype=bool)
        readable[[i for i, _ in failures]] = False
        if failures:
            rows = [[m.paths[i], m.patient_ids[i], m.splits[i], r] for i, r in failures]
            buf = io.StringIO()
            csv.writer(buf).writerows([["path", "patient_id", "split", "reason"], *rows])
            target = (self.report_dir or Path(".")) / "skipped.csv"
            atomic_write_text(target, buf.getvalue(), overwrite=True)
            log.warning(
                "skipped %d unreadable file(s) of %d, listed with reasons in %s",
                len(failures),
                len(m),
                target,
            )
        if len(failures) > self.max_skip_fraction * len(m):
            raise RuntimeError(
                f"{len(failures)} of {len(m)} files are unreadable, more than "
                f"data.max_skip_fraction={self.max_skip_fraction}; first: {failures[0][1]} "
                f"({m.paths[failures[0][0]]})"
            )
        return readable

    # -- datasets ------------------------------------------------------------------------------
    def preprocessing_transforms(self) -> list:
        return preprocessing(**self.preprocess)

    def dataset(self, split: str, train: bool | None = None) -> Dataset:
        """The MONAI dataset of a split: preprocessed (cached) scans, never augmented here.

        Training batches are augmented as a whole after they reach the device
        (:meth:`on_after_batch_transfer`); ``train`` is kept for callers that name the split's role.
        """
        del train
        items = make_items(self.load(), self.rows(split))
        if not items:
            raise ValueError(f"the {split!r} split of {self.load().source} is empty")
        return self._wrap(items, compose(self.preprocessing_transforms()))

    def cache_store(self) -> CacheStore:
        """The disk cache of the configured preprocessing settings (opened once per module).

        Raises:
            chestxr.data.cache.CacheError: the cache folder is not writable.
        """
        if self._store is None:
            key = preprocess_key(self.preprocess)
            self._store = CacheStore(self.cache_dir / key, settings=key)
        return self._store

    def _wrap(self, items: list[dict[str, Any]], transform: Compose) -> Dataset:
        """The dataset class of the configured cache (the disk cache is keyed by the settings)."""
        if self.cache == "disk":
            return CachedDataset(
                items, transform, self.cache_store(), image_key=keys.IMAGE, typed_keys=[keys.TARGET]
            )
        if self.cache == "memory":
            return CacheDataset(items, transform, num_workers=self.num_workers or None)
        return Dataset(items, transform)

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(
            stage or "", ("train", "val", "test")
        )
        for split in wanted:
            if split not in self.datasets:
                self.datasets[split] = self.dataset(split)

    def positive_weights(self) -> np.ndarray:
        """Negatives over positives per output on the training split (for ``pos_weight``)."""
        t = self.load().targets[self.rows("train")]
        pos = np.nansum(t, axis=0)
        neg = np.sum(~np.isnan(t), axis=0) - pos
        return (neg / np.maximum(pos, 1)).astype(np.float32)

    # -- loaders -------------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.datasets.get(split) or self.dataset(split)
        self.datasets[split] = ds
        sampler = None
        if shuffle:
            weights = None
            if self.sampler == "weighted":  # positives and negatives drawn equally often
                t = np.nan_to_num(self.load().targets[self.rows(split)][:, 0])
                weights = np.where(t > 0.5, 0.5 / max(t.sum(), 1), 0.5 / max((1 - t).sum(), 1))
            sampler = SeededSampler(len(ds), weights)
            ds = _Seeded(ds)
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            # evaluation loaders draw their worker seeds from their own generator, so creating
            # them (sanity check, persistent workers) leaves the global RNG, and training, alone
            generator=None if shuffle else torch.Generator(),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0 and not shuffle,
            drop_last=shuffle and len(ds) > self.batch_size,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment training batches on their device, each sample by its own seed."""
        trainer = getattr(self, "trainer", None)
        if (
            self.batch_augment is not None
            and trainer is not None
            and trainer.training
            and isinstance(batch, dict)
            and keys.SEED in batch
        ):
            batch = dict(batch)
            batch[keys.IMAGE] = self.batch_augment(batch[keys.IMAGE], batch[keys.SEED])
        return batch

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
