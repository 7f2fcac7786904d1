"""The preprocessing cache on disk: 16-bit images in shared append-only shards, checked on read.

Layout of one cache folder (one per preprocessing settings, see ``preprocess_key``)::

    index.sqlite        one row per entry (SQLite in WAL mode: many readers, serialised writers)
    index.lock          taken (flock) while a process opens the index, so ranks opening a new
                        folder together take turns instead of failing with "database is locked"
    shard-<uuid>.bin    preprocessed images, appended one after another, memory-mapped for reads

Guarantees:

- **Keyed by content.** An entry's key hashes the source file's resolved path, size, mtime_ns,
  inode and ctime_ns with the preprocessing settings (which name the reader version): a file
  replaced at the same path, even with the same size, is read again.
- **Checked on read.** Each entry stores a CRC-32 of its bytes and of its index row. A truncated,
  empty, missing or altered entry is rebuilt from the source file with a ``logging`` warning that
  names the source file and the shard; it is never used and never crashes the run.
- **Compact.** An image is stored as uint16, quantised between its own minimum and maximum (the
  reader's [0, 1] output loses at most 7.7e-6 per pixel; both ends are exact, so zero padding stays
  zero). Non-finite images are stored as float32. Every read, the first one included, returns the
  de-quantised image, so a run gives the same numbers whether the cache was full or empty.
- **Several writers.** Each writing process appends to a shard it holds an exclusive ``flock`` on
  (shards are reused across runs, a new one starts when all are taken or full), and commits the
  index row only after the bytes are written. Connections, locks and maps are opened lazily in the
  process that uses them, so DataLoader workers forked from a parent each get their own.

A folder the cache cannot write to is an error naming it (choose another ``data.cache_dir`` or
``data.cache=memory|none``). Space of rebuilt or superseded entries is not reclaimed: delete the
folder to start afresh.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import mmap
import os
import sqlite3
import threading
import uuid
import zlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from monai.data import Dataset
from monai.transforms import Compose, RandomizableTrait, Transform

log = logging.getLogger(__name__)

SCHEMA = 1  # bump when the index or the shard format changes
SHARD_BYTES = 1 << 30  # a shard takes no new entries beyond this size
_Q = 65535.0

_CREATE = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    shard TEXT NOT NULL,
    offset INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    dtype TEXT NOT NULL,
    shape TEXT NOT NULL,
    lo REAL NOT NULL,
    hi REAL NOT NULL,
    meta TEXT NOT NULL,
    crc INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_source ON entries (source);
"""


class CacheError(OSError):
    """The cache folder cannot be used (not writable, full disk); the message names it."""


def quantise(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    """uint16 codes of a finite float image between its minimum ``lo`` and maximum ``hi``.

    Returns:
        ``(codes, lo, hi)``; :func:`dequantise` inverts it to within ``(hi - lo) / 131070``.
    """
    x = np.asarray(image, dtype=np.float64)
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.uint16), lo, lo
    codes = np.rint((x - lo) * (_Q / (hi - lo)))
    return np.clip(codes, 0, _Q).astype(np.uint16), lo, hi


