"""Class activation maps: one small class per method over a shared base, and a registry.

:class:`BaseCAM` runs the model once, keeps the target layer's activations ``A`` and takes
``d(logit_k)/dA`` for every requested output ``k`` with :func:`torch.autograd.grad` on ``A`` alone:
the layers before the target are run without autograd and no parameter gets a gradient. A method
only says how to weight the channels (:meth:`BaseCAM.cam_weights`); the map is
``relu(sum_c w_c A_c)``, upsampled onto the input pixels its cells are centred on and scaled to
[0, 1]. To add a method, write a subclass and decorate it with :func:`register_cam`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

#: Method name -> class; filled by :func:`register_cam`. The one place that lists the methods.
CAM_REGISTRY: dict[str, type[BaseCAM]] = {}


def stride_aligned_upsampler(
    spatial_size: Sequence[int],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Upsample a strided feature map so each cell lands on the pixel it is centred on.

    In a ResNet whose downsampling layers are padded stride-2 convolutions and pools (a 7x7/2 stem
    with padding 3, a 3x3/2 max-pool and 3x3/2 convolutions with padding 1), cell ``i`` of a
    stride-``s`` map is centred on input pixel ``s * i``. A plain resize (MONAI's default
    upsampler, ``align_corners=False``) puts it at ``s * i + (s - 1) / 2`` instead, displacing every
    map by half a cell towards the bottom right: 16 pixels for the last stage of a ResNet-18. Here
    pixel ``y`` samples the map at ``y / s`` (bilinear, clamped at the border).

    Args:
        spatial_size: ``(H, W)`` of the input image.

    Returns:
        A function mapping ``(B, C, h, w)`` maps to ``(B, C, H, W)``.
    """

    def up(x: torch.Tensor) -> torch.Tensor:
        grids = []
        for size, cells in zip(spatial_size, x.shape[2:], strict=True):
            stride = 2 ** round(math.log2(size / cells)) if cells < size else 1
            pos = torch.arange(size, dtype=x.dtype, device=x.device) / stride  # in cell units
            grids.append((2 * pos / max(cells - 1, 1) - 1).clamp(-1, 1))
        gy, gx = torch.meshgrid(*grids, indexing="ij")
        grid = torch.stack((gx, gy), dim=-1).expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)

    return up


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of a ``(B, 1, H, W)`` batch to [0, 1] (min to 0, max to 1); flat maps → 0."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    span = hi - lo
    return torch.where(span > 0, (maps - lo) / span.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)


