"""Building objects from config groups, and checking config value types at the boundary."""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import PurePath
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, ListConfig

log = logging.getLogger(__name__)


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group (callbacks, loggers) that has a ``_target_``."""
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def _matches(value: Any, hint: Any) -> bool:
    """Whether a config value fits a type hint; hints it cannot judge are accepted."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if hint is type(None) or hint is None:
        return value is None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or (origin is None and type(hint).__name__ == "UnionType"):
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if isinstance(value, (DictConfig, Mapping)) and "_target_" in value:
        return True  # an object built by Hydra: its own keys are checked where it is built
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint in (PurePath,) or (isinstance(hint, type) and issubclass(hint, PurePath)):
        return isinstance(value, str | PurePath)
    base = origin or hint
    if base in (list, tuple, Sequence, Iterable) or base is typing.Sequence:
        if not isinstance(value, ListConfig | list | tuple):
            return False
        if len(args) == 1 or (base is tuple and len(args) == 2 and args[1] is Ellipsis):
            return all(_matches(v, args[0]) for v in value)
        return True
    if base in (dict, Mapping):
        return isinstance(value, DictConfig | dict)
    return True  # a class we do not judge (a strategy object, a callable...)


def _hint_text(hint: Any) -> str:
    """``int | None`` rather than ``typing.Optional[int]``."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        return " | ".join(_hint_text(a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    name = getattr(hint, "__name__", None) if origin is None else None
    return name or str(hint).replace("typing.", "")


def check_types(
    cfg: DictConfig, target: Callable[..., Any] | str, prefix: str, skip: Iterable[str] = ()
) -> None:
    """Check the values of ``cfg`` against the type hints of ``target``'s parameters.

    Catches, before any work, what would otherwise fail deep inside a library with a bare
    ``TypeError`` (``trainer.max_epochs=abc``).

    Args:
        cfg: the config node whose keys are ``target``'s arguments.
        target: a class or callable (or its dotted name, as in ``_target_``).
        prefix: the node's key, for the message (``trainer``).
        skip: keys not to check (filled in by the caller).

    Raises:
        TypeError: a value does not fit its parameter's type; the message names the key, the
            value and the expected type.
    """
    if isinstance(target, str):
        target = get_class(target)
    func = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(func)
    except Exception as err:  # unresolvable annotations: nothing to check against
        log.debug("no type hints for %s (%s); %s not checked", target, err, prefix)
        return
    skipped = set(skip)
    for key in cfg:
        if key.startswith("_") or key in skipped or key not in hints:
            continue
        value = cfg[key]
        if not _matches(value, hints[key]):
            raise TypeError(
                f"{prefix}.{key}={value!r}: expected {_hint_text(hints[key])}, "
                f"got {type(value).__name__}"
            )