def dequantise(codes: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float32 image from :func:`quantise`'s codes."""
    out = codes.astype(np.float32)
    out *= np.float32((hi - lo) / _Q)
    out += np.float32(lo)
    return out


def source_identity(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What identifies a source file's content without reading it; None when it cannot be stat'ed.

    Resolved path, size, mtime_ns, and inode and ctime_ns (which change when a file is replaced
    even by a copy that keeps its size and modification time).
    """
    try:
        p = Path(path).resolve()
        st = p.stat()
    except OSError:
        return None
    return {
        "path": str(p),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ino": st.st_ino,
        "ctime_ns": st.st_ctime_ns,
    }


F = TypeVar("F", bound=Callable[..., Any])


def _locked(method: F) -> F:
    """Run a :class:`CacheStore` method under the store's lock: one thread at a time uses this
    process's connection, maps and shard (a reader thread and the main thread may share it)."""

    @wraps(method)
    def run(self: CacheStore, *args: Any, **kwargs: Any) -> Any:
        self._fresh()
        with self._lock:
            return method(self, *args, **kwargs)

    return run  # type: ignore[return-value]


def _flock_if_supported(fd: int) -> None:
    """Exclusive flock on ``fd``; a file system without flock (some network mounts) goes on
    unlocked, as SQLite's own locking then is all there is."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as err:
        if err.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        log.debug("no flock on %s: %s", fd, err)


class CacheStore:
    """Preprocessed images of one preprocessing setting, in one folder (see the module docs).

    Args:
        folder: the cache folder (created).
        settings: a string naming the preprocessing settings and reader version; part of every key.
        shard_bytes: size beyond which a shard takes no new entries.

    Raises:
        CacheError: the folder cannot be created or written.
    """

    def __init__(
        self, folder: str | os.PathLike[str], settings: str, *, shard_bytes: int = SHARD_BYTES
    ) -> None:
        self.folder = Path(folder).expanduser()
        self.settings = settings
        self.shard_bytes = shard_bytes
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CacheError(
                err.errno,
                f"cannot create the preprocessing cache folder {self.folder}: {err}; "
                "set data.cache_dir to a writable folder, or data.cache=memory or none",
            ) from err
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise CacheError(
                f"the preprocessing cache folder {self.folder} is not writable; set "
                "data.cache_dir to a writable folder, or data.cache=memory or none"
            )
        self._pid = -1
        self._reset()
        self._connection()  # create the index now, so an unusable folder fails here

    # -- per-process state (never shared across fork) -----------------------------------------
    def _reset(self) -> None:
        self._pid = os.getpid()
        self._db: sqlite3.Connection | None = None
        self._maps: dict[str, mmap.mmap] = {}
        self._writer: tuple[str, int] | None = None  # (shard name, fd holding its flock)
        self._lock = threading.RLock()

    def _fresh(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's handles are not ours to use
            self._reset()

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "settings": self.settings, "shard_bytes": self.shard_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def _connection(self) -> sqlite3.Connection:
        self._fresh()
        if self._db is None:
            index = self.folder / "index.sqlite"
            # Processes opening a new folder together (DDP ranks, loader workers) take turns:
            # SQLite answers "database is locked" at once, without waiting, to one of two
            # connections that both turn the index to WAL or create its tables.
            try:
                lock_fd = os.open(self.folder / "index.lock", os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise CacheError(
                    err.errno,
                    f"cannot create {self.folder / 'index.lock'}: {err}; set data.cache_dir to a "
                    "writable folder, or data.cache=memory or none",
                ) from err
            try:
                _flock_if_supported(lock_fd)
                db = sqlite3.connect(
                    index, timeout=60.0, isolation_level=None, check_same_thread=False
                )  # used by one thread at a time (the store's lock)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_CREATE)
                db.execute(f"PRAGMA user_version={SCHEMA}")
            except sqlite3.Error as err:
                raise CacheError(
                    f"cannot use the preprocessing cache index {index}: {err}; delete the folder "
                    f"{self.folder} to start a new cache, or set data.cache=memory or none"
                ) from err
            finally:
                os.close(lock_fd)  # releases the flock
            self._db = db
        return self._db

    # -- keys ----------------------------------------------------------------------------------
    def key(self, source: str | os.PathLike[str]) -> str | None:
        """The entry key of ``source`` as it is now; None when the file cannot be stat'ed."""
        ident = source_identity(source)
        if ident is None:
            return None
        blob = json.dumps({"schema": SCHEMA, "settings": self.settings, **ident}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    # -- reading -------------------------------------------------------------------------------
    @_locked
    def get(
        self, source: str | os.PathLike[str], *, key: str | None = None
    ) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The cached float32 image and metadata of ``source``; None when absent or unusable.

        A corrupt entry (shard missing, truncated or altered) is logged as a warning naming the
        source file and the shard, and reported as absent.

        Args:
            source: the source file.
            key: the entry key, when the caller has it (default: :meth:`key` of ``source``).
        """
        key = key or self.key(source)
        if key is None:
            return None
        row = (
            self._connection()
            .execute(
                "SELECT shard, offset, nbytes, dtype, shape, lo, hi, meta, crc FROM entries "
                "WHERE key = ?",
                (key,),
            )
            .fetchone()
        )
        if row is None:
            return None
        shard, offset, nbytes, dtype, shape, lo, hi, meta, crc = row
        payload, problem = self._payload(shard, offset, nbytes)
        if payload is not None and _crc(key, dtype, shape, lo, hi, meta, payload) != crc:
            problem = "its checksum does not match (altered bytes)"
        if problem:
            log.warning(
                "preprocessing cache entry of %s is unusable: %s (shard %s); rebuilding it from "
                "the source file",
                source,
                problem,
                self.folder / shard,
            )
            return None
        dims = tuple(json.loads(shape))
        if dtype == "u2":
            image = dequantise(np.frombuffer(payload, dtype=np.uint16).reshape(dims), lo, hi)
        else:
            image = np.frombuffer(payload, dtype=np.float32).reshape(dims).copy()
        return image, json.loads(meta)

    def _payload(self, shard: str, offset: int, nbytes: int) -> tuple[bytes | None, str]:
        """The entry's bytes, or None and why not.

        The shard's current size is checked before every read, so a shard truncated under a
        running process gives a rebuilt entry, not a bus error from the stale map.
        """
        end = offset + nbytes
        path = self.folder / shard
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None, "its shard is missing"
        if size == 0:
            return None, "its shard is empty"
        if end > size:
            return None, f"its shard is truncated ({size} bytes, the entry ends at {end})"
        m = self._maps.get(shard)
        if m is None or end > len(m) or len(m) > size:  # not mapped yet, grown or shrunk since
            if m is not None:
                m.close()
                del self._maps[shard]
            try:
                with open(path, "rb") as f:
                    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (FileNotFoundError, ValueError):
                return None, "its shard is missing or empty"
            self._maps[shard] = m
            if end > len(m):
                return None, f"its shard is truncated ({len(m)} bytes, the entry ends at {end})"
        return bytes(m[offset : offset + nbytes]), ""

    # -- writing -------------------------------------------------------------------------------
    @_locked
    def put(
        self,
        source: str | os.PathLike[str],
        image: np.ndarray,
        meta: Mapping[str, Any],
        *,
        key: str | None = None,
    ) -> np.ndarray:
        """Store ``image`` (float) and JSON-able ``meta`` for ``source``; returns the image as
        stored (de-quantised), which is what later reads give.

        Nothing is stored when ``source`` cannot be stat'ed (the image is still returned).
        ``key`` as in :meth:`get`.

        Raises:
            CacheError: the shard or index cannot be written (full disk...); names the file.
        """
        image = np.asarray(image, dtype=np.float32)
        if np.isfinite(image).all():
            codes, lo, hi = quantise(image)
            dtype, payload, stored = "u2", codes.tobytes(), dequantise(codes, lo, hi)
        else:
            dtype, payload, lo, hi, stored = "f4", image.tobytes(), 0.0, 0.0, image
        key = key or self.key(source)
        if key is None:
            return stored
        shape = json.dumps(list(image.shape))
        meta_text = json.dumps(dict(meta), sort_keys=True)
        crc = _crc(key, dtype, shape, lo, hi, meta_text, payload)
        shard, offset = self._append(payload)
        try:
            db = self._connection()
            with db:  # one transaction: the new row, and rows of earlier versions of the file
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        key,
                        str(source),
                        shard,
                        offset,
                        len(payload),
                        dtype,
                        shape,
                        lo,
                        hi,
                        meta_text,
                        crc,
                    ),
                )
                db.execute("DELETE FROM entries WHERE source = ? AND key != ?", (str(source), key))
        except sqlite3.Error as err:
            raise CacheError(
                f"cannot write the preprocessing cache index {self.folder / 'index.sqlite'}: {err}"
            ) from err
        return stored

    def _append(self, payload: bytes) -> tuple[str, int]:
        """Write ``payload`` at the end of a shard this process holds; returns (shard, offset)."""
        self._fresh()
        if self._writer is not None:
            name, fd = self._writer
            if os.fstat(fd).st_size + len(payload) > self.shard_bytes:
                os.close(fd)  # full: releases the lock
                self._writer = None
        if self._writer is None:
            self._writer = self._take_shard()
        name, fd = self._writer
        offset = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(payload)
            written = 0
            while written < len(view):
                written += os.pwrite(fd, view[written:], offset + written)
        except OSError as err:
            raise CacheError(
                err.errno,
                f"cannot write the preprocessing cache shard {self.folder / name}: "
                f"{err.strerror}; free space there, or set data.cache=none",
            ) from err
        return name, offset

    def _take_shard(self) -> tuple[str, int]:
        """An existing shard with room that no other process holds, else a new one (locked)."""
        for path in sorted(self.folder.glob("shard-*.bin")):
            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            if os.fstat(fd).st_size < self.shard_bytes:
                return path.name, fd
            os.close(fd)
        # created under a name other writers do not look at, locked, then renamed (the lock
        # stays): a new shard is never seen unlocked, so no other process can take it first
        name = f"shard-{uuid.uuid4().hex}.bin"
        part = self.folder / f".{name}.part"
        try:
            fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as err:
            raise CacheError(
                err.errno, f"cannot create a preprocessing cache shard in {self.folder}: {err}"
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(part, self.folder / name)
        except OSError as err:
            os.close(fd)
            raise CacheError(
                err.errno,
                f"cannot create the preprocessing cache shard {self.folder / name}: {err}",
            ) from err
        return name, fd

    @_locked
    def close(self) -> None:
        """Release this process's connection, maps and shard lock."""
        if self._pid == os.getpid():
            if self._db is not None:
                self._db.close()
            for m in self._maps.values():
                m.close()
            if self._writer is not None:
                os.close(self._writer[1])
        self._reset()

    @_locked
    def stats(self) -> dict[str, int]:
        """Entries, their bytes, and the bytes of all shards (superseded entries included)."""
        n, live = (
            self._connection()
            .execute("SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM entries")
            .fetchone()
        )
        shards = sum(p.stat().st_size for p in self.folder.glob("shard-*.bin"))
        return {"entries": int(n), "entry_bytes": int(live), "shard_bytes": int(shards)}


def _crc(key: str, dtype: str, shape: str, lo: float, hi: float, meta: str, payload: bytes) -> int:
    head = f"{key}|{dtype}|{shape}|{lo!r}|{hi!r}|{meta}".encode()
    return zlib.crc32(payload, zlib.crc32(head))


class CachedDataset(Dataset):
    """A MONAI dataset whose deterministic preprocessing goes through a :class:`CacheStore`.

    The transforms up to the first random one are the cached part (as in MONAI's
    ``PersistentDataset``); what they produce under ``image_key`` is stored with the keys they add
    (such as ``orig_shape``), keyed by the source file named by ``item[image_key]``. Keys of the
    item itself (target, row, patient) are never cached: they come from the manifest every read.

    Args:
        data: sample dictionaries, the source file path under ``image_key``.
        transform: the whole chain (deterministic preprocessing, then random augmentation).
        store: where the preprocessed images live.
        image_key: the key of the path before, and of the image after, preprocessing.
        typed_keys: item keys converted to float32 tensors as the preprocessing chain does.
    """

    def __init__(
        self,
        data: Sequence[dict[Hashable, Any]],
        transform: Compose,
        store: CacheStore,
        *,
        image_key: str,
        typed_keys: Sequence[str] = (),
    ) -> None:
        super().__init__(data, transform)
        self.store = store
        self.image_key = image_key
        self.typed_keys = tuple(typed_keys)
        self.first_random = transform.get_index_of_first(
            lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform)
        )

    def _preprocessed(self, item: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        source = str(item[self.image_key])
        # the identity is taken once, before the read: a file replaced while it is being read
        # leaves its pixels under the old identity (a miss next time), never under the new one
        key = self.store.key(source)
        hit = None if key is None else self.store.get(source, key=key)
        if hit is None:
            out = self.transform(dict(item), end=self.first_random, threading=True)
            image = _numpy(out[self.image_key])
            meta = {str(k): _plain(v) for k, v in out.items() if k not in item}
            if key is None:  # not stat'ed before the read: nothing to key the entry by
                hit = np.asarray(image, dtype=np.float32), meta
            else:
                hit = self.store.put(source, image, meta, key=key), meta
        image, meta = hit
        d = dict(item)
        d.update({k: tuple(v) if isinstance(v, list) else v for k, v in meta.items()})
        d[self.image_key] = torch.from_numpy(np.array(image, dtype=np.float32))
        for k in self.typed_keys:
            if k in d:
                d[k] = torch.as_tensor(np.asarray(d[k], dtype=np.float32))
        return d

    def _transform(self, index: int) -> Any:
        d = self._preprocessed(self.data[index])
        if self.first_random is None:
            return d
        return self.transform(d, start=self.first_random, threading=True)


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _plain(value: Any) -> Any:
    """A JSON-able copy of a metadata value (tuples become lists, restored as tuples)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return _numpy(value).tolist()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


__all__ = ["CacheError", "CacheStore", "CachedDataset", "dequantise", "quantise"]
