"""Export a trained network for inference outside chestxr: TorchScript, ONNX, and a model card.

TorchScript needs nothing beyond torch (torch 2.13 marks ``torch.jit`` deprecated in favour of
``torch.export``, but still supports it). ONNX needs the optional ``onnx`` package (torch's
TorchScript-based exporter; ``dynamo=True`` needs ``onnxscript`` too); running the exported file
needs ``onnxruntime``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
TRACE_TOLERANCE = 1e-4  # max abs difference allowed between traced and eager outputs


@contextlib.contextmanager
def _eval_mode(net: nn.Module) -> Iterator[nn.Module]:
    """Put ``net`` in eval mode and restore its previous mode afterwards."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


def _temp_beside(path: Path) -> Path:
    """A fresh temporary file name in ``path``'s folder (so a rename onto ``path`` is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would carry over to the final file
    return Path(tmp)


def export_torchscript(net: nn.Module, example: Tensor, path: str | Path) -> Path:
    """Trace ``net`` in eval mode on ``example`` and save it with ``torch.jit.save``.

    Args:
        net: the network; its train/eval mode is restored afterwards.
        example: an input batch ``(B, C, H, W)``; the traced graph accepts other batch sizes and
            image sizes because ResNet has no size-dependent Python control flow.
        path: the ``.pt`` file to write (replaced atomically if present).

    Returns:
        ``path``.

    Raises:
        RuntimeError: the traced network's output on ``example`` differs from the eager one.
    """
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        with _eval_mode(net), torch.no_grad():
            # check_trace re-traces (6 s for ResNet-18 here); comparing outputs once is the check
            traced = torch.jit.trace(net, example, check_trace=False)
            gap = (traced(example) - net(example)).abs().max().item()
            if not gap <= TRACE_TOLERANCE:
                raise RuntimeError(f"traced network differs from eager by {gap:g} on the example")
            torch.jit.save(traced, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_onnx(
    net: nn.Module, example: Tensor, path: str | Path, *, opset: int = 17, dynamo: bool = False
) -> Path:
    """Export ``net`` in eval mode to ONNX, input ``image`` and output ``logits``, batch dynamic.

    Args:
        net: the network; its train/eval mode is restored afterwards.
        example: an input batch ``(B, C, H, W)``.
        path: the ``.onnx`` file to write (replaced atomically if present).
        opset: ONNX opset version.
        dynamo: use torch's ``torch.export``-based exporter (needs ``onnxscript`` as well) instead
            of the TorchScript-based one, which torch deprecates but which needs only ``onnx``.

    Returns:
        ``path``.

    Raises:
        ModuleNotFoundError: ``onnx`` (or, with ``dynamo``, ``onnxscript``) is not installed.
    """
    for package in ("onnx", "onnxscript") if dynamo else ("onnx",):
        if importlib.util.find_spec(package) is None:
            raise ModuleNotFoundError(
                f"ONNX export needs the {package!r} package (pip install {package}; "
                "onnxruntime to run the file)",
                name=package,
            )
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        with _eval_mode(net), torch.no_grad():
            torch.onnx.export(
                net,
                (example,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                dynamo=dynamo,
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _jsonable(value: Any) -> Any:
    """``value`` with paths as strings, tensors/arrays as lists, non-finite floats as ``None``."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy and torch scalars/arrays
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"model card value {value!r} of type {type(value).__name__} is not JSON-able")


def write_model_card(path: str | Path, card: dict[str, Any]) -> Path:
    """Write ``card`` as indented JSON, atomically, refusing to overwrite an existing file.

    Paths become strings, numpy/torch values lists or numbers, and NaN/inf ``null`` (JSON has no
    NaN; chestxr reports NaN for labels a source lacks).

    Args:
        path: the ``.json`` file to create.
        card: what to record (metrics, normalisation, labels, data and code versions...).

    Returns:
        ``path``.

    Raises:
        FileExistsError: ``path`` exists.
        TypeError: a value cannot be written as JSON.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"model card already exists, not overwriting: {path}")
    text = json.dumps(_jsonable(card), indent=2, sort_keys=True, allow_nan=False) + "\n"
    tmp = _temp_beside(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        try:
            os.link(tmp, path)  # atomic and fails if path appeared meanwhile
        except FileExistsError:
            raise FileExistsError(f"model card already exists, not overwriting: {path}") from None
        except OSError:  # file systems without hard links
            if path.exists():
                raise FileExistsError(
                    f"model card already exists, not overwriting: {path}"
                ) from None
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
