"""The one device and mixed-precision policy of training, evaluation, fine-tuning and prediction.

``auto`` picks CUDA when PyTorch sees a GPU, else the CPU; ``cuda`` without a GPU is a one-line error. On CUDA
with ``amp``, autocast runs in bf16 where the GPU supports it, else fp16 (training then scales gradients); on
the CPU everything runs in full precision.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from glacierflow.choices import DEVICES
from glacierflow.errors import GlacierflowError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` requested but absent -> one-line error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise GlacierflowError("--device cuda requested but PyTorch sees no CUDA GPU; use --device cpu or auto")
    if name not in DEVICES:
        raise GlacierflowError(f"unknown --device {name!r}; choose one of: {', '.join(DEVICES)}")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def autocast_dtype(device: torch.device, amp: bool = True) -> torch.dtype | None:
    """bf16 on CUDA where supported, else fp16 (with a gradient scaler); None (full precision) on CPU."""
    if device.type != "cuda" or not amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """The autocast context of ``dtype`` on ``device`` (a no-op context for full precision)."""
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()
