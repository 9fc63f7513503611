"""Inversion methods, k-diffusion style: `invert_<name>(model, x0, sigmas, cond, ...)`, and their registry."""

from __future__ import annotations

from fastinv.errors import FastinvError
from fastinv.methods.base import InversionMethod, InversionResult, NFECounter, StepCallback
from fastinv.methods.euler import invert_euler

METHODS: dict[str, InversionMethod] = {"euler": invert_euler}


def get_method(name: str) -> InversionMethod:
    """The method registered under `name` (the CLI's --method)."""
    if name not in METHODS:
        raise FastinvError(f"unknown method {name!r} (available: {', '.join(METHODS)})")
    return METHODS[name]


__all__ = [
    "METHODS",
    "InversionMethod",
    "InversionResult",
    "NFECounter",
    "StepCallback",
    "get_method",
    "invert_euler",
]
