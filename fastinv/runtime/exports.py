"""Export folders by backend: the velocity and solver that `fastinv export` wrote to a folder, looked up in
the backend table (`fastinv.runtime.backends.BACKENDS`).

A folder holds `velocity.<precision>.onnx`, `solver.<precision>.onnx` (when a solver was exported) and,
for TensorRT, `<stem>.<key>.engine` files with their sidecars. The torch backend needs no folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fastinv.errors import FastinvError
from fastinv.models.base import FlowModel
from fastinv.runtime.backends import BACKENDS, folder_backends, get_backend, spelled
from fastinv.runtime.graph import GraphSolver, GraphVelocity

__all__ = [
    "available_backends",
    "export_folder",
    "exported_solver",
    "exported_velocity",
    "solver_exported",
]


def available_backends() -> list[str]:
    """The backends this install can run: those whose package imports (torch needs none)."""
    return [name for name, backend in BACKENDS.items() if backend.available()]


def export_folder(backend_name: str, export_dir: str | Path | None) -> Path | None:
    """The export folder a backend reads its graphs from (None for torch); one-line errors for bad
    combinations, and for a missing package, before the model loads."""
    backend = get_backend(backend_name)
    if not backend.folder:
        if export_dir is not None:
            raise FastinvError(
                f"--export-dir is for the {spelled(folder_backends())} backends; "
                f"the {backend_name} backend takes none"
            )
        return None
    if export_dir is None:
        raise FastinvError(f"the {backend_name} backend needs --export-dir: a folder `fastinv export` wrote")
    folder = Path(export_dir)
    if not folder.is_dir():
        raise FastinvError(f"export folder not found: {folder}")
    backend.require()
    return folder


def exported_velocity(backend: str, folder: Path, model: FlowModel, precision: str) -> GraphVelocity:
    """The exported velocity of `model` in `folder`, run by `backend` on the model's device."""
    return get_backend(backend).load_velocity(folder, model, precision)


def solver_exported(backend: str, folder: Path, precision: str) -> bool:
    """Whether `folder` holds an exported DeepInv solver of `precision` that `backend` runs."""
    return get_backend(backend).solver_exported(folder, precision)


def exported_solver(
    backend: str,
    folder: Path,
    precision: str,
    device: torch.device,
    config: Mapping[str, Any] | None = None,
) -> GraphSolver | None:
    """The exported DeepInv solver in `folder` run by `backend`, checked against a solver `config` when
    given; None when the folder holds no solver of that precision."""
    runner = get_backend(backend)
    if not runner.solver_exported(folder, precision):
        return None
    return runner.load_solver(folder, precision, device, config)
