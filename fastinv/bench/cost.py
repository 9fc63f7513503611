"""Denoiser-equivalent cost: what an inversion spends, in units of one denoiser forward.

cost = NFE + solver calls × (solver FLOPs ÷ denoiser FLOPs), both forwards counted at batch 1 on the
image's latent size (`fastinv.solver.flops`: matmuls, convolutions, attention, on the meta device). A
training-free method's cost is its NFE; DeepInv's adds the share of its solver. The Pareto front of
(cost, PSNR) is what a user picks from: no other point is both cheaper (or as cheap) and better.
"""

from __future__ import annotations

from typing import Any

from fastinv.models.base import FlowModel
from fastinv.runtime.graph import GraphSolver
from fastinv.solver.flops import denoiser_cost, network_cost
from fastinv.solver.model import SOLVER_CLASSES, SolverModel, TorchSolver, solver_family


def _solver_network(solver: SolverModel) -> tuple[type, dict[str, Any]]:
    if isinstance(solver, TorchSolver):
        return type(solver.network), {k: v for k, v in solver.config.items() if not k.startswith("_")}
    if isinstance(solver, GraphSolver):
        name = "WarmStartSolver" if solver_family(solver.config) == "deepinv-warm" else "DeepInvSolver"
        return SOLVER_CLASSES[name], dict(solver.config)
    raise TypeError(f"cannot count the FLOPs of a {type(solver).__name__}")


def solver_flop_ratio(model: FlowModel, solver: SolverModel, latent: tuple[int, int, int]) -> float:
    """Solver FLOPs ÷ denoiser FLOPs, one forward each at batch 1 on latents (C, H, W), prompt "" tokens."""
    tokens = model.conditioning("").prompt_embeds.shape[1]
    denoiser = denoiser_cost(model.family, dict(model.velocity.config), latent, tokens)
    network_class, config = _solver_network(solver)
    return network_cost(network_class, config, latent, tokens).flops / denoiser.flops


def cost(nfe: float, solver_calls: float, ratio: float | None) -> float:
    """Denoiser-equivalent cost of one inversion."""
    return nfe + (solver_calls * ratio if solver_calls else 0.0)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, quality) points no other point dominates (cost ≤ and quality ≥, one strictly),
    in ascending cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front
