"""The disk cache of preprocessed scans never serves a stale or corrupt image (issue 12.1).

Corruption is applied to every file of the cache folder but the index, so the same tests describe
any cache layout (MONAI's one-file-per-scan ``PersistentDataset`` failed all of them).
"""

from __future__ import annotations

import csv
import logging
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from chestxr import keys
from chestxr.data.datamodule import RadiographDataModule

PRE = {"image_size": 64, "resize": "pad"}
QUANT = 1.0 / 131070 + 1e-7  # half a 16-bit step of the [0, 1] range, plus float32 rounding


def write_png(path: Path, seed: int, shape: tuple[int, int] = (70, 90)) -> None:
    """A random grey PNG stored without compression: its size depends on ``shape`` only."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path, compress_level=0)


def make_set(tmp: Path, n: int = 16) -> Path:
    rows = []
    for i in range(n):
        write_png(tmp / f"im{i:02d}.png", seed=i, shape=(60 + i, 80))
        rows.append([f"im{i:02d}.png", "POS" if i % 2 else "NEG", f"p{i}"])
    path = tmp / "manifest.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "patient_id"], *rows])
    return path


def module(manifest: Path, cache_dir: Path, cache: str = "disk") -> RadiographDataModule:
    return RadiographDataModule(
        manifest,
        task="binary",
        classes=["NEG", "POS"],
        preprocess=PRE,
        num_workers=0,
        batch_size=4,
        cache=cache,
        cache_dir=cache_dir,
        report_dir=cache_dir.parent / "run",
        split={"val_fraction": 0.5, "test_fraction": 0.25, "seed": 0},
    )


def images(manifest: Path, cache_dir: Path, cache: str = "disk") -> dict[str, torch.Tensor]:
    """Preprocessed image of every validation scan, by file name."""
    ds = module(manifest, cache_dir, cache).dataset("val")
    return {Path(ds[i][keys.PATH]).name: ds[i][keys.IMAGE] for i in range(len(ds))}


def cache_files(cache_dir: Path) -> list[Path]:
    """The data files of the cache (the index, if any, left out), largest first."""
    files = [p for p in cache_dir.rglob("*") if p.is_file() and "index" not in p.name]
    return sorted(files, key=lambda p: -p.stat().st_size)


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].shape == b[name].shape
        assert float((a[name] - b[name]).abs().max()) <= tol, name


def test_sixteen_bit_round_trip_error_bound(tmp_path):
    from chestxr.data.cache import CacheStore, dequantise, quantise

    rng = np.random.default_rng(0)
    x = rng.random((1, 64, 64)).astype(np.float32)
    x[0, :5] = 0.0  # padding
    x[0, 5, 0] = 1.0
    codes, lo, hi = quantise(x)
    y = dequantise(codes, lo, hi)
    assert codes.dtype == np.uint16 and (lo, hi) == (0.0, 1.0)
    err = np.abs(y - x)
    assert err.max() <= QUANT and err.max() > QUANT / 4  # the bound is tight, not loose
    assert (y[0, :5] == 0).all() and y[0, 5, 0] == 1.0  # padding and white stay exact
    # a wider range scales the bound; a constant image is exact; non-finite ones stay float32
    codes, lo, hi = quantise(x * 7 - 3)
    assert np.abs(dequantise(codes, lo, hi) - (x * 7 - 3)).max() <= 7 * QUANT
    assert (dequantise(*quantise(np.full((3, 3), 0.25))) == 0.25).all()
    src = tmp_path / "a.png"
    write_png(src, 0)
    store = CacheStore(tmp_path / "c", settings="s")
    odd = x.copy()
    odd[0, 0, 0] = np.nan
    store.put(src, odd, {})
    back, _ = store.get(src)
    assert np.isnan(back[0, 0, 0]) and np.array_equal(back[0, 1:], x[0, 1:])


def test_one_store_serves_several_threads(tmp_path):
    """Inference reads the next batch in a background thread (chestxr.data.prefetch) while the
    main thread works: one process's store must serve both, every entry intact."""
    from concurrent.futures import ThreadPoolExecutor

    from chestxr.data.cache import CacheStore

    store = CacheStore(tmp_path / "c", settings="s")
    sources = []
    for i in range(24):
        sources.append(tmp_path / f"{i}.png")
        write_png(sources[-1], i)
    store.get(sources[0])  # the connection is made in this thread first
    images = {str(s): np.full((1, 8, 8), i / 24, np.float32) for i, s in enumerate(sources)}

    def put_then_get(source: Path) -> bool:
        store.put(source, images[str(source)], {"i": str(source)})
        back, meta = store.get(source)
        return meta == {"i": str(source)} and np.allclose(back, images[str(source)], atol=QUANT)

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(put_then_get, sources))
    assert store.stats()["entries"] == 24
    for source in sources:  # and read back afterwards in this thread
        assert np.allclose(store.get(source)[0], images[str(source)], atol=QUANT)


