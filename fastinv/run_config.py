"""How a run executes, as one immutable value: device, dtype and the torch backend's fast-path switches.

The Inverter holds it; it reaches every method and the sampler as their `config` argument (methods
call `run.kernels` and `run.captured`, which read it); each output set records it.

- dtype: the networks' precision (bf16 by default on a GPU, fp32 on CPU); the latent state is float32.
- compile: `torch.compile` of the denoiser and solver networks (fixed shapes, inductor's default mode, so
  that the compiled code can itself be captured in a CUDA graph).
- cuda_graphs: each inversion/sampling step (network calls + fused glue) is captured once per run in a
  CUDA graph (`fastinv.runtime.fast_path.CapturedStep`) and replayed for the remaining steps.
- kernels: "auto" runs the fused Triton step kernels on CUDA tensors, "torch" their references (which
  torch.compile may fuse); see `fastinv.kernels`.
- offload: the memory plan (`fastinv.models.offload`): "none" keeps every component on the device; "text"
  keeps the text encoders in CPU memory (they encode there); "model" is model CPU offload (each component
  moves to the device while it runs, one at a time). Offloading needs the torch backend on a CUDA device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fastinv.errors import FastinvError
from fastinv.kernels import BACKENDS

CPU = torch.device("cpu")
OFFLOADS = ("none", "text", "model")
"""The memory plans of `--offload` (`fastinv.models.offload`)."""


def check_offload(offload: str, device: torch.device, backend: str) -> None:
    """One-line errors, before any loading, for an offload plan this run cannot use: an unknown name, a
    device other than CUDA (no device memory to save), a backend other than torch (graphs hold their own)."""
    if offload not in OFFLOADS:
        raise FastinvError(f"unknown --offload {offload!r}: use {', '.join(OFFLOADS)}")
    if offload != "none" and device.type != "cuda":
        raise FastinvError(f"--offload {offload} needs a CUDA device, the model runs on {device}")
    if offload != "none" and backend != "torch":
        raise FastinvError(f"--offload {offload} needs --backend torch, not {backend}")


@dataclass(frozen=True)
class RunConfig:
    """device, dtype and the fast-path switches; `RunConfig.resolve` gives the defaults (on for CUDA)."""

    device: torch.device = CPU
    dtype: torch.dtype = torch.float32
    compile: bool = False
    cuda_graphs: bool = False
    kernels: str = "auto"
    offload: str = "none"

    def __post_init__(self) -> None:
        if self.kernels not in BACKENDS:
            raise FastinvError(f"unknown kernel backend {self.kernels!r}: use {' or '.join(BACKENDS)}")
        if self.offload not in OFFLOADS:
            raise FastinvError(f"unknown --offload {self.offload!r}: use {', '.join(OFFLOADS)}")

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
        offload: str = "none",
    ) -> RunConfig:
        """enabled None = fast path on for CUDA devices; per-switch values override it. CUDA graphs need a
        CUDA device, no fp16 (its overflow check reads the result on the host every step) and no model
        offload (a captured graph reads the weights at fixed device addresses, which offloading frees)."""
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
        if graphs and offload == "model":
            if cuda_graphs:
                raise FastinvError("CUDA graphs cannot run with --offload model: use --offload text")
            graphs = False
        return cls(device, dtype, compile, graphs, kernels, offload)

    def describe(self) -> str:
        """The fast path in one line, e.g. "compile+cuda_graphs, kernels=auto"."""
        switches = [name for name in ("compile", "cuda_graphs") if getattr(self, name)]
        offload = "" if self.offload == "none" else f", offload={self.offload}"
        return f"{'+'.join(switches) or 'eager'}, kernels={self.kernels}{offload}"

    def record(self) -> dict[str, Any]:
        """The JSON form written with every output set."""
        return {
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "compile": self.compile,
            "cuda_graphs": self.cuda_graphs,
            "kernels": self.kernels,
            "offload": self.offload,
        }
