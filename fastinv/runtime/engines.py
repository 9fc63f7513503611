"""Engines by name: the velocity and solver that `fastinv export` wrote to a folder, looked up in the
backend table (`fastinv.runtime.backends.BACKENDS`).

A folder holds `velocity.<precision>.onnx`, `solver.<precision>.onnx` (when a solver was exported) and,
for TensorRT, `<stem>.<key>.engine` files with their sidecars. The torch engine needs no folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fastinv.errors import FastinvError
from fastinv.models.base import FlowModel
from fastinv.runtime.backends import BACKENDS, folder_backends, get_backend, spelled
from fastinv.runtime.graph import GraphSolver, GraphVelocity, onnx_file

__all__ = [
    "available_engines",
    "engine_folder",
    "engine_solver",
    "engine_velocity",
    "onnx_file",
    "solver_exported",
]


def available_engines() -> list[str]:
    """The engines this install can run: those whose package imports (torch needs none)."""
    return [name for name, backend in BACKENDS.items() if backend.available()]


def engine_folder(engine: str, engine_dir: str | Path | None) -> Path | None:
    """The folder an engine reads its graphs from (None for torch); one-line errors for bad combinations,
    and for a missing package, before the model loads."""
    backend = get_backend(engine)
    if not backend.folder:
        if engine_dir is not None:
            raise FastinvError(
                f"--engine-dir is for the {spelled(folder_backends())} engines; "
                f"the {engine} engine takes none"
            )
        return None
    if engine_dir is None:
        raise FastinvError(f"the {engine} engine needs --engine-dir: a folder `fastinv export` wrote")
    folder = Path(engine_dir)
    if not folder.is_dir():
        raise FastinvError(f"engine folder not found: {folder}")
    backend.require()
    return folder


def engine_velocity(engine: str, folder: Path, model: FlowModel, precision: str) -> GraphVelocity:
    """The exported velocity of `model` in `folder`, run by `engine` on the model's device."""
    return get_backend(engine).load_velocity(folder, model, precision)


def solver_exported(engine: str, folder: Path, precision: str) -> bool:
    """Whether `folder` holds an exported DeepInv solver of `precision` that `engine` runs."""
    return get_backend(engine).solver_exported(folder, precision)


def engine_solver(
    engine: str,
    folder: Path,
    precision: str,
    device: torch.device,
    config: Mapping[str, Any] | None = None,
) -> GraphSolver | None:
    """The exported DeepInv solver in `folder` run by `engine`, checked against a solver `config` when
    given; None when the folder holds no solver of that precision."""
    backend = get_backend(engine)
    if not backend.solver_exported(folder, precision):
        return None
    return backend.load_solver(folder, precision, device, config)