def test_preprocessing_range_and_store_size(tmp_path):
    manifest = make_set(tmp_path)
    plain = images(manifest, tmp_path / "c", cache="none")
    cached = images(manifest, tmp_path / "c")
    values = torch.stack(list(plain.values()))
    assert float(values.min()) >= 0.0 and float(values.max()) <= 1.0  # what 16 bits must hold
    assert_close(cached, plain, QUANT)
    shard_bytes = sum(p.stat().st_size for p in cache_files(tmp_path / "c"))
    assert shard_bytes == len(cached) * 64 * 64 * 2  # 16 bits a pixel, nothing else in the shards
    assert len(cache_files(tmp_path / "c")) == 1  # one shard, not one file per scan


def test_replaced_scan_is_read_again(tmp_path):
    manifest = make_set(tmp_path)
    cache = tmp_path / "c"
    before = images(manifest, cache)
    name = sorted(before)[0]
    path = tmp_path / name
    old = path.stat()
    # in place, same size (uncompressed PNG of the same shape), a later modification time
    with Image.open(path) as im:
        shape = im.size[::-1]
    write_png(path, seed=1000, shape=shape)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns + 1_000_000_000))
    assert path.stat().st_size == old.st_size
    after = images(manifest, cache)
    truth = images(manifest, tmp_path / "none", cache="none")
    assert not torch.equal(after[name], before[name])
    assert_close(after, truth, QUANT)
    # replaced by a copy that keeps size and modification time (cp -p, rsync -t): new inode
    tmp = path.with_name("new-" + path.name)
    write_png(tmp, seed=2000, shape=shape)
    os.utime(tmp, ns=(old.st_atime_ns, path.stat().st_mtime_ns))
    os.replace(tmp, path)
    again = images(manifest, cache)
    assert not torch.equal(again[name], after[name])
    assert_close(again, images(manifest, tmp_path / "none", cache="none"), QUANT)


def test_scan_replaced_while_read_never_gives_its_old_pixels(tmp_path, monkeypatch):
    """A file replaced between its identity and its decoded pixels reaching the cache: the old
    pixels are stored under the old identity, so the new file is a miss and is read again."""
    manifest = make_set(tmp_path)
    cache = tmp_path / "c"
    ds = module(manifest, cache).dataset("val")
    path = Path(ds.data[0][keys.IMAGE])
    with Image.open(path) as im:
        shape = im.size[::-1]
    decode = ds.transform

    def decode_then_replace(data, *args, **kwargs):
        out = decode(data, *args, **kwargs)
        if Path(str(data[keys.IMAGE])) == path and not (tmp_path / "new.png").exists():
            write_png(tmp_path / "new.png", seed=3000, shape=shape)  # a new inode: a new identity
            os.replace(tmp_path / "new.png", path)
            (tmp_path / "new.png").touch()  # once only
        return out

    monkeypatch.setattr(ds, "transform", decode_then_replace)
    old = ds[0][keys.IMAGE]  # decoded before the replacement
    monkeypatch.undo()
    truth = images(manifest, tmp_path / "none", cache="none")[path.name]
    assert not torch.equal(old, truth)
    again = images(manifest, cache)[path.name]
    assert float((again - truth).abs().max()) <= QUANT


