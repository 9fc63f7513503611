"""The backends that run the denoiser and the DeepInv solver, as one table: `BACKENDS`.

Each `Backend` says what it needs (an export folder, a Python package, a CUDA GPU), whether gradients flow
through it, how it loads the exported velocity and solver from a folder, and how `fastinv bench` plots it.
The runtime code (ONNX Runtime, TensorRT) is imported only when a backend loads something, so this module
stays cheap to import (the CLI builds its help from it).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastinv.errors import FastinvError

if TYPE_CHECKING:
    import torch

    from fastinv.models.base import FlowModel
    from fastinv.runtime.graph import Graph, GraphSolver, GraphVelocity


@dataclass(frozen=True)
class Backend:
    """One backend: name, what it needs and how it loads exported graphs (None for the torch backend).

    folder: reads the graphs `fastinv export` wrote (--export-dir); bench_exports: `fastinv bench` exports
    its graphs itself when no --export-dir is given; package: the Python package it imports, `requires`
    imports it or raises one line saying what is missing; differentiable: gradients flow through the
    denoiser (methods in `fastinv.methods.NEEDS_GRADIENTS` need them); marker: its matplotlib marker.
    """

    name: str
    description: str
    marker: str
    differentiable: bool = False
    folder: bool = False
    bench_exports: bool = False
    package: str | None = None
    cuda_only: bool = False
    requires: Callable[[], Any] | None = None
    velocity_loader: Callable[[Path, FlowModel, str], GraphVelocity] | None = None
    solver_loader: Callable[[Path, str, torch.device, Mapping[str, Any] | None], GraphSolver] | None = None
    solver_finder: Callable[[Path, str], bool] | None = None
    graph_loader: Callable[[Path, str, torch.device | str], Graph] | None = None

    def available(self) -> bool:
        """Whether this install has what it needs: no package, or `requires` passes (else the package
        imports)."""
        if self.package is None:
            return True
        try:
            if self.requires is not None:
                self.requires()
            else:
                importlib.import_module(self.package)
        except Exception:  # FastinvError, ImportError, or a stub package failing on missing native libraries
            return False
        return True

    def require(self) -> None:
        """Import the backend's package, or a one-line FastinvError saying what is missing."""
        if self.requires is not None:
            self.requires()

    def refusal(self, method: str) -> str | None:
        """Why this backend cannot run `method` (one line), or None when it can."""
        from fastinv.methods import NEEDS_GRADIENTS

        if method in NEEDS_GRADIENTS and not self.differentiable:
            return (
                f"method {method} needs gradients through the denoiser: the {self.name} backend has none "
                "(not differentiable); use the torch backend"
            )
        return None

    def check_method(self, method: str) -> None:
        """One-line FastinvError unless this backend can run `method`."""
        reason = self.refusal(method)
        if reason is not None:
            raise FastinvError(reason)

    def _loader(self, loader: Callable[..., Any] | None) -> Callable[..., Any]:
        if loader is None:
            raise FastinvError(f"the {self.name} backend runs no exported graphs")
        return loader

    def load_velocity(self, folder: Path, model: FlowModel, precision: str) -> GraphVelocity:
        """The exported velocity of `model` in `folder`, on the model's device."""
        return self._loader(self.velocity_loader)(folder, model, precision)

    def solver_exported(self, folder: Path, precision: str) -> bool:
        """Whether `folder` holds an exported DeepInv solver of `precision` that this backend runs."""
        return self._loader(self.solver_finder)(folder, precision)

    def load_solver(
        self, folder: Path, precision: str, device: torch.device, config: Mapping[str, Any] | None = None
    ) -> GraphSolver:
        """The exported DeepInv solver in `folder`, checked against a solver `config` when given."""
        return self._loader(self.solver_loader)(folder, precision, device, config)

    def open_graph(self, path: Path, kind: str, device: torch.device | str) -> Graph:
        """The graph file at `path` ("velocity" | "solver"), as this backend runs it (for parity checks)."""
        return self._loader(self.graph_loader)(path, kind, device)


