"""What every graph backend shares: an exported graph behind the VelocityModel / SolverModel calls.

A `Graph` (an ONNX Runtime session or a TensorRT engine) runs `{input name: tensor}` → its output tensor
with float32 IO and knows its `GraphSpec`. `GraphVelocity` and `GraphSolver` put any such graph behind
the calls the method code makes, so the methods never know which backend runs the network. Which backends
exist and how each loads a folder's graphs: `fastinv.runtime.backends`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from fastinv.conditioning import DEFAULT_EMBEDDED_GUIDANCE, Conditioning
from fastinv.errors import FastinvError
from fastinv.kernels.reference import guided
from fastinv.models.base import FlowModel, cfg_branches
from fastinv.runtime.spec import GraphSpec
from fastinv.runtime.weights import expect_weights


def graph_stem(kind: str, precision: str) -> str:
    """The file stem `fastinv export` gives a graph and its engines: "velocity.fp32", "solver.bf16"."""
    return f"{kind}.{precision}"


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


class Graph(Protocol):
    """An exported graph in some backend: float32 tensors by input name in, the float32 output out."""

    path: Path
    spec: GraphSpec
    device: torch.device

    def run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor: ...


class GraphVelocity:
    """A VelocityModel on an exported velocity graph: the torch adapters' CFG batching and blending
    (`fastinv.models.base.cfg_branches`) around a `predict` that runs in the backend. Not differentiable."""

    backend = "graph"

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.dtype = torch.float32  # the graph's IO dtype; `precision` is the network's inside it
        self.precision = graph.spec.precision

    @property
    def device(self) -> torch.device:
        return self.graph.device

    @property
    def config(self) -> dict[str, Any]:
        """The transformer's config the graph was exported from."""
        return self.graph.spec.config

    @staticmethod
    def expect_model(graph: Graph, model: FlowModel | None) -> None:
        """One-line error unless `graph` was exported from `model`'s family, config and weights."""
        if model is not None:
            graph.spec.expect_model(graph.path, model.family, model.velocity.config)
            expect_weights(graph.path, graph.spec.weights, model.weights_dir)

    def predict(
        self,
        z: torch.Tensor,
        sigma: torch.Tensor,
        prompt_embeds: torch.Tensor,
        pooled_embeds: torch.Tensor | None,
        cond: Conditioning,
    ) -> torch.Tensor:
        """z: [B, C, H, W]; sigma: [B] σ (the graph makes the transformer's timestep) → v [B, C, H, W]."""
        if z.requires_grad:
            raise FastinvError(
                f"the {self.backend} backend is not differentiable: use the torch backend for this method"
            )
        inputs = {"latents": z, "sigma": sigma, "prompt_embeds": prompt_embeds}
        if pooled_embeds is not None:
            inputs["pooled_embeds"] = pooled_embeds
        if "guidance" in self.graph.spec.inputs:
            value = DEFAULT_EMBEDDED_GUIDANCE if cond.embedded_guidance is None else cond.embedded_guidance
            inputs["guidance"] = torch.full_like(sigma, value, dtype=torch.float32)
        return self.graph.run(inputs)

    def branches(
        self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(v_prompt, v_null) float32 from ONE graph call, v_null None without CFG."""
        fp16 = "export bf16 or fp32" if self.precision == "fp16" else None
        return cfg_branches(
            self.predict, z, sigma, cond, dtype=self.dtype, device=self.device, fp16_remedy=fp16
        )

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        v, v_null = self.branches(z, sigma, cond)
        return guided(v, v_null, cond.guidance_scale)


class GraphSolver:
    """A SolverModel on an exported solver graph, with TorchSolver's contract: float32 state in and out; for
    the paper design the prompt (never the null branch) broadcast to the batch, for the warm-start design
    f_prev."""

    backend = "graph"

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.warm_start = graph.spec.family == "deepinv-warm"

    @property
    def device(self) -> torch.device:
        return self.graph.device

    @property
    def config(self) -> dict[str, Any]:
        """The solver network's config the graph was exported from."""
        return self.graph.spec.config

    def __call__(
        self,
        v: torch.Tensor,
        z: torch.Tensor,
        x0: torch.Tensor,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
        cond: Conditioning,
        f_prev: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """v, z, x0, f_prev: [B, C, H, W] float32; sigma < sigma_next: [B] σ → ε̂ [B, C, H, W] float32."""
        inputs = {"v": v, "z": z, "x0": x0, "sigma": sigma, "sigma_next": sigma_next}
        if self.warm_start:
            if f_prev is None:
                raise FastinvError("a warm-start solver needs f_prev (the previous step's noise)")
            inputs["f_prev"] = f_prev
        else:
            batch = v.shape[0]
            inputs["text"] = cond.prompt_embeds.expand(batch, -1, -1)
            if cond.pooled_embeds is not None:
                inputs["pooled"] = cond.pooled_embeds.expand(batch, -1)
        eps = self.graph.run(inputs)
        if self.graph.spec.precision == "fp16" and not torch.isfinite(eps).all():  # a host sync: fp16 only
            raise FastinvError(
                f"non-finite solver output in fp16 at σ={sigma[0].item():.4f}: export bf16 or fp32"
            )
        return eps
