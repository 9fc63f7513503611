"""Training data for a solver: the steps a solver actually takes, each with its exact fixed-point target.

`collect_steps` inverts clean latents with the `deepinv` method itself, through a solver wrapper that, at
every call, keeps the solver's inputs and solves that step's implicit equation to convergence
(`solve_fixed_point`, started at the solver's own answer). The rollout goes on with the solver's ε̂, so the
states are those the solver visits (on-policy, as DAgger collects them); an untrained warm-start solver
returns v, so round 0 collects the trajectories of `warm_fixed_point` with one correction.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from fastinv.conditioning import Conditioning
from fastinv.methods.deepinv import invert_deepinv
from fastinv.models.base import VelocityModel
from fastinv.solver.fixed_point import solve_fixed_point
from fastinv.solver.model import SolverModel


@dataclass
class Steps:
    """M recorded solver calls. v, z, f_prev, target: [M, C, H, W] float32 (target = the fixed point f*);
    crop: [M] index of the clean latent; sigma, sigma_next: [M] σ; steps, k: [M] the schedule length T and
    the inversion step (0 = clean end); residual: [M] relative residual the target reached; evaluations:
    [M] denoiser calls the solve took."""

    v: torch.Tensor
    z: torch.Tensor
    f_prev: torch.Tensor
    target: torch.Tensor
    crop: torch.Tensor
    sigma: torch.Tensor
    sigma_next: torch.Tensor
    steps: torch.Tensor
    k: torch.Tensor
    residual: torch.Tensor
    evaluations: torch.Tensor

    def __len__(self) -> int:
        return len(self.crop)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def concat(cls, parts: list[Steps]) -> Steps:
        return cls(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)})


@dataclass
class _Recorder:
    """A SolverModel that records each call's inputs and converged target, then answers as `solver` does."""

    solver: SolverModel
    velocity: VelocityModel
    tolerance: float
    max_evaluations: int
    memory: int
    records: list[dict[str, torch.Tensor]] = field(default_factory=list)

    @property
    def warm_start(self) -> bool:
        return self.solver.warm_start

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
        eps = self.solver(v, z, x0, sigma, sigma_next, cond, f_prev)
        h = (sigma_next - sigma).view(-1, *([1] * (z.dim() - 1)))
        solved = solve_fixed_point(
            lambda f: self.velocity(z + h * f, sigma_next, cond),
            eps,
            tolerance=self.tolerance,
            max_evaluations=self.max_evaluations,
            memory=self.memory,
        )
        previous = torch.zeros_like(z) if f_prev is None else f_prev
        self.records.append(
            {
                "v": v.float(),
                "z": z.float(),
                "f_prev": previous.float(),
                "target": solved.f.float(),
                "sigma": sigma.float(),
                "sigma_next": sigma_next.float(),
                "residual": solved.residual.float(),
                "evaluations": torch.full_like(sigma, solved.evaluations, dtype=torch.int64),
            }
        )
        return eps


@torch.no_grad()
def collect_steps(
    velocity: VelocityModel,
    solver: SolverModel,
    x0: torch.Tensor,
    crops: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Conditioning,
    *,
    tolerance: float,
    max_evaluations: int,
    memory: int = 5,
) -> Steps:
    """Invert x0 [B, C, H, W] (crop indices `crops` [B]) over the N-step schedule `sigmas` with `solver`
    via `invert_deepinv`; returns the B·N steps, each with its fixed-point target, on the CPU."""
    recorder = _Recorder(solver, velocity, tolerance, max_evaluations, memory)
    invert_deepinv(velocity, x0, sigmas, cond, solver=recorder)
    n, batch = len(sigmas) - 1, x0.shape[0]
    columns = {key: torch.cat([r[key] for r in recorder.records]).cpu() for key in recorder.records[0]}
    k = torch.arange(n).repeat_interleave(batch)
    return Steps(
        **columns,
        crop=crops.cpu().repeat(n),
        steps=torch.full((n * batch,), n, dtype=torch.int64),
        k=k,
    )
