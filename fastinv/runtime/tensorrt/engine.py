"""TensorRT backend: a built engine behind the VelocityModel / SolverModel calls, on torch's CUDA stream.

Inputs and outputs are torch tensors whose `data_ptr`s go to `set_tensor_address`; `execute_async_v3`
runs on `torch.cuda.current_stream()`, so torch kernels before and after are ordered with the engine's
without a host sync. Optionally each input shape is captured once as a CUDA graph and replayed. Engines
come from `fastinv.export.tensorrt`; their sidecar (`fastinv.runtime.tensorrt.cache`) is checked against
the library that built it (TensorRT or TensorRT-RTX, `fastinv.runtime.tensorrt.library`), this GPU and
every call's shapes before anything runs. TensorRT-RTX compiles the engine's kernels for this GPU when the
execution context is made (just in time), so the first load of an engine takes longer.

Every decision (dtype table, binding, profile and cache checks) is a plain function that runs without
TensorRT; the library itself is imported only when an engine is built or loaded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastinv.errors import FastinvError
from fastinv.models.base import FlowModel
from fastinv.runtime.graph import GraphSolver, GraphVelocity, graph_stem
from fastinv.runtime.tensorrt import library as trt_library
from fastinv.runtime.tensorrt.cache import check_built_for, find_engine, read_facts
from fastinv.solver.model import solver_family

TRT_TO_TORCH = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "FP8": torch.float8_e4m3fn,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
}
"""TensorRT DataType member name → torch dtype (names, so the table is usable without tensorrt)."""
TORCH_TO_TRT = {dtype: name for name, dtype in TRT_TO_TORCH.items()}


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    """A `tensorrt.DataType` (or its member name) → torch dtype."""
    name = getattr(trt_dtype, "name", str(trt_dtype)).rpartition(".")[2]
    if name not in TRT_TO_TORCH:
        raise FastinvError(f"TensorRT tensor type {name} has no torch dtype here")
    return TRT_TO_TORCH[name]


def trt_dtype(dtype: torch.dtype, trt: Any) -> Any:
    """A torch dtype → the `tensorrt.DataType` member of `trt` (the tensorrt module)."""
    if dtype not in TORCH_TO_TRT:
        raise FastinvError(f"torch dtype {dtype} has no TensorRT type")
    return getattr(trt.DataType, TORCH_TO_TRT[dtype])


def cuda_stream(device: torch.device) -> int:
    """The handle of torch's current CUDA stream on `device`, as `execute_async_v3` takes it."""
    return torch.cuda.current_stream(device).cuda_stream


@dataclass(frozen=True)
class TensorIO:
    """One engine IO tensor: name, direction and dtype (torch)."""

    name: str
    is_input: bool
    dtype: torch.dtype


def engine_io(engine: Any, trt: Any) -> list[TensorIO]:
    """The IO tensors of a deserialized engine, in its order."""
    io = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        io.append(TensorIO(name, is_input, torch_dtype(engine.get_tensor_dtype(name))))
    return io


