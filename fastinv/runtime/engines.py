"""Engines by name: the velocity and solver that `fastinv export` wrote to a folder, on ort or trt.

A folder holds `velocity.<precision>.onnx`, `solver.<precision>.onnx` (when a solver was exported) and,
for TensorRT, `<stem>.<key>.engine` files with their sidecars. The torch engine needs no folder.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fastinv.errors import FastinvError
from fastinv.models.base import FlowModel
from fastinv.runtime.graph import GraphSolver, GraphVelocity, graph_stem

ENGINES = ("torch", "ort", "trt")
MODULES = {"ort": "onnxruntime", "trt": "tensorrt"}


def available_engines() -> list[str]:
    """The engines this install can run: torch always, ort if onnxruntime imports, trt if tensorrt does."""
    engines = ["torch"]
    for engine, module in MODULES.items():
        try:
            importlib.import_module(module)
        except Exception:  # ImportError, or a stub package failing on missing native libraries
            continue
        engines.append(engine)
    return engines


def engine_folder(engine: str, engine_dir: str | Path | None) -> Path | None:
    """The folder an engine reads its graphs from (None for torch); one-line errors for bad combinations."""
    if engine not in ENGINES:
        raise FastinvError(f"unknown engine {engine!r}: use {', '.join(ENGINES)}")
    if engine == "torch":
        if engine_dir is not None:
            raise FastinvError("--engine-dir is for the ort and trt engines; the torch engine takes none")
        return None
    if engine_dir is None:
        raise FastinvError(f"the {engine} engine needs --engine-dir: a folder `fastinv export` wrote")
    folder = Path(engine_dir)
    if not folder.is_dir():
        raise FastinvError(f"engine folder not found: {folder}")
    if engine == "trt":
        from fastinv.runtime.tensorrt.engine import tensorrt_module

        tensorrt_module()  # before the model loads: one line when TensorRT is missing
    return folder


def onnx_file(folder: Path, kind: str, precision: str) -> Path:
    """`<folder>/<kind>.<precision>.onnx`, or an error naming what the folder holds instead."""
    path = folder / f"{graph_stem(kind, precision)}.onnx"
    if not path.is_file():
        held = ", ".join(sorted(p.name for p in folder.glob(f"{kind}.*.onnx"))) or f"no {kind} graph"
        raise FastinvError(
            f"no {path.name} in {folder} (it holds {held}): "
            f"export it with `fastinv export --precision {precision} --out {folder}`"
        )
    return path


def engine_velocity(engine: str, folder: Path, model: FlowModel, precision: str) -> GraphVelocity:
    """The exported velocity of `model` in `folder`, run by `engine` ("ort" | "trt") on the model's device."""
    if engine == "ort":
        from fastinv.runtime.ort import OrtVelocity

        return OrtVelocity.load(onnx_file(folder, "velocity", precision), model=model, precision=precision)
    from fastinv.runtime.tensorrt.engine import TrtVelocity

    return TrtVelocity.load(folder, model=model, precision=precision)


def solver_exported(engine: str, folder: Path, precision: str) -> bool:
    """Whether `folder` holds an exported DeepInv solver of `precision` that `engine` runs."""
    stem = graph_stem("solver", precision)
    if engine == "ort":
        return (folder / f"{stem}.onnx").is_file()
    return any(folder.glob(f"{stem}.*.engine"))


def engine_solver(
    engine: str,
    folder: Path,
    precision: str,
    device: torch.device,
    config: Mapping[str, Any] | None = None,
) -> GraphSolver | None:
    """The exported DeepInv solver in `folder` run by `engine`, checked against a solver `config` when
    given; None when the folder holds no solver of that precision."""
    if not solver_exported(engine, folder, precision):
        return None
    if engine == "ort":
        from fastinv.runtime.ort import OrtSolver

        path = folder / f"{graph_stem('solver', precision)}.onnx"
        return OrtSolver.load(path, config=config, precision=precision, device=device)
    from fastinv.runtime.tensorrt.engine import TrtSolver

    return TrtSolver.load(folder, config=config, precision=precision, device=device)
