"""Pick the fastest correct numeric precision for the machine at hand."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX).

    Without them, bf16 autocast is emulated and much slower than fp32 (measured here: 15x).
    """
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(f in flags for f in _BF16_CPU_FLAGS)


def best_precision(accelerator: str = "auto") -> str:
    """Lightning precision string: bf16 where supported natively, fp16 on older GPUs, else fp32."""
    use_cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if use_cuda:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_supports_bf16() else "32-true"


def resolve_precision(precision: str | int | None, accelerator: str = "auto") -> str | int:
    """Replace ``auto`` (or None) by :func:`best_precision`, logging the choice."""
    if precision in (None, "auto"):
        chosen = best_precision(accelerator)
        log.info(
            "precision auto -> %s (cpu bf16: %s, cuda: %s)",
            chosen,
            cpu_supports_bf16(),
            torch.cuda.is_available(),
        )
        return chosen
    return precision


def autocast(device: torch.device, precision: str | int) -> contextlib.AbstractContextManager:
    """Autocast context matching a Lightning precision string, for inference outside a Trainer."""
    p = str(precision)
    if p.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if p.startswith("16") and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def inference_device() -> torch.device:
    """The first CUDA device when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
