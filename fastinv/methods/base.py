"""What every inversion method shares: its result type, NFE counting, timing and step callback."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from fastinv.conditioning import Conditioning
from fastinv.models.base import VelocityModel

StepCallback = Callable[[dict[str, Any]], None]
"""Called after each step with {"i", "sigma", "sigma_next", "z", "nfe"}: progress bars, trajectories."""


@dataclass
class InversionResult:
    """z_T: [B, C, H, W] float32 noise at σ_0 (≈1); nfe: denoiser calls (a CFG pair batched in one call
    counts 1); seconds: wall time of the inversion; trajectory: latents from σ_N = 0 up to σ_0, if kept."""

    z_T: torch.Tensor
    nfe: int
    seconds: float
    trajectory: list[torch.Tensor] | None = None


class InversionMethod(Protocol):
    """`invert_<name>(model, x0, sigmas, cond, *, callback, keep_trajectory, **options)`."""

    def __call__(
        self,
        model: VelocityModel,
        x0: torch.Tensor,
        sigmas: torch.Tensor,
        cond: Conditioning,
        *,
        callback: StepCallback | None = None,
        keep_trajectory: bool = False,
    ) -> InversionResult: ...


class NFECounter:
    """Wraps a VelocityModel and counts its calls: methods cannot under-report their NFE."""

    def __init__(self, model: VelocityModel) -> None:
        self.model = model
        self.calls = 0

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        self.calls += 1
        return self.model(z, sigma, cond)


class Stopwatch:
    """Wall time that waits for queued GPU work before reading the clock."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._sync()
        self.start = time.perf_counter()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def seconds(self) -> float:
        self._sync()
        return time.perf_counter() - self.start


def sigma_batch(sigma: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Scalar σ (float64 schedule entry) → [B] float32 on z's device."""
    return sigma.to(device=z.device, dtype=torch.float32).expand(z.shape[0])
