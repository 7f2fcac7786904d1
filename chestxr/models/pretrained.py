"""ImageNet initialisation of the one-channel ResNet-18, and re-use of chestxr checkpoints.

torchvision's ``resnet18`` weights load into :func:`chestxr.models.resnet.build_resnet18` with two
tensors adapted: the RGB stem ``conv1.weight`` is folded to one channel and ``fc.*`` is dropped when
the class count differs. No torchvision is needed: the state dict comes through ``torch.hub``.

How the stem is folded, and which normalisation goes with it
--------------------------------------------------------------
The RGB network sees a grey image ``g`` (values in [0, 1]) as three channels normalised per channel,
``x_c = (g - mu_c) / sigma_c``, and its stem computes ``sum_c w_c * x_c`` (``*``: convolution with
zero padding). The one-channel network sees ``x = (g - m) / s`` and computes ``w' * x``. With

* ``w' = s * sum_c w_c / sigma_c`` (:func:`fold_rgb_stem` with ``rgb_std``),
* ``s = 1 / mean_c(1 / sigma_c)`` (harmonic mean of the stds, so the weights ``s / sigma_c`` average
  to 1 and ``w'`` stays timm's plain sum up to a +-1 % reweighting), and
* ``m = sum_c(mu_c / sigma_c) / sum_c(1 / sigma_c)`` (the ``1/sigma``-weighted mean of the means),

both stems give ``sum_c w_c (g - mu_c) / sigma_c`` up to ``sum_c w_c (m - mu_c) / sigma_c``, a
term that vanishes for the grey (channel-common) part of each filter and involves only its
colour-opponent part. Consequences, each tested in ``tests/test_pretrained.py``:

* the gain on ``g`` is exact for every filter;
* filters that are equal over R, G and B give exactly the RGB output, borders included;
* away from the image border the colour residual is a constant per filter, which
  :func:`init_from_imagenet` folds into ``bn1.running_mean``: in eval mode the one-channel stem then
  equals the RGB stem on the per-channel normalised grey image at every output whose 7x7 window lies
  inside the image;
* at the outer two rows and columns of the stem output (windows that overhang the zero padding)
  the colour residual of the padded taps remains. No scalar normalisation can remove it: the RGB
  net pads with the per-channel means, a colour a grey image cannot carry.

For ImageNet, ``(m, s) = (0.4488, 0.2260)``, within 0.001 of the naive mean of means and mean of
stds. With ``rgb_stats=None`` the stem is timm's plain sum, and the one-channel net on any ``x``
equals the RGB net on ``x`` repeated over RGB, exactly.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from chestxr.utils.checkpoints import refused_message

logger = logging.getLogger(__name__)

IMAGENET_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
IMAGENET_RGB_MEAN = (0.485, 0.456, 0.406)
IMAGENET_RGB_STD = (0.229, 0.224, 0.225)

STEM_KEY = "conv1.weight"
STEM_BN_MEAN_KEY = "bn1.running_mean"
HEAD_KEYS = ("fc.weight", "fc.bias")
CHECKPOINT_PREFIX = "net."

RgbStats = tuple[Sequence[float], Sequence[float]]  # (per-channel mean, per-channel std)


def grey_normalisation(
    mean: Sequence[float] = IMAGENET_RGB_MEAN, std: Sequence[float] = IMAGENET_RGB_STD
) -> tuple[float, float]:
    """Scalar mean and std for the grey channel that go with the normalisation-aware stem fold.

    ``s = 1 / mean_c(1 / std_c)`` and ``m = sum_c(mean_c / std_c) / sum_c(1 / std_c)``; see the
    module docstring for why these make the folded stem match the RGB stem on per-channel
    normalised input.

    Args:
        mean: per-channel means of the pretrained network's inputs.
        std: per-channel stds, all positive.

    Returns:
        ``(m, s)``: normalise the grey image as ``(image - m) / s``.

    Raises:
        ValueError: lengths differ, are zero, or a std is not a positive finite number.
    """
    if len(mean) != len(std) or len(mean) == 0:
        raise ValueError(f"mean and std need the same non-zero length, got {mean!r} and {std!r}")
    if not all(math.isfinite(v) and v > 0 for v in std) or not all(math.isfinite(v) for v in mean):
        raise ValueError(f"std must be positive and finite, mean finite; got {mean!r}, {std!r}")
    inv = [1.0 / v for v in std]
    s = len(inv) / sum(inv)
    m = sum(mu * i for mu, i in zip(mean, inv, strict=True)) / sum(inv)
    return m, s


def hub_checkpoint_path() -> Path:
    """Where ``torch.hub`` keeps (and :func:`load_imagenet_state_dict` looks for) the weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_URL.rsplit("/", 1)[-1]


