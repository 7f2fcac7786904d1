"""Export a trained network for inference outside chestxr: TorchScript, ONNX, and a model card.

TorchScript needs nothing beyond torch (torch 2.13 marks ``torch.jit`` deprecated in favour of
``torch.export``, but still supports it). ONNX needs the optional ``onnx`` package (torch's
TorchScript-based exporter; ``dynamo=True`` needs ``onnxscript`` too); running the exported file
needs ``onnxruntime``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from chestxr.utils.files import atomic_write, atomic_write_json

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
    with _eval_mode(net), torch.no_grad():
        # check_trace re-traces (6 s for ResNet-18 here); comparing outputs once is the check
        traced = torch.jit.trace(net, example, check_trace=False)
        gap = (traced(example) - net(example)).abs().max().item()
        if not gap <= TRACE_TOLERANCE:
            raise RuntimeError(f"traced network differs from eager by {gap:g} on the example")
        return atomic_write(path, lambda tmp: torch.jit.save(traced, str(tmp)), overwrite=True)


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
        RuntimeError: ``dynamo`` with a torch older than 2.5, which lacks that exporter's switch.
    """
    exporter = _exporter_choice(dynamo)
    for package in ("onnx", "onnxscript") if dynamo else ("onnx",):
        if importlib.util.find_spec(package) is None:
            raise ModuleNotFoundError(
                f"ONNX export needs the {package!r} package (pip install {package}; "
                "onnxruntime to run the file)",
                name=package,
            )

    def write(tmp: Path) -> None:
        torch.onnx.export(
            net,
            (example,),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            **exporter,
        )

    with _eval_mode(net), torch.no_grad():
        return atomic_write(path, write, overwrite=True)


def _exporter_choice(dynamo: bool) -> dict[str, bool]:
    """``torch.onnx.export``'s exporter switch: ``dynamo=`` exists from torch 2.5 (and defaults
    to True from 2.9, so it is always passed where it exists); older torch has the
    TorchScript-based exporter alone."""
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        return {"dynamo": dynamo}
    if dynamo:
        raise RuntimeError(
            f"the torch.export-based ONNX exporter (dynamo=True) needs torch >= 2.5, not "
            f"{torch.__version__}; export with dynamo=False (the TorchScript-based exporter)"
        )
    return {}


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
    return atomic_write_json(path, card, sort_keys=True)