@contextmanager
def _frozen_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode, parameters without ``requires_grad``, their ``.grad`` kept; all restored after.

    The maps need gradients with respect to the target layer's activations only, so the
    parameters need none: faster, and a model being trained keeps its accumulated gradients.
    """
    was_training = model.training
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag, grad in zip(params, flags, grads, strict=True):
            p.requires_grad_(flag)
            p.grad = grad
        model.train(was_training)


def _layer(model: nn.Module, target_layer: str) -> nn.Module:
    layer = dict(model.named_modules()).get(target_layer) if target_layer else None
    if layer is None:
        names = [n for n, _ in model.named_children()]
        raise ValueError(
            f"target_layer {target_layer!r} is not a module of the model; top-level names: {names}"
        )
    return layer


@contextmanager
def _activations_as_leaf(layer: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Replace the layer's output by a detached copy that requires grad; the hook is removed after.

    The layers before it are then outside the autograd graph (nothing upstream requires grad), so
    a gradient stops at the target layer. Yields the list the activations are appended to.
    """
    seen: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        leaf = output.detach().requires_grad_(True)
        seen.append(leaf)
        return leaf

    handle = layer.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def activations_and_gradients(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    target_layer: str,
    outputs: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass, then ``d(logit_k)/dA`` for each output ``k`` with respect to ``A`` only.

    :func:`explaining_pass` with the logits left out; see there.
    """
    _, _, acts, grads = explaining_pass(model, images, target_layer, outputs)
    return acts, grads


#: Which outputs an explaining pass explains: all (None), these, or chosen from the logits.
OutputChoice = Sequence[int] | Callable[[torch.Tensor], Sequence[int]] | None


def explaining_pass(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    target_layer: str,
    outputs: OutputChoice = None,
) -> tuple[torch.Tensor, list[int], torch.Tensor, torch.Tensor]:
    """One forward pass, then ``d(logit_k)/dA`` for each output ``k`` with respect to ``A`` only.

    The pass's logits are returned too, so a caller that needs scores and maps runs the network
    once: they are the model's fp32 (its parameters' dtype) eval-mode logits, what an inference
    forward at that precision gives.

    Works inside ``torch.inference_mode()`` or ``torch.no_grad()`` (a Lightning step): the pass
    runs on a fresh copy of the input with gradients switched back on. The model is in eval mode
    for the call; its mode, ``requires_grad`` flags and ``.grad`` tensors are restored after, and
    no hook is left on it.

    Args:
        model: maps ``(B, C, S, S)`` images to ``(B, K)`` logits.
        images: ``(B, C, S, S)`` or ``(C, S, S)``, moved to the model's device and dtype.
        target_layer: dotted module name (``model.named_modules()``), e.g. ``"net.layer4"``.
        outputs: logits to explain: all ``K`` (None), the given indices, or a function of the
            detached ``(B, K)`` logits returning the indices (e.g. each image's top finding).

    Returns:
        The detached logits ``(B, K)``, the outputs explained, ``A`` ``(B, c, h, w)`` and the
        gradients ``(len(outputs), B, c, h, w)``.

    Raises:
        ValueError: bad ``images`` shape, an output index out of range, ``target_layer`` not
            found or not run exactly once by the forward pass.
    """
    x = torch.as_tensor(images)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")
    layer = _layer(model, target_layer)
    param = next(model.parameters(), None)
    device = param.device if param is not None else x.device
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        _frozen_eval(model),
        _activations_as_leaf(layer) as seen,
    ):
        # A clone made outside inference mode is a normal tensor that autograd can record.
        inp = x.detach().to(device=device, dtype=dtype).clone()
        logits = model(inp)
        if len(seen) != 1:
            raise ValueError(f"target_layer {target_layer!r} ran {len(seen)} times, expected once")
        if logits.ndim != 2:
            raise ValueError(f"model output must be (B, K) logits, got {tuple(logits.shape)}")
        if callable(outputs):
            outputs = outputs(logits.detach())
        wanted = list(range(logits.shape[1])) if outputs is None else [int(k) for k in outputs]
        for k in wanted:
            if not 0 <= k < logits.shape[1]:
                raise ValueError(
                    f"output_index {k} out of range for logits of shape {tuple(logits.shape)}"
                )
        acts = seen[0]
        grads = [
            torch.autograd.grad(logits[:, k].sum(), acts, retain_graph=i < len(wanted) - 1)[0]
            for i, k in enumerate(wanted)
        ]
    return logits.detach(), wanted, acts.detach(), torch.stack(grads)


class BaseCAM:
    """A CAM method: channel weights from activations and gradients; the rest is shared.

    Subclasses set :attr:`name` (through :func:`register_cam`) and override :meth:`cam_weights`.

    Args:
        model: maps ``(B, C, S, S)`` images to ``(B, K)`` logits (for the Lightning module,
            which normalises its input itself, the module with ``target_layer="net.layer4"``).
        target_layer: dotted name of the module whose activations are weighted.
    """

    name: ClassVar[str] = ""

    def __init__(self, model: nn.Module, target_layer: str = "layer4") -> None:
        _layer(model, target_layer)
        self.model = model
        self.target_layer = target_layer

    @staticmethod
    def cam_weights(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Channel weights ``(B, c)`` from activations and one output's gradients."""
        raise NotImplementedError

    @classmethod
    def maps(cls, acts: torch.Tensor, grads: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """``(B, S, S)`` maps in [0, 1] of one output from its ``(B, c, h, w)`` gradients."""
        weights = cls.cam_weights(acts, grads)[:, :, None, None]
        cam = F.relu((weights * acts).sum(1, keepdim=True))
        return _normalise(stride_aligned_upsampler(size)(cam))[:, 0]

    def __call__(
        self, images: torch.Tensor | np.ndarray, outputs: Sequence[int] | None = None
    ) -> np.ndarray:
        """Maps of each output, from one forward pass.

        Args:
            images: ``(B, C, S, S)`` or ``(C, S, S)``.
            outputs: logits to explain; all by default.

        Returns:
            ``(B, len(outputs), S, S)`` float32 in [0, 1], each map's maximum 1 (a map with no
            positive evidence is all zeros).
        """
        return cam_maps(
            self.model,
            images,
            methods=[self.name],
            target_layer=self.target_layer,
            outputs=outputs,
        )[self.name]


def register_cam(name: str) -> Callable[[type[BaseCAM]], type[BaseCAM]]:
    """Class decorator: add a :class:`BaseCAM` subclass to :data:`CAM_REGISTRY` under ``name``.

    Raises:
        ValueError: ``name`` is taken.
    """

    def add(cls: type[BaseCAM]) -> type[BaseCAM]:
        if name in CAM_REGISTRY:
            raise ValueError(f"CAM method {name!r} is already registered ({CAM_REGISTRY[name]})")
        cls.name = name
        CAM_REGISTRY[name] = cls
        return cls

    return add


@register_cam("gradcam")
class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al. 2017): each channel weighted by its mean gradient."""

    @staticmethod
    def cam_weights(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.mean(dim=(2, 3))


@register_cam("gradcam++")
class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ (Chattopadhyay et al. 2018, Eq. 19, exponential score).

    With ``g = d(logit)/dA``: ``alpha_ij = g_ij^2 / (2 g_ij^2 + sum_ab A_ab g_ij^3)`` (0 where the
    denominator is 0) and ``w = sum_ij alpha_ij relu(g_ij)``. The ``exp(logit)`` factor of the
    paper's score cancels in ``alpha`` and is a positive constant in ``w``, so it is left out: the
    maps do not depend on the logit's magnitude (no overflow).
    """

    @staticmethod
    def cam_weights(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        g2 = grads.square()
        denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g2 * grads
        alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, 1.0), 0.0)
        return (alpha * F.relu(grads)).sum(dim=(2, 3))


