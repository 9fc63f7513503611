"""A stand-in for what running a TensorRT engine needs a GPU for: the runtime, engine and execution context
fastinv uses, recording every call, so the runtime binding code runs on CPU. Engines are built for real
(TensorRT-RTX, ahead of time): the fake runtime deserializes a registered engine into one whose IO is its
sidecar's graph spec and whose context really executes: on `execute_async_v3` it reads the inputs from the
addresses given to `set_tensor_address` (with the shapes given to `set_input_shape`), runs `kernel` on them
and writes the result to the output's address. Wrong pointers give wrong numbers.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from fastinv.runtime.spec import GraphSpec
from fastinv.runtime.tensorrt.cache import read_facts


class Member:
    """An enum member: `.name` and `int()`, like pybind11 enums."""

    def __init__(self, name: str, value: int) -> None:
        self.name, self.value = name, value

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"Member({self.name})"


def enum(*names: str) -> SimpleNamespace:
    return SimpleNamespace(**{name: Member(name, i) for i, name in enumerate(names)})


def tensor_at(address: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The float32 CPU memory at `address` as a tensor of `shape` (no copy)."""
    count = math.prod(shape)
    buffer = (ctypes.c_float * count).from_address(address)
    return torch.frombuffer(buffer, dtype=torch.float32, count=count).view(shape)


class FakeTensorRT:
    """A TensorRT library's runtime as far as fastinv runs engines: `import tensorrt_rtx` (or `tensorrt`)
    gives it. calls: (what, *args) in call order; `register(engine)` makes a really built engine (its
    sidecar's graph spec) deserializable."""

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity: str) -> None:
            self.severity = severity

    def __init__(self, version: str) -> None:
        self.__version__ = version
        self.calls: list[tuple[Any, ...]] = []
        self.kernel: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None
        self.engines: dict[str, GraphSpec] = {}
        self.TensorIOMode = enum("NONE", "INPUT", "OUTPUT")
        self.DataType = enum("FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64")

    def named(self, what: str) -> list[tuple[Any, ...]]:
        return [call[1:] for call in self.calls if call[0] == what]

    def register(self, engine: Path) -> Path:
        self.engines[hashlib.sha256(engine.read_bytes()).hexdigest()] = read_facts(engine).graph_spec(engine)
        return engine

    def Runtime(self, logger: Logger) -> FakeRuntime:
        return FakeRuntime(self)


class FakeRuntime:
    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt = trt

    def deserialize_cuda_engine(self, blob: bytes) -> FakeEngine | None:
        spec = self.trt.engines.get(hashlib.sha256(blob).hexdigest())
        return None if spec is None else FakeEngine(self.trt, spec)


class FakeEngine:
    def __init__(self, trt: FakeTensorRT, spec: GraphSpec) -> None:
        self.trt, self.spec = trt, spec
        self.names = [*spec.inputs, spec.output]

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> Member:
        modes = self.trt.TensorIOMode
        return modes.OUTPUT if name == self.spec.output else modes.INPUT

    def get_tensor_dtype(self, name: str) -> Member:
        return self.trt.DataType.FLOAT

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self.trt, self.spec)


class FakeContext:
    def __init__(self, trt: FakeTensorRT, spec: GraphSpec) -> None:
        self.trt, self.spec = trt, spec
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.trt.calls.append(("set_input_shape", name, tuple(shape)))
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[self.spec.output_like] if name == self.spec.output else self.shapes[name]

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.trt.calls.append(("set_tensor_address", name, address))
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream: int) -> bool:
        self.trt.calls.append(("execute_async_v3", stream))
        assert self.trt.kernel is not None, "set FakeTensorRT.kernel to run an engine"
        inputs = {
            name: tensor_at(self.addresses[name], self.shapes[name]).clone() for name in self.spec.inputs
        }
        out = self.trt.kernel(inputs)
        tensor_at(self.addresses[self.spec.output], tuple(out.shape)).copy_(out)
        return True
