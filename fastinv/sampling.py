"""The forward ODE sampler: regenerate a clean latent from noise along a sigma schedule, optionally held
close to a source image (RF-Inversion's controlled ODE, for edits) and, for a local edit, on the source's
inversion trajectory outside a mask."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fastinv.conditioning import Conditioning
from fastinv.errors import FastinvError
from fastinv.kernels import StepKernels
from fastinv.kernels.reference import guided, per_sample
from fastinv.methods.base import NFECounter, StepCallback, sigma_batch, step_size
from fastinv.models.base import VelocityModel
from fastinv.run_config import RunConfig
from fastinv.runtime.fast_path import captured


@dataclass(frozen=True)
class SourceControl:
    """RF-Inversion's controlled sampling ODE (Rout et al., ICLR 2025, arXiv:2410.10792, Algorithm 2).

    In fastinv's σ convention the straight path from z at σ to the source latents x0 [B, C, H, W] has
    velocity u = (z − x0)/σ. During sampling steps int(start·N) ≤ i < int(stop·N) (the window of the
    authors' diffusers pipeline, `start_timestep`/`stop_timestep`) the model's velocity (with the target
    prompt) is pulled towards it, v ← v + η·(u − v); the other steps follow the model alone. strength η
    trades the source's layout (η → 1) against the edit (η = 0: plain regeneration). The paper edits with
    η ≈ 0.9–1 over the first ~10–30 % of the steps; the defaults are η = 0.9, steps [0, 25 %).
    """

    x0: torch.Tensor
    strength: float = 0.9
    stop: float = 0.25
    start: float = 0.0

    def __post_init__(self) -> None:
        self.check(self.strength, self.stop, self.start)

    @staticmethod
    def check(strength: float, stop: float, start: float = 0.0) -> None:
        """One-line errors for a strength or a start/stop fraction outside [0, 1] or start > stop (callers
        check before work)."""

        def number(value: object) -> bool:
            return isinstance(value, int | float) and not isinstance(value, bool)

        if not number(strength) or not 0.0 <= strength <= 1.0:
            raise FastinvError(f"edit strength must be a number in [0, 1], got {strength!r}")
        if not number(stop) or not 0.0 <= stop <= 1.0:
            raise FastinvError(f"edit stop must be a fraction of the steps in [0, 1], got {stop!r}")
        if not number(start) or not 0.0 <= start <= stop:
            raise FastinvError(f"edit start must be a fraction in [0, stop={stop}], got {start!r}")

    def window(self, n: int) -> range:
        """The controlled sampling steps of n (empty when η = 0); int() truncates, as in the authors' code."""
        if self.strength == 0:
            return range(0)
        return range(int(self.start * n), min(int(self.stop * n), n))


@dataclass(frozen=True)
class SourceTrajectory:
    """Local edits: outside a mask, the sampled latents follow the source's inversion trajectory.

    mask: [1 or B, 1, h, w] float32 weights in [0, 1] at latent size, 1 = editable (`masks.Mask.at`);
    trajectory: the inversion's N+1 latents [B, C, h, w], from σ_N = 0 up to σ_0 (`InversionResult`'s).
    After sampling step i, z(σ_{i+1}) ← m·z + (1 − m)·z_src(σ_{i+1}), so where m = 0 the edit ends on the
    source latents x0 themselves and where m = 1 it is the unmasked edit's update.
    """

    mask: torch.Tensor
    trajectory: Sequence[torch.Tensor]

    def blend(self, i: int, z: torch.Tensor) -> torch.Tensor:
        """z at σ_{i+1} after sampling step i, blended with the source latent at the same σ."""
        source = self.trajectory[len(self.trajectory) - 2 - i]  # trajectory[k] is at σ_{N−k}
        return torch.lerp(source.to(z), z, self.mask.to(z))


@torch.no_grad()
def sample_euler(
    model: VelocityModel,
    z: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Conditioning,
    *,
    callback: StepCallback | None = None,
    control: SourceControl | None = None,
    source: SourceTrajectory | None = None,
    config: RunConfig | None = None,
) -> tuple[torch.Tensor, int]:
    """Integrate dz/dσ = v from σ_0 (noise) to σ_N = 0; returns (the clean latent [B, C, H, W] float32,
    the denoiser calls counted).

    Step: z(σ_{i+1}) = z(σ_i) + (σ_{i+1} − σ_i)·v(z(σ_i), σ_i). With cond.guidance_scale != 1 every
    call is a CFG pair batched into one denoiser call (1 NFE of batch 2B). `control` pulls the first
    steps towards a source image (see SourceControl); without it the CFG combine is fused into the update.
    `source` keeps the latents outside a mask on the source's inversion trajectory (see SourceTrajectory).
    `config` (a RunConfig; None: eager defaults) picks the step kernels and CUDA-graph capture.
    """
    config = config or RunConfig()
    ops = StepKernels(config.kernels)
    model = NFECounter(model)
    n = len(sigmas) - 1
    controlled = range(0) if control is None else control.window(n)
    x0 = None if control is None else control.x0.float()
    if source is not None and len(source.trajectory) != n + 1:
        raise ValueError(f"a masked edit needs the N+1 = {n + 1} latents of the inversion's trajectory")

    def euler_step(z: torch.Tensor, sigma: torch.Tensor, h: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
        v, v_null = model.branches(z, sigma, cond)
        if controlled:
            v, v_null = guided(v, v_null, cond.guidance_scale), None
            # RF-Inversion: steer towards the straight path to the source latents
            v = v + per_sample(eta, z) * ((z - x0) / per_sample(sigma, z) - v)
        # Euler method
        return ops.cfg_euler_update(z, v, h, v_null=v_null, guidance=cond.guidance_scale)

    step = captured(euler_step, model, z.device, capture=config.cuda_graphs)
    z = z.float()
    for i in range(n):
        # σ runs down: sigma_lower < sigma (in fastinv sigma_next always means an inversion step's larger σ)
        sigma, sigma_lower = sigmas[i], sigmas[i + 1]
        eta = sigma_batch(control.strength if i in controlled else 0.0, z)
        z = step(z, sigma_batch(sigma, z), step_size(sigma, sigma_lower, z), eta)
        if source is not None:
            z = source.blend(i, z)
        if callback is not None:
            callback(
                {"i": i, "sigma": float(sigma), "sigma_lower": float(sigma_lower), "z": z, "nfe": model.calls}
            )
    return z, model.calls