def read_state_file(path: str | Path) -> tuple[object, str]:
    """Load a weights file with ``weights_only=True``, reading it once; returns it and its sha256.

    Raises:
        FileNotFoundError: no file at ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    data = path.read_bytes()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(refused_message(path)) from None
    return state, hashlib.sha256(data).hexdigest()


def load_imagenet_weights(
    source: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    online: bool = True,
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """torchvision's ImageNet ResNet-18 state dict and a record of where it came from.

    The file is read once; the record (``kind``, ``path``, ``sha256``) goes into the model's
    hyperparameters so a checkpoint says what it started from without needing the file again.

    Args:
        source: a local ``.pth`` file; ``None`` looks in ``cache_dir`` (default: the torch hub
            cache, ``torch.hub.get_dir()/checkpoints``) and downloads there when ``online``.
        cache_dir: folder holding ``resnet18-f37072fd.pth`` instead of the hub cache.
        online: allow the download when the file is not cached.

    Returns:
        ``(state_dict, record)``; the state dict on CPU, loaded with ``weights_only=True``.

    Raises:
        FileNotFoundError: ``source`` does not exist, or the file is not cached and ``online`` is
            false; the message says where to put the file.
        ConnectionError: the download failed.
        ValueError: the file does not hold a state dict of tensors.
    """
    if source is not None:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"ImageNet weights file not found: {path}")
    else:
        path = (
            Path(cache_dir) / IMAGENET_URL.rsplit("/", 1)[-1]
            if cache_dir is not None
            else hub_checkpoint_path()
        )
        hint = f"download {IMAGENET_URL} to {path}, or set model.pretrained=false (from scratch)"
        if not path.is_file():
            if not online:
                raise FileNotFoundError(
                    f"ImageNet weights not cached at {path} and offline: {hint}"
                )
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                prefix = IMAGENET_URL.rsplit("-", 1)[-1].split(".")[0]
                torch.hub.download_url_to_file(IMAGENET_URL, str(path), hash_prefix=prefix)
            except OSError as err:  # URLError and socket errors are OSErrors
                raise ConnectionError(f"ImageNet weights download failed ({err}): {hint}") from err
    state, digest = read_state_file(path)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        kind = type(state).__name__
        raise ValueError(f"{path} does not hold a state dict of tensors (got a {kind})")
    logger.info("ImageNet ResNet-18 weights loaded from %s (sha256 %s)", path, digest[:12])
    return dict(state), {"kind": "imagenet", "path": str(path), "sha256": digest}


def load_imagenet_state_dict(
    source: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    online: bool = True,
) -> dict[str, Tensor]:
    """torchvision's ImageNet ResNet-18 state dict; :func:`load_imagenet_weights` without record."""
    return load_imagenet_weights(source, cache_dir=cache_dir, online=online)[0]


def fold_rgb_stem(
    weight: Tensor, in_channels: int = 1, *, rgb_std: Sequence[float] | None = None
) -> Tensor:
    """Adapt an RGB stem filter bank ``(out, 3, kh, kw)`` to ``in_channels`` inputs.

    As timm's ``adapt_input_conv``: one channel sums the RGB filters; three keep them; any other
    count tiles the RGB filters and scales by ``3 / in_channels``. With ``rgb_std`` (one channel
    only) the sum is weighted by ``s / std_c`` with ``s`` from :func:`grey_normalisation`, which
    makes the gain exact for inputs normalised by that ``s`` (module docstring).

    Args:
        weight: the pretrained stem weight.
        in_channels: channels of the target network.
        rgb_std: per-channel stds the pretrained network was trained with, or ``None``.

    Returns:
        The adapted weight, same dtype as ``weight``.

    Raises:
        ValueError: ``weight`` is not 4-D with 3 input channels, ``in_channels < 1``, or ``rgb_std``
            is given for ``in_channels != 1`` or has the wrong length.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected an RGB stem weight (out, 3, kh, kw), got {tuple(weight.shape)}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if rgb_std is not None:
        if in_channels != 1:
            raise ValueError(f"rgb_std is for a one-channel fold, got in_channels={in_channels}")
        if len(rgb_std) != 3:
            raise ValueError(f"rgb_std needs 3 values, got {rgb_std!r}")
    w = weight.double()
    if in_channels == 1:
        if rgb_std is None:
            folded = w.sum(dim=1, keepdim=True)
        else:
            _, s = grey_normalisation(mean=(0.0, 0.0, 0.0), std=rgb_std)
            scale = torch.tensor([s / v for v in rgb_std], dtype=torch.float64)
            folded = (w * scale.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    elif in_channels == 3:
        folded = w
    else:
        repeats = math.ceil(in_channels / 3)
        folded = w.repeat(1, repeats, 1, 1)[:, :in_channels] * (3.0 / in_channels)
    return folded.to(weight.dtype)


def _stem_offset(weight: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Per-filter constant ``sum_{c,taps} w_c (m - mean_c) / std_c``: RGB stem minus folded stem."""
    m, _ = grey_normalisation(mean, std)
    coef = torch.tensor([(m - mu) / sd for mu, sd in zip(mean, std, strict=True)])
    return (weight.double() * coef.view(1, 3, 1, 1).double()).sum(dim=(1, 2, 3))


