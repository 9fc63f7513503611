"""The checks every inversion request's arguments get before any work, as one-line FastinvErrors: the API,
the CLI, a z_T file's metadata and the service's requests share them. Pure Python: no torch."""

from __future__ import annotations

import math
import re
from typing import Any

from fastinv.errors import FastinvError

MAX_STEPS = 10_000
DTYPE_NAMES = ("fp32", "bf16", "fp16")
"""The networks' precisions, by the names options and exported graphs use (`fastinv.device.DTYPES`)."""
KERNEL_BACKENDS = ("auto", "torch")
"""The step kernels' backends (`fastinv.kernels`): auto runs Triton on CUDA tensors, torch the references."""
DEVICE_NAME = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def shown(value: Any, limit: int = 40) -> str:
    """`repr(value)` for an error message, cut to `limit` characters: a request may send megabytes."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def is_int(value: Any) -> bool:
    """An int that is not a bool (JSON true/false are not sizes)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """An int or float, not a bool, neither NaN nor ±inf."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_request(
    *, steps: Any = 1, prompt: Any = "", guidance: Any = 1.0, embedded_guidance: Any = None
) -> None:
    """One-line errors, before any work, for the arguments every inversion takes: steps an integer in
    [1, MAX_STEPS], prompt a string, guidance a finite number >= 0, embedded guidance None or the same."""
    if not is_int(steps):
        raise FastinvError(f"steps must be an integer in [1, {MAX_STEPS}], got {shown(steps)}")
    if not 1 <= steps <= MAX_STEPS:
        raise FastinvError(f"steps must be at least 1 and at most {MAX_STEPS}, got {shown(steps)}")
    if not isinstance(prompt, str):
        raise FastinvError(f"prompt must be a string, got {type(prompt).__name__}")
    if not is_finite_number(guidance) or guidance < 0:
        raise FastinvError(f"guidance must be a finite number >= 0, got {shown(guidance)}")
    if embedded_guidance is not None and (not is_finite_number(embedded_guidance) or embedded_guidance < 0):
        raise FastinvError(f"embedded guidance must be a finite number >= 0, got {shown(embedded_guidance)}")


def check_run_names(device: Any, dtype: Any, kernels: Any) -> None:
    """One-line errors, without torch, for a device, dtype or kernel backend name that no machine runs: what
    a Ray driver checks before its workers load the model (whether a worker has that GPU is its to say)."""
    if not isinstance(device, str) or not DEVICE_NAME.fullmatch(device):
        raise FastinvError(f"unknown device {shown(device)}: use cpu, cuda, cuda:N or auto")
    if dtype not in ("auto", *DTYPE_NAMES):
        raise FastinvError(f"unknown dtype {shown(dtype)}: use auto, {', '.join(DTYPE_NAMES)}")
    if kernels not in KERNEL_BACKENDS:
        raise FastinvError(f"unknown kernel backend {shown(kernels)}: use {' or '.join(KERNEL_BACKENDS)}")