@pytest.mark.parametrize("fault", ["truncated", "empty", "altered"])
def test_corrupt_entry_is_rebuilt_with_a_warning_naming_the_source(tmp_path, caplog, fault):
    manifest = make_set(tmp_path)
    cache = tmp_path / "c"
    good = images(manifest, cache)
    for f in cache_files(cache):
        data = bytearray(f.read_bytes())
        if fault == "truncated":
            data = data[: len(data) // 2]
        elif fault == "empty":
            data = bytearray()
        else:  # overwrite 64 bytes in the middle of the file with other values
            mid = len(data) // 2
            data[mid : mid + 64] = bytes((b + 77) % 256 for b in data[mid : mid + 64])
        f.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        rebuilt = images(manifest, cache)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned, "a corrupt entry was used without a warning"
    named = {n for n in good if any(str(tmp_path / n) in w for w in warned)}
    assert named and all("rebuilding" in w and str(cache) in w for w in warned)
    if fault == "empty":
        assert named == set(good)  # every entry was in the emptied data
    for name in good:  # each rebuilt entry equals the uncorrupted one
        assert torch.equal(rebuilt[name], good[name]), name
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert_close(images(manifest, cache), good, 0.0)  # rebuilt for good: no more warnings
    assert not caplog.records


def _same(a: object, b: object, path: str = "") -> None:
    """Equal structures; numbers equal to 1e-4 (16-bit inputs move probabilities by ~1e-6)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            _same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{path}/{i}")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-4, nan_ok=True), path
    else:
        assert a == b, path


def test_corrupt_cache_gives_the_metrics_of_an_uncached_run(tmp_path, caplog, monkeypatch):
    """End to end: the project's model evaluated on the test split (metrics, bootstrap intervals,
    files written) from a corrupted cache gives the metrics of ``cache=none``, and every corrupt
    test entry was rebuilt with a warning naming its source file."""
    from chestxr.evaluate import evaluate_model
    from tests.test_finetuning import model as make_model

    # fp32 inference on every CPU (bf16, where native, rounds inputs to 8 bits: not the question)
    monkeypatch.setattr("chestxr.inference.best_precision", lambda *_: "32-true")
    manifest = make_set(tmp_path, n=24)
    cache = tmp_path / "c"
    filled = module(manifest, cache)
    ds = filled.dataset("test")
    for i in range(len(ds)):
        ds[i]
    filled.cache_store().close()
    for f in cache_files(cache):  # alter one byte in 97: every entry (8 KiB) is hit
        data = bytearray(f.read_bytes())
        data[::97] = bytes((b ^ 0x5A) for b in data[::97])
        f.write_bytes(bytes(data))
    torch.manual_seed(0)
    net = make_model().eval()
    cfg = {"n_bootstrap": 50, "seed": 0, "min_group_size": 2}

    runs: list[str] = []

    def metrics(mode: str) -> dict:
        runs.append(mode)
        out = tmp_path / f"eval-{len(runs)}-{mode}"
        return evaluate_model(net, module(manifest, cache, mode), out, cfg, split="test")

    plain = metrics("none")
    with caplog.at_level(logging.WARNING, logger="chestxr.data.cache"):
        cached = metrics("disk")
    warned = " ".join(r.getMessage() for r in caplog.records if r.name == "chestxr.data.cache")
    dm = module(manifest, cache)
    sources = {str(p) for p in dm.load().paths[dm.rows("test")]}
    missing = sorted(s for s in sources if s not in warned)
    assert sources and not missing, missing
    _same(cached, plain)
    for name, m in cached["outputs"].items():  # the decisions themselves are identical
        for key in ("roc_auc", "sensitivity", "specificity"):
            assert m["metrics"][key] == plain["outputs"][name]["metrics"][key], key
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="chestxr.data.cache"):
        _same(metrics("disk"), plain)  # rebuilt for good: no more warnings
    assert not [r for r in caplog.records if r.name == "chestxr.data.cache"]


def _fill(manifest: str, cache: str, order: int, queue) -> None:
    """One writer process: read the validation scans (in some order) through the shared cache."""
    dm = module(Path(manifest), Path(cache))
    ds = dm.dataset("val")
    idx = list(range(len(ds)))[::order]
    queue.put({Path(ds[i][keys.PATH]).name: ds[i][keys.IMAGE].numpy() for i in idx})


def test_two_writers_share_one_cache_folder(tmp_path, caplog):
    manifest = make_set(tmp_path, n=24)
    cache = tmp_path / "c"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_fill, args=(str(manifest), str(cache), o, queue)) for o in (1, -1)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    truth = images(manifest, tmp_path / "none", cache="none")
    for r in results:
        assert_close({k: torch.from_numpy(v) for k, v in r.items()}, truth, QUANT)
    with caplog.at_level(logging.WARNING):
        later = images(manifest, cache)  # a third run reads what both wrote
    assert not caplog.records
    assert_close(later, truth, QUANT)
    # and DataLoader workers forked from a process that has the cache open
    dm = module(manifest, tmp_path / "w")
    dm.num_workers = 2
    dm.setup("validate")
    images(manifest, tmp_path / "w")  # the parent opened the index and a shard first
    batches = list(dm.val_dataloader())
    names = [Path(p).name for b in batches for p in b[keys.PATH]]
    got = torch.cat([b[keys.IMAGE] for b in batches])
    for name, image in zip(names, got, strict=True):
        assert float((image - truth[name]).abs().max()) <= QUANT


def test_a_new_shard_is_never_taken_by_another_writer(tmp_path, monkeypatch):
    """Another writer looking for a shard while one is being created does not take it (it used
    to: the creator then blocked on the shard's lock for as long as the other writer lived)."""
    from chestxr.data import cache as cache_mod

    src = tmp_path / "a.png"
    write_png(src, 0)
    first = cache_mod.CacheStore(tmp_path / "c", settings="s")
    other = cache_mod.CacheStore(tmp_path / "c", settings="s")
    taken: list[tuple[str, int]] = []
    real_flock = cache_mod.fcntl.flock
    busy = []

    def flock(fd: int, op: int) -> None:
        if not busy:  # the creator's first lock: the other writer looks for a shard right now
            busy.append(fd)
            taken.append(other._take_shard())
        real_flock(fd, op | cache_mod.fcntl.LOCK_NB)  # a conflict fails here instead of hanging

    monkeypatch.setattr(cache_mod.fcntl, "flock", flock)
    first.put(src, np.zeros((1, 4, 4), dtype=np.float32), {})
    assert taken and first._writer is not None
    mine = first._writer[0]
    assert taken[0][0] != mine  # two writers, two shards
    monkeypatch.undo()
    os.close(taken[0][1])
    first.close()
    assert sorted(p.name for p in (tmp_path / "c").iterdir() if "index" not in p.name) == sorted(
        [mine, taken[0][0]]
    )  # both shards under their final names, nothing left half-created
    back, _ = first.get(src)
    assert (back == 0).all()


def test_unusable_cache_folder_is_named(tmp_path):
    from chestxr.data.cache import CacheError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    dm = module(make_set(tmp_path), blocker / "cache")
    with pytest.raises(CacheError, match=str(blocker / "cache")):
        dm.dataset("val")


def _open_store(folder: str, start, queue) -> None:
    """One process opening the cache index the moment ``start`` is set."""
    from chestxr.data.cache import CacheStore

    start.wait(30)
    try:
        CacheStore(folder, settings="s")
        queue.put(None)
    except Exception as err:  # reported to the parent, which names it
        queue.put(repr(err))


def test_processes_opening_a_new_cache_together_all_succeed(tmp_path):
    """DDP ranks (or DataLoader workers) open a cache folder nobody has used yet at the same
    moment. Creating the index used to fail in one of them with "database is locked"
    (SQLite gives up at once, without waiting, when two connections both upgrade to write)."""
    ctx = multiprocessing.get_context("fork")
    failures = []
    for attempt in range(6):
        folder = tmp_path / f"c{attempt}"
        start, queue = ctx.Event(), ctx.Queue()
        args = (str(folder), start, queue)
        procs = [ctx.Process(target=_open_store, args=args) for _ in range(8)]
        for p in procs:
            p.start()
        start.set()
        failures += [r for r in (queue.get(timeout=60) for _ in procs) if r is not None]
        for p in procs:
            p.join(timeout=30)
    assert failures == []


def test_a_file_system_without_flock_still_opens_the_cache(tmp_path, monkeypatch):
    """Some network mounts answer flock with ENOLCK: the index is opened without the turn-taking
    lock (SQLite's own locking remains), and the store works; other flock errors are raised."""
    import errno

    from chestxr.data import cache as cache_mod

    real = cache_mod.fcntl.flock

    def no_flock(fd: int, op: int) -> None:
        if op == cache_mod.fcntl.LOCK_EX:  # the index lock (shards use LOCK_NB)
            raise OSError(errno.ENOLCK, "No locks available")
        real(fd, op)

    monkeypatch.setattr(cache_mod.fcntl, "flock", no_flock)
    src = tmp_path / "a.png"
    write_png(src, 0)
    store = cache_mod.CacheStore(tmp_path / "c", settings="s")
    store.put(src, np.full((1, 4, 4), 0.5, dtype=np.float32), {})
    back, _ = store.get(src)
    assert np.allclose(back, 0.5)

    def broken(fd: int, op: int) -> None:
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(cache_mod.fcntl, "flock", broken)
    with pytest.raises(OSError, match="Bad file descriptor"):
        cache_mod.CacheStore(tmp_path / "d", settings="s")