def _onnxruntime() -> Any:
    from fastinv.runtime.ort import onnxruntime_module

    return onnxruntime_module()


def _tensorrt() -> None:
    from fastinv.runtime.tensorrt.library import check_any

    check_any()


def _ort_velocity(folder: Path, model: FlowModel, precision: str) -> GraphVelocity:
    from fastinv.runtime.graph import onnx_file
    from fastinv.runtime.ort import OrtVelocity

    return OrtVelocity.load(onnx_file(folder, "velocity", precision), model=model, precision=precision)


def _ort_has_solver(folder: Path, precision: str) -> bool:
    from fastinv.runtime.graph import graph_stem

    return (folder / f"{graph_stem('solver', precision)}.onnx").is_file()


def _ort_solver(
    folder: Path, precision: str, device: torch.device, config: Mapping[str, Any] | None
) -> GraphSolver:
    from fastinv.runtime.graph import graph_stem
    from fastinv.runtime.ort import OrtSolver

    path = folder / f"{graph_stem('solver', precision)}.onnx"
    return OrtSolver.load(path, config=config, precision=precision, device=device)


def _ort_graph(path: Path, kind: str, device: torch.device | str) -> Graph:
    from fastinv.runtime.ort import OrtGraph

    return OrtGraph(path, kind, device=device)


def _trt_velocity(folder: Path, model: FlowModel, precision: str) -> GraphVelocity:
    from fastinv.runtime.tensorrt.engine import TrtVelocity

    return TrtVelocity.load(folder, model=model, precision=precision)


def _trt_has_solver(folder: Path, precision: str) -> bool:
    from fastinv.runtime.graph import graph_stem

    return any(folder.glob(f"{graph_stem('solver', precision)}.*.engine"))


def _trt_solver(
    folder: Path, precision: str, device: torch.device, config: Mapping[str, Any] | None
) -> GraphSolver:
    from fastinv.runtime.tensorrt.engine import TrtSolver

    return TrtSolver.load(folder, config=config, precision=precision, device=device)


def _trt_graph(path: Path, kind: str, device: torch.device | str) -> Graph:
    from fastinv.runtime.tensorrt.engine import TrtGraph

    return TrtGraph(path, kind, device=device)


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend("torch", "PyTorch on the loaded model (differentiable)", "o", differentiable=True),
        Backend(
            "ort",
            "ONNX Runtime on the exported ONNX graphs (CPU or CUDA)",
            "s",
            folder=True,
            bench_exports=True,
            package="onnxruntime",
            requires=_onnxruntime,
            velocity_loader=_ort_velocity,
            solver_loader=_ort_solver,
            solver_finder=_ort_has_solver,
            graph_loader=_ort_graph,
        ),
        Backend(
            "trt",
            "TensorRT or TensorRT-RTX engines built from the ONNX graphs (CUDA GPU)",
            "^",
            folder=True,
            package="tensorrt | tensorrt_rtx",
            cuda_only=True,
            requires=_tensorrt,
            velocity_loader=_trt_velocity,
            solver_loader=_trt_solver,
            solver_finder=_trt_has_solver,
            graph_loader=_trt_graph,
        ),
    )
}


def get_backend(name: str) -> Backend:
    """The backend registered under `name` (--backend), or a one-line error listing them."""
    if name not in BACKENDS:
        raise FastinvError(f"unknown backend {name!r}: use {', '.join(BACKENDS)}")
    return BACKENDS[name]


def folder_backends() -> list[str]:
    """Names of the backends that read an export folder (--export-dir), in table order."""
    return [name for name, backend in BACKENDS.items() if backend.folder]


def spelled(names: list[str], word: str = "and") -> str:
    """["ort", "trt"] → "ort and trt" (`word` between the last two)."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {word} {names[-1]}"
