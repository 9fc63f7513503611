"""ONNX Runtime backend: an exported velocity or solver graph behind the VelocityModel / SolverModel calls.

The session is created once per graph. Inputs and the output are torch tensors bound in place through
ORT's IO binding (CPU memory here, device memory under the CUDA / TensorRT execution providers), so the
same method code runs unchanged on torch and on ORT. Graph IO is float32; the network inside runs in
the precision the graph was exported with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastinv.errors import FastinvError
from fastinv.models.base import FlowModel
from fastinv.runtime.graph import GraphSolver, GraphVelocity
from fastinv.runtime.spec import GraphSpec, read_spec
from fastinv.solver.model import solver_family

Provider = str | tuple[str, dict[str, Any]]


def onnxruntime_module() -> Any:
    """`import onnxruntime`, or one line saying what is missing."""
    try:
        import onnxruntime
    except Exception as err:  # ImportError, or a broken install failing on its native libraries
        raise FastinvError(
            f"the ort backend needs onnxruntime ({type(err).__name__} on import): pip install 'fastinv[onnx]'"
        ) from err
    return onnxruntime


def choose_providers(
    device: torch.device, available: Sequence[str] | None = None, *, tensorrt: bool = False
) -> list[Provider]:
    """Execution providers for `device`, by availability: CPU for cpu; CUDA (TensorRT first if asked for
    and installed) with CPU fallback for cuda:N. `available` defaults to what this onnxruntime offers."""
    if available is None:
        available = onnxruntime_module().get_available_providers()
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type != "cuda":
        raise FastinvError(f"the ort backend runs on cpu or cuda, not {device}")
    if "CUDAExecutionProvider" not in available:
        raise FastinvError(
            f"{device} asked for, but this onnxruntime has no CUDA provider (it has {', '.join(available)}): "
            "pip install onnxruntime-gpu"
        )
    options = {"device_id": device.index or 0}
    providers: list[Provider] = []
    if tensorrt and "TensorrtExecutionProvider" in available:
        providers.append(("TensorrtExecutionProvider", options))
    return [*providers, ("CUDAExecutionProvider", options), "CPUExecutionProvider"]


class OrtGraph:
    """One exported graph in one ORT session: `run({name: tensor})` → output tensor on `device`.

    Raises a one-line FastinvError when the file is missing, is of another kind or precision than asked
    for, cannot be run by the chosen providers, or is fed shapes outside its exported axes.
    """

    def __init__(
        self,
        path: str | Path,
        kind: str,
        *,
        precision: str | None = None,
        device: torch.device | str = "cpu",
        providers: Sequence[Provider] | None = None,
    ) -> None:
        self.path = Path(path)
        self.spec: GraphSpec = read_spec(self.path)
        self.spec.expect(self.path, kind=kind, precision=precision)
        self.device = torch.device(device)
        ort = onnxruntime_module()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.device.type == "cpu":
            options.intra_op_num_threads = torch.get_num_threads()
            # Idle threads that spin steal the cores from the other session (denoiser ↔ solver) and from
            # torch's glue: measured 57 ms per DeepInv step with spinning vs 21 ms for the two calls alone.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        chosen = list(providers) if providers is not None else choose_providers(self.device)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=chosen)
        except Exception as err:  # ORT's pybind errors (Fail, NotImplemented, …) share no narrower base
            reason = str(err).strip().splitlines()[0]
            raise FastinvError(
                f"ONNX Runtime cannot run {self.path} ({self.spec.precision}) on {self.device}: {reason}"
            ) from err

    def run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Inputs: float32 tensors by graph input name (any device); → the float32 output on `device`."""
        self.spec.check_inputs({name: tuple(t.shape) for name, t in inputs.items()}, self.path)
        feeds = {}
        for name in self.spec.inputs:
            feeds[name] = inputs[name].detach().to(self.device, torch.float32).contiguous()
        out = torch.empty_like(feeds[self.spec.output_like])
        kind, index = self.device.type, self.device.index or 0
        binding = self.session.io_binding()
        for name, tensor in feeds.items():
            binding.bind_input(name, kind, index, np.float32, tuple(tensor.shape), tensor.data_ptr())
        binding.bind_output(self.spec.output, kind, index, np.float32, tuple(out.shape), out.data_ptr())
        if kind == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch's queued kernels
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return out


class OrtVelocity(GraphVelocity):
    """A VelocityModel on an exported velocity graph in ONNX Runtime (see `GraphVelocity`)."""

    backend = "ort"

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        model: FlowModel | None = None,
        precision: str | None = None,
        device: torch.device | str | None = None,
        providers: Sequence[Provider] | None = None,
    ) -> OrtVelocity:
        """The graph at `path`, checked against `model` (family and transformer config) and `precision`."""
        device = device if device is not None else (model.device if model is not None else "cpu")
        graph = OrtGraph(path, "velocity", precision=precision, device=device, providers=providers)
        cls.expect_model(graph, model)
        return cls(graph)


class OrtSolver(GraphSolver):
    """A SolverModel on an exported DeepInv solver graph in ONNX Runtime (see `GraphSolver`)."""

    backend = "ort"

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        config: Mapping[str, Any] | None = None,
        precision: str | None = None,
        device: torch.device | str = "cpu",
        providers: Sequence[Provider] | None = None,
    ) -> OrtSolver:
        """The graph at `path`, checked against a solver network's `config` and `precision`."""
        graph = OrtGraph(path, "solver", precision=precision, device=device, providers=providers)
        if config is not None:
            graph.spec.expect_model(graph.path, solver_family(config), config)
        return cls(graph)
