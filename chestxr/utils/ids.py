"""Identifiers that name a scan or study in outputs without revealing it, and error causes."""

from __future__ import annotations

import hashlib
import hmac
import os


def anonymous_id(value: str, *, prefix: str, key: bytes | str = b"") -> str:
    """A short, stable pseudonym for ``value`` (a path, a UID): ``prefix-<10 hex>``.

    Args:
        value: what to hide.
        prefix: what kind of thing it names (``scan``, ``study``).
        key: a secret; with one, the pseudonym cannot be recomputed from a guessed ``value``
            (HMAC-SHA256); without, it is a plain SHA-256 prefix.
    """
    key_bytes = key.encode() if isinstance(key, str) else key
    if key_bytes:
        digest = hmac.new(key_bytes, value.encode(), hashlib.sha256).hexdigest()
    else:
        digest = hashlib.sha256(value.encode()).hexdigest()
    return f"{prefix}-{digest[:10]}"


def scan_id(path: str | os.PathLike[str], key: bytes | str = b"") -> str:
    """The anonymous id of a scan file, the same in every output (predict, the report...).

    Args:
        path: the file; its absolute path is hashed, so a relative and an absolute spelling of
            the same file get the same id.
        key: the secret (``id_key``), as for :func:`anonymous_id`.
    """
    return anonymous_id(os.path.abspath(path), prefix="scan", key=key)


def redact(text: str, path: str | os.PathLike[str], name: str) -> str:
    """``text`` with the path (as given, absolute, real) and its file name replaced by ``name``."""
    path = str(path)
    forms = {path, os.path.abspath(path), os.path.realpath(path), os.path.basename(path)}
    for form in sorted((f for f in forms if f), key=len, reverse=True):
        text = text.replace(form, name)
    return text


def find_cause(err: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type ``kind`` in ``err``'s chain (``__cause__``, else
    ``__context__``), ``err`` itself included; None when there is none."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, kind):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None