def cam_methods() -> tuple[str, ...]:
    """Names of the registered CAM methods."""
    return tuple(CAM_REGISTRY)


def check_methods(methods: Sequence[str], key: str = "report.methods") -> list[str]:
    """``methods`` as a list, each a registered method.

    Raises:
        ValueError: an unknown method (quoted, with ``key`` and the known ones).
    """
    if isinstance(methods, str):
        methods = [methods]
    for m in methods:
        if m not in CAM_REGISTRY:
            raise ValueError(f"{key}: unknown CAM method {m!r}; known: {sorted(CAM_REGISTRY)}")
    return list(methods)


class Explanation(NamedTuple):
    """Scores and maps of one batch from one forward pass (:func:`explain`)."""

    logits: np.ndarray  #: ``(B, K)`` float32: the pass's logits, every output
    outputs: list[int]  #: the outputs explained, in the order of the maps' second axis
    maps: dict[str, np.ndarray]  #: method -> ``(B, len(outputs), S, S)`` float32 in [0, 1]


def explain(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    *,
    methods: Sequence[str],
    target_layer: str = "layer4",
    outputs: OutputChoice = None,
) -> Explanation:
    """Logits and the maps of several methods and outputs, from ONE forward pass.

    Args:
        model: as for :class:`BaseCAM`.
        images: ``(B, C, S, S)`` or ``(C, S, S)``.
        methods: registered method names.
        target_layer: dotted module name.
        outputs: as for :func:`explaining_pass` (all by default).

    Raises:
        ValueError: an unknown method, or see :func:`explaining_pass`.
    """
    classes = [CAM_REGISTRY[m] for m in check_methods(methods, key="method")]
    logits, chosen, acts, grads = explaining_pass(model, images, target_layer, outputs)
    size = tuple(torch.as_tensor(images).shape[-2:])
    maps = {
        cls.name: torch.stack([cls.maps(acts, g, size) for g in grads], dim=1)
        .detach().float().cpu().numpy()
        for cls in classes
    }  # fmt: skip
    log.debug("computed %s maps of %d outputs for %d images", methods, len(grads), len(acts))
    return Explanation(logits.float().cpu().numpy(), chosen, maps)


