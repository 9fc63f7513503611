"""Device and dtype choice, with one-line errors for what this machine cannot do."""

from __future__ import annotations

import torch

from fastinv.errors import FastinvError
from fastinv.request_checks import DTYPE_NAMES

DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.bfloat16, torch.float16), strict=True))


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" → cuda when available, else cpu; asking for cuda without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise FastinvError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FastinvError(f"device {name!r} asked for, but torch {torch.__version__} sees no CUDA GPU")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise FastinvError(f"device {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist")
    if device.type not in ("cpu", "cuda"):
        raise FastinvError(f"device {name!r} is not supported: use cpu, cuda, cuda:N or auto")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """ "auto" → bf16 on GPU, fp32 on CPU; otherwise fp32 | bf16 | fp16 (fp16 runs with overflow checks)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise FastinvError(f"unknown dtype {name!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def precision_name(dtype: torch.dtype) -> str:
    """torch.float32 → "fp32" (bf16, fp16): the name exported graphs and engines are filed under."""
    names = {value: name for name, value in DTYPES.items()}
    if dtype not in names:
        raise FastinvError(f"no exported precision runs {dtype}: use {', '.join(DTYPES)}")
    return names[dtype]
