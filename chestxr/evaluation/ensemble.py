"""Seed ensembles and test-time augmentation (TTA): one model whose logit is a mean of logits.

:class:`Ensemble` wraps trained classifiers (the members, e.g. the same recipe trained with
different seeds) and deterministic :class:`View` s of the input; its logit is the mean, in logit
space, over every member and view. It exposes what evaluation needs from a classifier
(``output_names``, the first member's ``hparams``, a ``thresholds`` buffer), with NaN thresholds:
a member's stored operating point was chosen for its own scores, not for the averaged one, so
:func:`chestxr.evaluation.run.evaluate_model` chooses it again on validation.

A view rotates, magnifies about the centre and shifts the batch with one ``affine_grid`` +
``grid_sample``, as the training augmentation does (:mod:`chestxr.data.batch_augment`: bilinear,
zero padding, ``align_corners=False``, images in [0, 1]). Never a flip: laterality is anatomy.

Errors are ``ValueError`` s naming the config key or the checkpoint; the evaluation turns them
into ``EvaluationSetupError`` s.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chestxr.data.audit.scan import file_sha256
from chestxr.models.module import ChestXRClassifier

VIEW_KEYS = ("rotate_deg", "scale", "shift")
# hyperparameters the members must share: they define the input and the meaning of the outputs
AGREED_HPARAMS = ("preprocess", "task", "classes", "operating_point")


@dataclass(frozen=True)
class View:
    """One deterministic view of a square image, about its centre.

    Args:
        rotate_deg: the content rotated by this angle, counter-clockwise as displayed.
        scale: the content magnified by this factor (above 1: borders cropped; below 1: zero
            padding around it).
        shift: ``(x, y)``: the content moved right and down by these fractions of the side.
    """

    rotate_deg: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)

    @property
    def is_identity(self) -> bool:
        return self.rotate_deg == 0 and self.scale == 1 and self.shift == (0.0, 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {"rotate_deg": self.rotate_deg, "scale": self.scale, "shift": list(self.shift)}

    def matrix(self) -> Tensor:
        """The ``(2, 3)`` matrix for :func:`~torch.nn.functional.affine_grid` (output -> input).

        The content moves by ``p_out = scale * R p_in + 2 shift`` in normalised coordinates
        ([-1, 1], y down), so the matrix is its inverse ``R^T (p_out - 2 shift) / scale``.
        """
        a = math.radians(self.rotate_deg)
        cos, sin, s = math.cos(a), math.sin(a), self.scale
        tx, ty = 2 * self.shift[0], 2 * self.shift[1]
        return torch.tensor(
            [
                [cos / s, -sin / s, -(cos * tx - sin * ty) / s],
                [sin / s, cos / s, -(sin * tx + cos * ty) / s],
            ],
            dtype=torch.float64,
        )

    def __call__(self, images: Tensor) -> Tensor:
        """This view of ``images`` ``(B, C, S, S)``; the identity returns them unchanged."""
        if self.is_identity:
            return images
        if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"a view needs square images (B, C, S, S), got {tuple(images.shape)}")
        x = images.float()
        theta = self.matrix().to(device=x.device, dtype=x.dtype).expand(len(x), 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.to(images.dtype)


IDENTITY = View()


def parse_views(
    spec: Any, presets: Mapping[str, Any] | None, key: str = "evaluation.tta"
) -> list[View]:
    """The views of a TTA setting, the identity first; ``[]`` when TTA is off.

    Args:
        spec: None or False (off), the name of a preset, or a list of views, each a mapping of
            :data:`VIEW_KEYS` (a missing key: no rotation, no zoom, no shift).
        presets: named lists of views (``evaluation.tta_presets``).
        key: the config key, quoted in errors.

    Raises:
        ValueError: an unknown preset or key (a flip is named as such), a non-finite or
            non-positive value, a malformed shift, or a view listed twice (quoting the key).
    """
    if spec is None or spec is False:
        return []
    if isinstance(spec, str):
        presets = dict(presets or {})
        if spec not in presets:
            raise ValueError(f"{key}={spec!r} is not a preset; known: {sorted(presets)}")
        return parse_views(
            list(presets[spec]), None, key=f"{key.rsplit('.', 1)[0]}.tta_presets.{spec}"
        )
    if not isinstance(spec, Sequence) or not spec:
        raise ValueError(
            f"{key} must be null, a preset name or a non-empty list of views, got {spec!r}"
        )
    views = [_view(entry, f"{key}[{i}]") for i, entry in enumerate(spec)]
    for i, view in enumerate(views):
        if view in views[:i]:
            raise ValueError(f"{key}[{i}] {view.as_dict()} is listed twice (it would weigh double)")
    return views if IDENTITY in views else [IDENTITY, *views]


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    return float(value)


def _view(entry: Any, key: str) -> View:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{key} must be a mapping of {list(VIEW_KEYS)}, got {entry!r}")
    for name in entry:
        if "flip" in str(name).lower():
            raise ValueError(f"{key}.{name}: flips are refused (laterality is anatomy)")
        if name not in VIEW_KEYS:
            raise ValueError(f"{key}.{name} is not a view setting; known: {list(VIEW_KEYS)}")
    rotate = _number(entry.get("rotate_deg", 0.0), f"{key}.rotate_deg")
    scale = _number(entry.get("scale", 1.0), f"{key}.scale")
    if scale <= 0:
        raise ValueError(f"{key}.scale must be > 0 (a magnification), got {scale!r}")
    shift = entry.get("shift", (0.0, 0.0))
    if isinstance(shift, str) or not isinstance(shift, Sequence) or len(shift) != 2:
        raise ValueError(f"{key}.shift must be [x, y] (fractions of the side), got {shift!r}")
    xy = (_number(shift[0], f"{key}.shift[0]"), _number(shift[1], f"{key}.shift[1]"))
    return View(rotate, scale, xy)


def checkpoint_records(paths: Sequence[str | os.PathLike[str]]) -> list[dict[str, str]]:
    """``{"path", "sha256"}`` of each checkpoint, refusing the same file given twice.

    Raises:
        FileNotFoundError: a path that is not a file.
        ValueError: two paths resolving to the same file, or two files with the same sha256.
    """
    records: list[dict[str, str]] = []
    resolved: list[Path] = []
    for path in paths:
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"checkpoint not found: {file}")
        record = {"path": str(path), "sha256": file_sha256(file)}
        for earlier, where in zip(records, resolved, strict=True):
            if where == file.resolve() or earlier["sha256"] == record["sha256"]:
                raise ValueError(
                    f"ckpt_path gives the same checkpoint twice: {path} is "
                    f"{'the same file as' if where == file.resolve() else 'a copy of'} "
                    f"{earlier['path']} (sha256 {record['sha256'][:12]}...); an ensemble would "
                    "count that model twice"
                )
        records.append(record)
        resolved.append(file.resolve())
    return records


class Ensemble(nn.Module):
    """Mean logit of ``members`` over ``views``: a seed ensemble, TTA, or both.

    Args:
        members: trained classifiers that agree on :data:`AGREED_HPARAMS`.
        views: test-time views; the identity is always included (empty: the identity only).
        sources: one ``{"path", "sha256"}`` per member, named in errors and in
            :meth:`describe`; None: members named by their position.

    Raises:
        ValueError: no member, a ``sources`` list of another length, or a member that differs
            from the first on one of :data:`AGREED_HPARAMS` (naming the member and the key).
    """

    def __init__(
        self,
        members: Sequence[ChestXRClassifier],
        views: Sequence[View] = (),
        sources: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if sources is not None and len(sources) != len(members):
            raise ValueError(f"got {len(sources)} sources for {len(members)} members")
        self.sources = [dict(s) for s in sources] if sources is not None else None
        first = members[0].hparams
        for i, member in enumerate(members[1:], start=1):
            for key in AGREED_HPARAMS:
                mine, theirs = _plain(member.hparams.get(key)), _plain(first.get(key))
                if mine != theirs:
                    raise ValueError(
                        f"checkpoint {self._name(i)} differs from {self._name(0)} on "
                        f"model.hparams.{key}: {mine!r} != {theirs!r}; the members of an "
                        "ensemble must agree on it"
                    )
        self.members = nn.ModuleList(members)
        self.views = list(views) if IDENTITY in views else [IDENTITY, *views]
        self.output_names = list(members[0].output_names)
        nan = torch.full((len(self.output_names),), float("nan"))
        self.register_buffer("thresholds", nan.to(members[0].thresholds.device))

    def _name(self, i: int) -> str:
        return self.sources[i]["path"] if self.sources else f"member {i}"

    @property
    def hparams(self) -> Any:
        """The first member's hyperparameters (the members agree on those evaluation reads)."""
        return self.members[0].hparams

    def with_views(self, views: Sequence[View]) -> Ensemble:
        """The same members (and sources) over ``views``."""
        return Ensemble(list(self.members), views, self.sources)

    def describe(self) -> dict[str, Any]:
        """``members`` (path and sha256; null when unknown) and ``tta_views``, for metrics.json."""
        members = self.sources or [{"path": None, "sha256": None}] * len(self.members)
        return {"members": members, "tta_views": [v.as_dict() for v in self.views]}

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, K)``: the mean over members and views of each member's logits."""
        total = None
        for view in self.views:
            x = view(images)
            for member in self.members:
                logits = member(x).float()
                total = logits if total is None else total + logits
        return total / (len(self.views) * len(self.members))


def _plain(value: Any) -> Any:
    """Mappings and sequences as dicts and lists, to compare hyperparameters by value."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