def cam_maps(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    *,
    methods: Sequence[str],
    target_layer: str = "layer4",
    outputs: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Maps of several methods and outputs from ONE forward pass (:func:`explain`'s maps).

    Returns:
        method -> ``(B, len(outputs), S, S)`` float32 in [0, 1].

    Raises:
        ValueError: an unknown method, or see :func:`explaining_pass`.
    """
    return explain(model, images, methods=methods, target_layer=target_layer, outputs=outputs).maps


def compute_cams(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    *,
    output_index: int = 0,
    method: str = "gradcam",
    target_layer: str = "layer4",
) -> np.ndarray:
    """Class activation maps of one output, upsampled to the input size and scaled to [0, 1].

    A thin wrapper over :func:`cam_maps`; see there and :func:`activations_and_gradients`.

    Args:
        model: maps ``(B, C, S, S)`` images to ``(B, K)`` logits.
        images: ``(B, C, S, S)`` or ``(C, S, S)``.
        output_index: which logit (finding) the map explains, in ``[0, K)``.
        method: a registered method (:data:`CAM_REGISTRY`): ``"gradcam"``, ``"gradcam++"``.
        target_layer: dotted name of the module whose activations are used.

    Returns:
        ``(B, S, S)`` float32 array in [0, 1].

    Raises:
        ValueError: unknown ``method``, bad ``images`` shape, ``output_index`` out of range or
            ``target_layer`` not found.
    """
    if method not in CAM_REGISTRY:
        raise ValueError(f"method must be one of {cam_methods()}, got {method!r}")
    maps = cam_maps(
        model, images, methods=[method], target_layer=target_layer, outputs=[output_index]
    )
    return maps[method][:, 0]


class TopFindingCams(NamedTuple):
    """Each image's map of its most probable finding, with the pass's logits."""

    maps: np.ndarray  #: ``(B, S, S)`` float32 in [0, 1]
    explained: np.ndarray  #: ``(B,)`` the output each map explains (0 for a binary model)
    logits: np.ndarray  #: ``(B, K)`` float32 logits of the same forward pass


def top_finding_cams(
    model: nn.Module,
    images: torch.Tensor,
    *,
    method: str = "gradcam",
    target_layer: str = "layer4",
) -> TopFindingCams:
    """Per image, the map of the output (finding) with the highest probability; one forward pass.

    With one output (binary) this is :func:`compute_cams` of output 0. With several, each image's
    map explains its most probable finding, chosen from the logits of the same pass, and only the
    outputs needed get a gradient.
    """
    res = explain(
        model,
        images,
        methods=[method],
        target_layer=target_layer,
        outputs=lambda logits: sorted(set(logits.argmax(dim=1).tolist())),  # sigmoid: monotonic
    )
    explained = res.logits.argmax(axis=1)  # the same choice, on the same logits
    column = np.searchsorted(res.outputs, explained)
    maps = res.maps[method][np.arange(len(explained)), column]
    return TopFindingCams(maps, explained, res.logits)


#: The registered method names (kept for callers that import the tuple).
CAM_METHODS = cam_methods()
