"""Which TensorRT builds and runs an engine: NVIDIA TensorRT (datacenter GPUs) or TensorRT-RTX (workstations).

Both libraries share one API; fastinv's engine code is written once against it and differs only where the
libraries do:
- module name: `tensorrt` vs `tensorrt_rtx`;
- targets: TensorRT builds for the GPU it runs on; TensorRT-RTX also builds ahead of time, without a GPU,
  for a named compute capability (`--gpu-arch`, one of `RTX_ARCHS`: not SM90, so never H100/H200);
- precision: both take fastinv's strongly typed graphs as they are (the graph's dtypes decide);
- tactics: TensorRT times kernels at build time (kept in a timing cache); TensorRT-RTX compiles its kernels
  just in time when an execution context is made, so it has no timing cache.

An engine's sidecar names the library and version that built it; loading uses that library and refuses any
other version (`fastinv.runtime.tensorrt.cache.check_built_for`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import torch

from fastinv.errors import FastinvError

TENSORRT = "tensorrt"
TENSORRT_RTX = "tensorrt_rtx"
TITLES = {TENSORRT: "TensorRT", TENSORRT_RTX: "TensorRT-RTX"}
MIN_MAJOR = {TENSORRT: 10, TENSORRT_RTX: 1}
INSTALL = {TENSORRT: "pip install tensorrt", TENSORRT_RTX: "pip install 'fastinv[rtx]'"}
RTX_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_120", "sm_121")
"""Compute capabilities TensorRT-RTX 1.x builds for (Turing … Blackwell workstations; no SM90)."""


@dataclass(frozen=True)
class Library:
    """An imported TensorRT library: its name (`TENSORRT` or `TENSORRT_RTX`), module and version."""

    name: str
    module: Any

    @property
    def version(self) -> str:
        return str(self.module.__version__)

    @property
    def title(self) -> str:
        return TITLES[self.name]

    @property
    def is_rtx(self) -> bool:
        return self.name == TENSORRT_RTX


def import_library(name: str) -> Library:
    """`import tensorrt` / `import tensorrt_rtx`, or one line saying what is missing."""
    if name not in TITLES:
        raise FastinvError(f"unknown TensorRT library {name!r}: use {' or '.join(TITLES)}")
    try:
        module = importlib.import_module(name)
    except Exception as err:  # ImportError, or the PyPI stub's errors when no NVIDIA libraries are found
        raise FastinvError(
            f"the trt backend needs {TITLES[name]} ({INSTALL[name]}); it is not usable here "
            f"({type(err).__name__}); the ort backend runs without it"
        ) from err
    library = Library(name, module)
    if int(library.version.split(".")[0]) < MIN_MAJOR[name]:
        raise FastinvError(f"{library.title} {library.version} is too old: fastinv needs ≥ {MIN_MAJOR[name]}")
    return library


def probe() -> dict[str, Library | str]:
    """Library name → the imported library, or why it cannot be used (the import's error type, or the
    version check's line)."""
    found: dict[str, Library | str] = {}
    for name in TITLES:
        try:
            found[name] = import_library(name)
        except FastinvError as err:
            found[name] = type(err.__cause__).__name__ if err.__cause__ is not None else str(err)
    return found


def present() -> dict[str, str]:
    """Library name → its version, or why it cannot be used (for `fastinv info`)."""
    return {
        name: found.version if isinstance(found, Library) else f"not usable ({found})"
        for name, found in probe().items()
    }


def installed_versions() -> dict[str, str]:
    """Library name → version, for the TensorRT libraries importable here."""
    return {name: found.version for name, found in probe().items() if isinstance(found, Library)}


def parse_arch(text: str) -> str:
    """ "sm89", "sm_89", "89" or "8.9" → "sm_89"; one line naming --gpu-arch otherwise."""
    digits = text.lower().removeprefix("sm").lstrip("_").replace(".", "")
    if not digits.isdigit() or len(digits) not in (2, 3):
        raise FastinvError(f"--gpu-arch {text!r}: give a compute capability such as sm_89 or 8.9")
    return f"sm_{digits}"


def device_facts(device: torch.device | str) -> tuple[str, str]:
    """("sm_90", "NVIDIA H100 …") for a CUDA device; one-line error for any other device."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise FastinvError(f"the trt backend runs on a CUDA GPU, not {device}")
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}", torch.cuda.get_device_name(device)


def for_arch(arch: str) -> Library:
    """The library that builds ahead of time for `arch` ("sm_89"): TensorRT-RTX, if it supports `arch`."""
    if arch not in RTX_ARCHS:
        raise FastinvError(
            f"--gpu-arch {arch}: TensorRT-RTX builds ahead of time for {', '.join(RTX_ARCHS)} only; "
            "other GPUs (sm_90 H100/H200, sm_100 B200) need TensorRT on that GPU, without --gpu-arch"
        )
    return import_library(TENSORRT_RTX)


def for_device(arch: str) -> Library:
    """The library for a GPU of compute capability `arch` found here: TensorRT-RTX on the GPUs it supports
    when it is installed, else TensorRT."""
    if arch in RTX_ARCHS:
        try:
            return import_library(TENSORRT_RTX)
        except FastinvError:
            pass
    return import_library(TENSORRT)


def check_any() -> None:
    """One line, before any work, when neither library can be imported."""
    found = probe()
    if any(isinstance(library, Library) for library in found.values()):
        return
    reasons = "; ".join(f"{TITLES[name]}: {reason}" for name, reason in found.items())
    raise FastinvError(
        f"the trt backend needs TensorRT (datacenter GPUs: {INSTALL[TENSORRT]}) or TensorRT-RTX (RTX GPUs: "
        f"{INSTALL[TENSORRT_RTX]}); neither is usable here ({reasons})"
    )
