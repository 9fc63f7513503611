"""Fused step kernels for the elementwise work between denoiser calls (installed as ``fastinv.kernels``).

Each op has a torch reference (`reference`) and a Triton kernel (`triton_glue`) of the same signature.
`StepKernels(backend)` dispatches: Triton for CUDA tensors when `triton` is installed, the reference
elsewhere (CPU, or with backend "torch", the run's switch for when torch.compile fuses the glue better).

    cfg_euler_update(z, v, h, *, v_null, guidance)                  z + h·(v_null + g·(v − v_null))
    fixed_point_update(z, v, h, *, v_null, guidance) -> (z + h·f, f),  f = v_null + g·(v − v_null)
    deepinv_update(z, eps, h, *, eps_null, guidance, eps_pseudo, weights)   z + h·(λ1·ε̄ + λ2·ε*)
    easyinv_update(z, z_prev, v, h, eta) -> (z̃ + h·v, z̃),  z̃ = η·z + (1 − η)·z_prev
    renoise_update(z, v, h, average, weight) -> (z + h·v, average + w·(z + h·v))
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

import torch
from fastinv.kernels import reference
from fastinv.kernels.reference import Coefficient

from fastinv.errors import FastinvError
from fastinv.request_checks import KERNEL_BACKENDS

BACKENDS = KERNEL_BACKENDS


def triton_available() -> bool:
    """Whether the `triton` package is installed (it ships with CUDA builds of torch)."""
    return importlib.util.find_spec("triton") is not None


class StepKernels:
    """The step ops on one backend: "auto" = Triton on CUDA tensors (reference elsewhere), "torch" = the
    references everywhere. A run's `RunConfig.kernels` names the backend; methods call `run.kernels.…`."""

    def __init__(self, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise FastinvError(f"unknown kernel backend {backend!r}: use {' or '.join(BACKENDS)}")
        self.backend = backend

    def implementation(self, z: torch.Tensor) -> ModuleType:
        """The module whose ops run on z: `triton_glue` or `reference`."""
        if z.is_cuda and self.backend == "auto" and triton_available():
            from fastinv.kernels import triton_glue

            return triton_glue
        return reference

    def cfg_euler_update(
        self,
        z: torch.Tensor,
        v: torch.Tensor,
        h: Coefficient,
        *,
        v_null: torch.Tensor | None = None,
        guidance: float = 1.0,
    ) -> torch.Tensor:
        """Euler step with the CFG combine (see `reference.cfg_euler_update`)."""
        return self.implementation(z).cfg_euler_update(z, v, h, v_null=v_null, guidance=guidance)

    def fixed_point_update(
        self,
        z: torch.Tensor,
        v: torch.Tensor,
        h: Coefficient,
        *,
        v_null: torch.Tensor | None = None,
        guidance: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed-point iterate with the CFG combine (see `reference.fixed_point_update`)."""
        return self.implementation(z).fixed_point_update(z, v, h, v_null=v_null, guidance=guidance)

    def deepinv_update(
        self,
        z: torch.Tensor,
        eps: torch.Tensor,
        h: Coefficient,
        *,
        eps_null: torch.Tensor | None = None,
        guidance: float = 1.0,
        eps_pseudo: torch.Tensor | None = None,
        weights: tuple[float, float] = (1.0, 0.0),
    ) -> torch.Tensor:
        """DeepInv noise fusion and latent update (see `reference.deepinv_update`)."""
        return self.implementation(z).deepinv_update(
            z, eps, h, eps_null=eps_null, guidance=guidance, eps_pseudo=eps_pseudo, weights=weights
        )

    def easyinv_update(
        self, z: torch.Tensor, z_prev: torch.Tensor, v: torch.Tensor, h: Coefficient, eta: Coefficient
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """EasyInv blend and update (see `reference.easyinv_update`)."""
        return self.implementation(z).easyinv_update(z, z_prev, v, h, eta)

    def renoise_update(
        self, z: torch.Tensor, v: torch.Tensor, h: Coefficient, average: torch.Tensor, weight: Coefficient
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ReNoise iterate and running average (see `reference.renoise_update`)."""
        return self.implementation(z).renoise_update(z, v, h, average, weight)


__all__ = [
    "BACKENDS",
    "StepKernels",
    "triton_available",
]
