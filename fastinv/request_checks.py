"""The checks every inversion request's arguments get before any work, as one-line FastinvErrors: the API,
the CLI, a z_T file's metadata and the service's requests share them. Pure Python: no torch."""

from __future__ import annotations

import math
from typing import Any

from fastinv.errors import FastinvError

MAX_STEPS = 10_000


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
        raise FastinvError(f"steps must be an integer in [1, {MAX_STEPS}], got {steps!r}")
    if not 1 <= steps <= MAX_STEPS:
        raise FastinvError(f"steps must be at least 1 and at most {MAX_STEPS}, got {steps}")
    if not isinstance(prompt, str):
        raise FastinvError(f"prompt must be a string, got {type(prompt).__name__}")
    if not is_finite_number(guidance) or guidance < 0:
        raise FastinvError(f"guidance must be a finite number >= 0, got {guidance!r}")
    if embedded_guidance is not None and (not is_finite_number(embedded_guidance) or embedded_guidance < 0):
        raise FastinvError(f"embedded guidance must be a finite number >= 0, got {embedded_guidance!r}")
