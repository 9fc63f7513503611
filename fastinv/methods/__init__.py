"""Inversion methods, k-diffusion style: `invert_<name>(model, x0, sigmas, cond, ...)`, and their registry."""

from __future__ import annotations

import inspect
import json
from typing import Any

from fastinv.errors import FastinvError
from fastinv.methods.base import InversionMethod, InversionResult, NFECounter, StepCallback
from fastinv.methods.deepinv import invert_deepinv
from fastinv.methods.easyinv import invert_easyinv
from fastinv.methods.euler import invert_euler
from fastinv.methods.gnri import invert_gnri
from fastinv.methods.options import check_option_values
from fastinv.methods.preciseinv import invert_preciseinv
from fastinv.methods.renoise import invert_renoise
from fastinv.methods.rf_solver import invert_fireflow, invert_rf_solver
from fastinv.methods.warm_fixed_point import invert_warm_fixed_point
from fastinv.request_checks import shown

METHODS: dict[str, InversionMethod] = {
    "euler": invert_euler,
    "easyinv": invert_easyinv,
    "renoise": invert_renoise,
    "gnri": invert_gnri,
    "preciseinv": invert_preciseinv,
    "rf_solver": invert_rf_solver,
    "fireflow": invert_fireflow,
    "warm_fixed_point": invert_warm_fixed_point,
    "deepinv": invert_deepinv,
}

NEEDS_GRADIENTS = frozenset({"preciseinv"})
"""Methods that backpropagate through the denoiser: only a differentiable backend runs them
(`fastinv.runtime.backends.Backend.differentiable`)."""


AUTO = "auto"
"""The default method name: deepinv where a trained solver is at hand, else warm_fixed_point. Measured on
the shipped model (README "DeepInv"), these are the most exact at equal denoiser-equivalent cost."""


def auto_method(has_solver: bool) -> str:
    """The method AUTO stands for: deepinv with a solver, else warm_fixed_point (N + 1 NFE)."""
    return "deepinv" if has_solver else "warm_fixed_point"


def get_method(name: str) -> InversionMethod:
    """The method registered under `name` (the CLI's --method)."""
    if name not in METHODS:
        raise FastinvError(f"unknown method {shown(name)} (available: {', '.join(METHODS)})")
    return METHODS[name]


def method_options(name: str) -> dict[str, Any]:
    """The tunable keyword options of method `name` with their defaults (not callback, keep_trajectory or
    config, the run's `RunConfig`)."""
    parameters = inspect.signature(get_method(name)).parameters.values()
    fixed = {"callback", "keep_trajectory", "config"}
    return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY and p.name not in fixed}


def check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """`options` unchanged if method `name` takes them all with allowed values (`options.RULES`); a
    one-line error naming an unknown option, or an option and what it allows."""
    known = method_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        accepted = ", ".join(known) or "none"
        raise FastinvError(f"method {name!r} has no option {', '.join(unknown)} (its options: {accepted})")
    check_option_values(name, options)
    return options


def parse_pairs(pairs: list[str]) -> dict[str, Any]:
    """CLI `--set KEY=VALUE` pairs → a dict; values are JSON when they parse (1, 0.5, [0.1, 0.2], true)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise FastinvError(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = text
    return options


def parse_options(name: str, pairs: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` pairs → the options of method `name`; a one-line error for unknown ones."""
    if name == AUTO:
        if pairs:
            raise FastinvError(
                "--set needs an explicit --method: auto stands for deepinv or warm_fixed_point by the model"
            )
        return {}
    return check_options(name, parse_pairs(pairs))


__all__ = [
    "AUTO",
    "METHODS",
    "NEEDS_GRADIENTS",
    "InversionMethod",
    "InversionResult",
    "NFECounter",
    "StepCallback",
    "auto_method",
    "check_options",
    "get_method",
    "invert_euler",
    "method_options",
    "parse_options",
    "parse_pairs",
]
