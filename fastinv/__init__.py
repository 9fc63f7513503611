"""fastinv: fast diffusion inversion (Euler, iterative baselines, DeepInv) for rectified-flow models.

The public names are imported lazily, so `import fastinv` (and the CLI's error paths) stay fast.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("fastinv")
except PackageNotFoundError:
    __version__ = "0+unknown"

_EXPORTS = {
    "load": "fastinv.api",
    "from_pipeline": "fastinv.api",
    "Inverter": "fastinv.api",
    "Inversion": "fastinv.results",
    "Reconstruction": "fastinv.results",
    "Edit": "fastinv.results",
    "Conditioning": "fastinv.conditioning",
    "FastinvError": "fastinv.errors",
    "METHODS": "fastinv.methods",
    "InversionResult": "fastinv.methods",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fastinv' has no attribute {name!r}")
