"""The GPU fast path of the torch backend: the plain path plus switches (bf16, torch.compile, CUDA graphs,
Triton glue), not a second implementation.

- bf16: `--dtype auto` already runs the networks in bf16 on a GPU (float32 latent state throughout).
- compile: `torch.compile` of the denoiser and solver networks (fixed shapes, inductor's default mode, so
  that the compiled code can itself be captured in a CUDA graph).
- cuda_graphs: each inversion/sampling step (network calls + fused glue) is captured once per run in a
  CUDA graph by `StepGraph` and replayed for the remaining steps.
- kernels: "auto" runs the fused Triton step kernels on CUDA tensors, "torch" their references
  (which torch.compile may fuse); see `fastinv.kernels`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fastinv.errors import FastinvError
from fastinv.kernels import BACKENDS


@dataclass(frozen=True)
class FastPath:
    """Which fast-path switches are on; `FastPath.resolve` gives the defaults (on for CUDA, off on CPU)."""

    compile: bool = False
    cuda_graphs: bool = False
    kernels: str = "auto"

    def __post_init__(self) -> None:
        if self.kernels not in BACKENDS:
            raise FastinvError(f"unknown kernel backend {self.kernels!r}: use {' or '.join(BACKENDS)}")

    @classmethod
    def resolve(
        cls,
        device: torch.device,
        dtype: torch.dtype,
        *,
        enabled: bool | None = None,
        compile: bool | None = None,
        cuda_graphs: bool | None = None,
        kernels: str = "auto",
    ) -> FastPath:
        """enabled None = on for CUDA devices; per-switch values override it. CUDA graphs need a CUDA device
        and no fp16 (its overflow check reads the result on the host every step, which a graph cannot)."""
        on = device.type == "cuda" if enabled is None else enabled
        compile = on if compile is None else compile
        graphs = on if cuda_graphs is None else cuda_graphs
        if graphs and device.type != "cuda":
            if cuda_graphs:
                raise FastinvError(f"CUDA graphs need a CUDA device, the model runs on {device}")
            graphs = False
        if graphs and dtype == torch.float16:
            if cuda_graphs:
                raise FastinvError("CUDA graphs cannot run fp16 (its per-step overflow check): use bf16")
            graphs = False
        return cls(compile=compile, cuda_graphs=graphs, kernels=kernels)

    def describe(self) -> str:
        """One line for logs and result files, e.g. "compile+cuda_graphs, kernels=auto"."""
        switches = [name for name in ("compile", "cuda_graphs") if getattr(self, name)]
        return f"{'+'.join(switches) or 'eager'}, kernels={self.kernels}"


def compile_network(holder: Any) -> None:
    """torch.compile `holder.network` in place (a velocity adapter or a TorchSolver); idempotent."""
    if not isinstance(holder.network, torch._dynamo.eval_frame.OptimizedModule):
        holder.network = torch.compile(holder.network, dynamic=False)


CAPTURE_DEVICES = ("cuda",)
"""Device types whose steps `graphed` captures."""


class StepGraph:
    """`fn(*tensors)` captured in a CUDA graph for fixed shapes, replayed with new inputs.

    Call 1 runs eagerly on a side stream (the warm-up a capture needs: compilation, autotuning, cuBLAS
    workspaces) and learns how many denoiser calls a step makes from `counter`; call 2 captures and
    replays; later calls copy their inputs into the captured buffers and replay. Replays add that many
    calls to `counter.calls`, so NFE stays exact. Outputs are fresh tensors (clones of the graph's
    buffers), safe to keep across steps.
    """

    def __init__(self, fn: Callable[..., Any], counter: Any) -> None:
        self.fn = fn
        self.counter = counter
        self.calls_per_step: int | None = None
        self.graph: Any = None
        self.inputs: list[torch.Tensor] = []
        self.outputs: Any = None

    def warm_up(self, inputs: tuple[torch.Tensor, ...]) -> Any:
        """Run `fn` eagerly on a side stream (as capture requires) and return its outputs."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            outputs = self.fn(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        return outputs

    def capture(self) -> None:
        """Record `fn` on the input buffers into `self.graph`; its outputs become the output buffers."""
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self.fn(*self.inputs)

    def replay(self) -> None:
        self.graph.replay()

    def __call__(self, *inputs: torch.Tensor) -> Any:
        if self.calls_per_step is None:
            before = self.counter.calls
            outputs = self.warm_up(inputs)
            self.calls_per_step = self.counter.calls - before
            return outputs
        if self.graph is None:
            self.inputs = [x.clone() for x in inputs]
            before = self.counter.calls
            self.capture()
            self.counter.calls = before  # capturing records the calls, it does not run them
        for buffer, x in zip(self.inputs, inputs, strict=True):
            if buffer.shape != x.shape:
                raise FastinvError(
                    f"a CUDA-graph step was captured for {tuple(buffer.shape)}, got {tuple(x.shape)}"
                )
            buffer.copy_(x)
        self.replay()
        self.counter.calls += self.calls_per_step
        if isinstance(self.outputs, tuple):
            return tuple(x.clone() for x in self.outputs)
        return self.outputs.clone()


def graphed(
    fn: Callable[..., Any], counter: Any, device: torch.device, *, enabled: bool = True
) -> Callable[..., Any]:
    """`fn` as a StepGraph when the model behind `counter` asks for CUDA graphs and runs on a CUDA
    `device`; else `fn` itself. `enabled=False` for steps that cannot be captured (host randomness)."""
    wants = getattr(counter.model, "cuda_graphs", False)
    return StepGraph(fn, counter) if enabled and wants and device.type in CAPTURE_DEVICES else fn
