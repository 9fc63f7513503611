"""The GPU fast path of the torch backend, switched by `fastinv.run_config.RunConfig`: the plain path
plus torch.compile of the networks (`compiled`) and CUDA-graph capture of the steps (`CapturedStep`), not a
second implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import copy as shallow_copy
from typing import Any, TypeVar

import torch

from fastinv.errors import FastinvError

T = TypeVar("T")


def compiled(holder: T) -> T:
    """A copy of `holder` (a velocity adapter or a TorchSolver) whose `network` is torch.compiled
    (fixed shapes); `holder` itself is not changed. Already compiled: `holder`."""
    if isinstance(holder.network, torch._dynamo.eval_frame.OptimizedModule):
        return holder
    copy = shallow_copy(holder)
    copy.network = torch.compile(holder.network, dynamic=False)
    return copy


CAPTURE_DEVICES = ("cuda",)
"""Device types whose steps `captured` captures."""


class CapturedStep:
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


def captured(
    fn: Callable[..., Any], counter: Any, device: torch.device, *, capture: bool
) -> Callable[..., Any]:
    """`fn` as a CapturedStep when `capture` (the run's cuda_graphs, and a step that can be captured: no host
    randomness) and `device` is a CUDA device; else `fn` itself."""
    return CapturedStep(fn, counter) if capture and device.type in CAPTURE_DEVICES else fn