@dataclass
class Binding:
    """Tensors bound for one call: inputs (kept alive until the call is queued) and new outputs."""

    io: Sequence[TensorIO]
    tensors: dict[str, torch.Tensor]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(name, data_ptr) for `set_tensor_address`, in engine IO order."""
        return [(io.name, self.tensors[io.name].data_ptr()) for io in self.io]

    def output(self, name: str) -> torch.Tensor:
        return self.tensors[name]


def bind(
    io: Sequence[TensorIO],
    inputs: Mapping[str, torch.Tensor],
    output_shapes: Mapping[str, Sequence[int]],
    device: torch.device,
) -> Binding:
    """Inputs as contiguous tensors of the engine's dtype on `device` (no copy when they already are), and
    new output tensors of `output_shapes` (all sizes resolved, i.e. ≥ 0)."""
    tensors = {}
    for tensor in io:
        if tensor.is_input:
            if tensor.name not in inputs:
                raise FastinvError(f"the engine takes input {tensor.name!r}, which was not given")
            tensors[tensor.name] = inputs[tensor.name].detach().to(device, tensor.dtype).contiguous()
        else:
            shape = tuple(int(size) for size in output_shapes[tensor.name])
            if any(size < 0 for size in shape):
                raise FastinvError(f"TensorRT left output {tensor.name!r} unresolved: shape {list(shape)}")
            tensors[tensor.name] = torch.empty(shape, dtype=tensor.dtype, device=device)
    return Binding(io, tensors)


class TrtGraph:
    """One engine in one execution context: `run({name: tensor})` → output tensor on `device` (CUDA).

    path: the engine file (its sidecar beside it). cuda_graph: capture each input shape once as a CUDA
    graph and replay it (inputs are copied into static buffers; the output is returned as a copy).
    """

    def __init__(
        self,
        path: str | Path,
        kind: str,
        *,
        precision: str | None = None,
        device: torch.device | str = "cuda",
        cuda_graph: bool = False,
    ) -> None:
        self.path = Path(path)
        self.device = torch.device(device)
        sm, _ = trt_library.device_facts(self.device)
        self.facts = read_facts(self.path)
        versions = trt_library.installed_versions()
        check_built_for(self.facts, self.path, versions=versions, compute_capability=sm)
        trt = trt_library.import_library(self.facts.library).module  # the library that built it
        self.spec = self.facts.graph_spec(self.path)
        self.spec.expect(self.path, kind=kind, precision=precision)
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple[tuple[int, ...], ...], tuple[torch.cuda.CUDAGraph, Binding]] = {}
        self._logger = trt.Logger(trt.Logger.WARNING)
        on_device = torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()
        with on_device:
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise FastinvError(f"TensorRT cannot deserialize {self.path} (see its log): rebuild it")
            self.context = self.engine.create_execution_context()
        self.io = engine_io(self.engine, trt)
        inputs = {t.name for t in self.io if t.is_input}
        outputs = {t.name for t in self.io if not t.is_input}
        if inputs != set(self.spec.inputs) or outputs != {self.spec.output}:
            raise FastinvError(
                f"{self.path} has IO {sorted(inputs)} → {sorted(outputs)}, its sidecar says "
                f"{list(self.spec.inputs)} → {self.spec.output}: rebuild it"
            )
        built = {name: torch_dtype(io["dtype"]) for name, io in self.facts.io.items()}
        if any(built.get(t.name, t.dtype) != t.dtype for t in self.io):
            raise FastinvError(f"{self.path}: its IO dtypes differ from those it was built with: rebuild it")

    def run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Inputs: float32 tensors by graph input name; → the float32 output on `device`, queued on torch's
        current stream (no host sync)."""
        sizes = self.spec.check_inputs({name: tuple(t.shape) for name, t in inputs.items()}, self.path)
        self.facts.profile.check_sizes(sizes, self.path.name)
        if self.cuda_graph:
            return self._replay(inputs)
        binding = self._bind(inputs)
        self._execute()
        return binding.output(self.spec.output)

    def _bind(self, inputs: Mapping[str, torch.Tensor]) -> Binding:
        for name in self.spec.inputs:
            if not self.context.set_input_shape(name, tuple(inputs[name].shape)):
                raise FastinvError(
                    f"{self.path.name}: TensorRT refused shape {list(inputs[name].shape)} of {name}"
                )
        shapes = {t.name: tuple(self.context.get_tensor_shape(t.name)) for t in self.io if not t.is_input}
        binding = bind(self.io, inputs, shapes, self.device)
        for name, address in binding.addresses:
            self.context.set_tensor_address(name, address)
        return binding

    def _execute(self) -> None:
        if not self.context.execute_async_v3(cuda_stream(self.device)):
            raise FastinvError(f"TensorRT failed to run {self.path.name} (see its log)")

    def _replay(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        key = tuple(tuple(inputs[name].shape) for name in self.spec.inputs)
        if key not in self._graphs:
            static = self._bind(
                {name: inputs[name].to(self.device, torch.float32).clone() for name in self.spec.inputs}
            )
            self._execute()  # outside the capture: TensorRT finishes its deferred set-up for these shapes
            graph = torch.cuda.CUDAGraph()
            # thread-local capture mode, as trtexec captures; current_stream() is the capture stream in here
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._execute()
            self._graphs[key] = (graph, static)
        graph, static = self._graphs[key]
        for name in self.spec.inputs:
            static.tensors[name].copy_(inputs[name])
        graph.replay()
        return static.output(self.spec.output).clone()


def _engine_file(path: str | Path, kind: str, precision: str | None, device: torch.device) -> Path:
    """`path` if it is an engine file, else the fitting `<kind>.<precision>` engine in folder `path`."""
    path = Path(path)
    if path.is_file() or path.suffix == ".engine":
        return path
    if precision is None:
        raise FastinvError(f"{path} is a folder: say which precision's {kind} engine to load")
    sm, _ = trt_library.device_facts(device)
    versions = trt_library.installed_versions()
    return find_engine(path, graph_stem(kind, precision), versions=versions, compute_capability=sm)


class TrtVelocity(GraphVelocity):
    """A VelocityModel on a TensorRT engine of an exported velocity graph (see `GraphVelocity`)."""

    backend = "trt"

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        model: FlowModel | None = None,
        precision: str | None = None,
        device: torch.device | str | None = None,
        cuda_graph: bool = False,
    ) -> TrtVelocity:
        """The engine at `path` (a file, or the newest fitting one in a folder), checked against `model`."""
        device = torch.device(
            device if device is not None else (model.device if model is not None else "cuda")
        )
        engine = _engine_file(path, "velocity", precision, device)
        graph = TrtGraph(engine, "velocity", precision=precision, device=device, cuda_graph=cuda_graph)
        cls.expect_model(graph, model)
        return cls(graph)


class TrtSolver(GraphSolver):
    """A SolverModel on a TensorRT engine of an exported DeepInv solver graph (see `GraphSolver`)."""

    backend = "trt"

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        config: Mapping[str, Any] | None = None,
        precision: str | None = None,
        device: torch.device | str = "cuda",
        cuda_graph: bool = False,
    ) -> TrtSolver:
        """The engine at `path` (a file, or the newest fitting one in a folder), checked against `config`."""
        device = torch.device(device)
        engine = _engine_file(path, "solver", precision, device)
        graph = TrtGraph(engine, "solver", precision=precision, device=device, cuda_graph=cuda_graph)
        if config is not None:
            graph.spec.expect_model(graph.path, solver_family(config), config)
        return cls(graph)