def _load_strict(
    net: nn.Module,
    source: Mapping[str, Tensor],
    *,
    adapted: dict[str, Tensor],
    origin: str,
) -> dict[str, object]:
    """Load ``source`` (with ``adapted`` replacements) into ``net``; only ``fc.*`` may be dropped.

    Raises:
        ValueError: keys missing, unexpected, or with the wrong shape, other than a head whose
            shape differs; the message lists every such key.
    """
    target = net.state_dict()
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    dropped: list[str] = []
    mismatched: list[str] = []
    merged: dict[str, Tensor] = {}
    for key, value in source.items():
        if key not in target:
            continue
        value = adapted.get(key, value)
        if value.shape == target[key].shape:
            merged[key] = value
        elif key in HEAD_KEYS:
            dropped.append(key)
        else:
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(target[key].shape)}")
    if dropped and len(dropped) != len(HEAD_KEYS):
        mismatched.extend(f"{key} (head only partly mismatched)" for key in dropped)
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{origin} does not fit the network: missing {missing}, unexpected {unexpected}, "
            f"shape mismatch {mismatched}"
        )
    state = dict(target)
    state.update(merged)
    net.load_state_dict(state, strict=True)
    report: dict[str, object] = {
        "adapted": sorted(k for k in adapted if k in merged),
        "dropped": sorted(dropped),
        "loaded": len(merged),
    }
    logger.info(
        "Initialised from %s: %d tensors loaded, adapted %s, dropped %s (freshly initialised)",
        origin,
        len(merged),
        report["adapted"] or "none",
        report["dropped"] or "none",
    )
    return report


def init_from_imagenet(
    net: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    num_outputs: int,
    rgb_stats: RgbStats | None = (IMAGENET_RGB_MEAN, IMAGENET_RGB_STD),
) -> dict[str, object]:
    """Copy torchvision ResNet-18 weights into ``net`` (from :func:`build_resnet18`), in place.

    The stem is folded to ``net``'s input channels; for one channel with ``rgb_stats`` the fold is
    normalisation-aware and the residual per-filter offset goes into ``bn1.running_mean`` (module
    docstring; feed the net ``(image - m) / s`` with ``(m, s) = grey_normalisation(*rgb_stats)``).
    ``fc.*`` is dropped (left as initialised) when its shape differs and loaded when equal. Every
    other tensor must match exactly.

    Args:
        net: the network to initialise.
        state_dict: torchvision's ``resnet18`` state dict (:func:`load_imagenet_state_dict`).
        num_outputs: the network's output count, checked against ``net.fc``.
        rgb_stats: ``(mean, std)`` the weights were trained with, or ``None`` for timm's plain sum.

    Returns:
        ``{"adapted": [keys], "dropped": [keys], "loaded": number of tensors written}``.

    Raises:
        ValueError: ``num_outputs`` disagrees with ``net.fc``, or keys do not match (listed).
    """
    _check_outputs(net, num_outputs)
    adapted: dict[str, Tensor] = {}
    stem = state_dict.get(STEM_KEY)
    in_channels = net.state_dict()[STEM_KEY].shape[1] if STEM_KEY in net.state_dict() else None
    if stem is not None and in_channels is not None and in_channels != stem.shape[1]:
        rgb_std = rgb_stats[1] if rgb_stats is not None and in_channels == 1 else None
        adapted[STEM_KEY] = fold_rgb_stem(stem, in_channels, rgb_std=rgb_std)
        if rgb_std is not None and STEM_BN_MEAN_KEY in state_dict:
            offset = _stem_offset(stem, *rgb_stats)
            running_mean = state_dict[STEM_BN_MEAN_KEY]
            adapted[STEM_BN_MEAN_KEY] = (running_mean.double() - offset).to(running_mean.dtype)
    return _load_strict(net, state_dict, adapted=adapted, origin="ImageNet ResNet-18")


