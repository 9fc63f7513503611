"""A stand-in for the `tensorrt` module: the attributes fastinv uses, recording every call, so the engine
build and runtime binding code run on CPU without TensorRT.

The fake builder serializes the ONNX path it parsed; the fake runtime turns that back into an engine
whose IO is the graph spec's and whose context really executes: on `execute_async_v3` it reads the inputs
from the addresses given to `set_tensor_address` (with the shapes given to `set_input_shape`), runs
`kernel` on them and writes the result to the output's address. Wrong pointers give wrong numbers.
"""

from __future__ import annotations

import ctypes
import json
import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch

from fastinv.runtime.spec import GraphSpec, read_spec


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
    """`import tensorrt` as far as fastinv is concerned. calls: (what, *args) in call order."""

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity: str) -> None:
            self.severity = severity

    def __init__(self, version: str = "10.3.0", *, strongly_typed: bool = True) -> None:
        self.__version__ = version
        self.calls: list[tuple[Any, ...]] = []
        self.kernel: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None
        self.parse_errors: list[str] = []
        self.build_fails = False
        self.NetworkDefinitionCreationFlag = enum("STRONGLY_TYPED") if strongly_typed else enum()
        self.MemoryPoolType = enum("WORKSPACE")
        self.TensorIOMode = enum("NONE", "INPUT", "OUTPUT")
        self.DataType = enum("FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64")

    def named(self, what: str) -> list[tuple[Any, ...]]:
        return [call[1:] for call in self.calls if call[0] == what]

    def Builder(self, logger: Logger) -> FakeBuilder:
        return FakeBuilder(self)

    def OnnxParser(self, network: SimpleNamespace, logger: Logger) -> FakeParser:
        return FakeParser(self, network)

    def Runtime(self, logger: Logger) -> FakeRuntime:
        return FakeRuntime(self)


class FakeBuilder:
    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt = trt

    def create_network(self, flags: int) -> SimpleNamespace:
        self.trt.calls.append(("create_network", flags))
        return SimpleNamespace(onnx=None)

    def create_builder_config(self) -> FakeConfig:
        return FakeConfig(self.trt)

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile(self.trt)

    def build_serialized_network(self, network: SimpleNamespace, config: FakeConfig) -> bytes | None:
        self.trt.calls.append(("build_serialized_network", network.onnx))
        return None if self.trt.build_fails else json.dumps({"onnx": network.onnx}).encode()


class FakeParser:
    def __init__(self, trt: FakeTensorRT, network: SimpleNamespace) -> None:
        self.trt, self.network = trt, network

    @property
    def num_errors(self) -> int:
        return len(self.trt.parse_errors)

    def parse_from_file(self, path: str) -> bool:
        self.trt.calls.append(("parse_from_file", path))
        self.network.onnx = path
        return not self.trt.parse_errors

    def get_error(self, index: int) -> SimpleNamespace:
        return SimpleNamespace(desc=lambda: self.trt.parse_errors[index])


class FakeTimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data + b"+timed"

    def serialize(self) -> bytes:
        return self.data


class FakeConfig:
    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt = trt
        self.cache: FakeTimingCache | None = None

    @property
    def builder_optimization_level(self) -> int:
        raise AttributeError("write-only in this fake")

    @builder_optimization_level.setter
    def builder_optimization_level(self, level: int) -> None:
        self.trt.calls.append(("builder_optimization_level", level))

    def set_memory_pool_limit(self, pool: Member, size: int) -> None:
        self.trt.calls.append(("set_memory_pool_limit", pool.name, size))

    def create_timing_cache(self, data: bytes) -> FakeTimingCache:
        self.trt.calls.append(("create_timing_cache", bytes(data)))
        return FakeTimingCache(bytes(data))

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        self.trt.calls.append(("set_timing_cache", ignore_mismatch))
        self.cache = cache
        return True

    def get_timing_cache(self) -> FakeTimingCache | None:
        return self.cache

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        self.trt.calls.append(("add_optimization_profile", dict(profile.shapes)))
        return 0


class FakeProfile:
    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt = trt
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, name: str, low: tuple[int, ...], opt: tuple[int, ...], high: tuple[int, ...]) -> None:
        self.trt.calls.append(("set_shape", name, low, opt, high))
        self.shapes[name] = (low, opt, high)


class FakeRuntime:
    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt = trt

    def deserialize_cuda_engine(self, blob: bytes) -> FakeEngine:
        return FakeEngine(self.trt, read_spec(json.loads(blob)["onnx"]))


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
