"""The data module: patient splits, the disk cache, and the unreadable-file policy."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import chestxr.io.monai_loader as loader_module
from chestxr import keys
from chestxr.data.datamodule import RadiographDataModule
from chestxr.io import RadiographReadError

PRE = {"image_size": 32, "resize": "pad"}


def make_set(tmp: Path, n: int = 20, broken: int = 0) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        p = tmp / f"im{i:02d}.png"
        if i < broken:
            p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # a PNG signature, then nothing
        else:
            Image.fromarray(rng.integers(0, 255, (40 + i, 50), dtype=np.uint8)).save(p)
        rows.append([p.name, "POS" if i % 2 else "NEG", f"p{i // 2}"])
    path = tmp / "manifest.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "patient_id"], *rows])
    return path


def module(manifest: Path, tmp: Path, **kw) -> RadiographDataModule:
    args = dict(
        task="binary",
        classes=["NEG", "POS"],
        preprocess=PRE,
        num_workers=0,
        batch_size=4,
        cache="disk",
        cache_dir=tmp / "cache",
        report_dir=tmp / "run",
        split={"val_fraction": 0.2, "test_fraction": 0.2, "seed": 0},
    )
    return RadiographDataModule(manifest, **{**args, **kw})


def test_batches_are_square_tensors_with_targets(tmp_path):
    dm = module(make_set(tmp_path), tmp_path, augment={"prob": 1.0})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch[keys.IMAGE].shape == (4, 1, 32, 32) and batch[keys.IMAGE].dtype == torch.float32
    assert batch[keys.TARGET].shape == (4, 1)
    assert torch.isfinite(batch[keys.IMAGE]).all()
    assert float(batch[keys.IMAGE].min()) >= -0.3 and float(batch[keys.IMAGE].max()) <= 1.5


def test_disk_cache_decodes_once_and_is_keyed_by_settings(tmp_path, monkeypatch):
    calls = []
    real = loader_module.read_radiograph

    def counting(path, **kw):
        calls.append(path)
        return real(path, **kw)

    monkeypatch.setattr(loader_module, "read_radiograph", counting)
    manifest = make_set(tmp_path)
    dm = module(manifest, tmp_path)
    ds = dm.dataset("val")
    first = [ds[i][keys.IMAGE] for i in range(len(ds))]
    assert len(calls) == len(ds)
    second = [module(manifest, tmp_path).dataset("val")[i][keys.IMAGE] for i in range(len(ds))]
    assert len(calls) == len(ds)  # second pass: from the cache, no decoding
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    other = module(manifest, tmp_path, preprocess={**PRE, "image_size": 24}).dataset("val")
    assert other[0][keys.IMAGE].shape[-1] == 24 and len(calls) == len(ds) + 1


def test_unreadable_file_raises_naming_it(tmp_path):
    dm = module(make_set(tmp_path, broken=20), tmp_path, cache="none")
    with pytest.raises(Exception) as info:  # MONAI wraps the reader's error
        dm.dataset("train")[0]
    chain, err = [], info.value
    while err is not None:
        chain.append(err)
        err = err.__cause__ or err.__context__
    assert any(isinstance(e, RadiographReadError) and "im" in str(e) for e in chain)


@pytest.mark.parametrize("cache", ["disk", "memory", "none"])
def test_skip_policy_lists_skipped_files_and_excludes_them(tmp_path, cache):
    """Whatever the cache: the check itself must not crash on the corrupt file (a memory cache
    decodes every file when it is built)."""
    dm = module(
        make_set(tmp_path, broken=1), tmp_path, on_error="skip", max_skip_fraction=0.1, cache=cache
    )
    dm.load()
    rows = np.concatenate([dm.rows(s) for s in ("train", "val", "test")])
    assert len(rows) == 19 and 0 not in rows
    with open(tmp_path / "run" / "skipped.csv") as f:
        skipped = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in skipped] == ["im00.png"] and skipped[0]["reason"]


def test_skip_policy_stops_when_too_many_are_unreadable(tmp_path):
    dm = module(make_set(tmp_path, broken=5), tmp_path, on_error="skip", max_skip_fraction=0.1)
    with pytest.raises(RuntimeError, match="5 of 20 files are unreadable"):
        dm.load()