def init_from_checkpoint(
    net: nn.Module,
    ckpt_path: str | Path,
    *,
    num_outputs: int,
    normalization: Mapping[str, float] | None = None,
    preprocess: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """Copy the network of a chestxr Lightning checkpoint into ``net``, in place.

    The checkpoint's ``state_dict`` keys under ``net.`` are the network; keys outside it (losses,
    metrics) are listed in the log and not loaded. The backbone must match exactly; the head is
    replaced (left as initialised) when the output count differs.

    Args:
        net: the network to initialise.
        ckpt_path: a ``.ckpt`` written by Lightning from a chestxr module.
        num_outputs: the network's output count, checked against ``net.fc``.
        normalization: the classifier's ``mean``/``std``; a pretrained backbone's recorded
            normalisation must equal it (its features were learnt on images so normalised).
        preprocess: the classifier's preprocessing; a difference from a pretrained backbone's
            recorded ``image_size``, ``voi`` or ``resize`` is logged as a warning.

    Returns:
        ``{"adapted": [], "dropped": [keys], "loaded": number of tensors written, "source":
        {"kind": "chestxr_checkpoint", "path", "sha256"}}`` (the file is read once).

    Raises:
        FileNotFoundError: no file at ``ckpt_path``.
        ValueError: not a Lightning checkpoint, no ``net.`` keys, keys do not match (listed), or
            a pretrained backbone's normalisation differs from ``normalization``.
    """
    _check_outputs(net, num_outputs)
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt, digest = read_state_file(path)
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict' mapping)")
    record = ckpt.get("chestxr")
    if isinstance(record, Mapping) and record.get("kind") == "pretrained_backbone":
        _check_pretraining_match(path, record, normalization, preprocess)
    full = ckpt["state_dict"]
    source = {
        k[len(CHECKPOINT_PREFIX) :]: v for k, v in full.items() if k.startswith(CHECKPOINT_PREFIX)
    }
    if not source:
        raise ValueError(f"{path} has no keys under {CHECKPOINT_PREFIX!r}: {sorted(full)[:5]}...")
    other = sorted(k for k in full if not k.startswith(CHECKPOINT_PREFIX))
    if other:
        logger.info("Checkpoint keys outside %r not loaded: %s", CHECKPOINT_PREFIX, other)
    report = _load_strict(net, source, adapted={}, origin=f"checkpoint {path.name}")
    report["source"] = {"kind": "chestxr_checkpoint", "path": str(path), "sha256": digest}
    return report


PREPROCESS_COMPARED = ("image_size", "voi", "resize")


def _check_pretraining_match(
    path: Path,
    record: Mapping[str, object],
    normalization: Mapping[str, float] | None,
    preprocess: Mapping[str, object] | None,
) -> None:
    """A pretrained backbone fits the classifier: same normalisation (else ValueError), and
    a warning for each preprocessing setting that differs."""
    recorded = record.get("normalization")
    if normalization is not None and isinstance(recorded, Mapping):
        mine = {k: float(normalization[k]) for k in ("mean", "std")}
        theirs = {k: float(recorded[k]) for k in ("mean", "std")}
        if any(not math.isclose(mine[k], theirs[k], rel_tol=1e-6) for k in mine):
            raise ValueError(
                f"{path} was pretrained on images normalised with {theirs}, but the classifier "
                f"normalises with {mine}: set model.normalization to the pretraining's"
            )
    recorded_pre = record.get("preprocess")
    if preprocess is not None and isinstance(recorded_pre, Mapping):
        for key in PREPROCESS_COMPARED:
            if key in recorded_pre and key in preprocess and recorded_pre[key] != preprocess[key]:
                logger.warning(
                    "%s was pretrained with preprocess.%s=%r, the classifier uses %r: its "
                    "features may transfer less well",
                    path,
                    key,
                    recorded_pre[key],
                    preprocess[key],
                )


def _check_outputs(net: nn.Module, num_outputs: int) -> None:
    fc = getattr(net, "fc", None)
    if not isinstance(fc, nn.Linear):
        raise ValueError(f"expected a network with an nn.Linear head 'fc', got {type(fc).__name__}")
    if fc.out_features != num_outputs:
        raise ValueError(f"num_outputs={num_outputs} but net.fc has {fc.out_features} outputs")
