"""What every inversion method shares: its result type, NFE counting, timing and step callback."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from fastinv.conditioning import Conditioning
from fastinv.kernels import StepKernels
from fastinv.models.base import VelocityModel
from fastinv.run_config import RunConfig
from fastinv.runtime.fast_path import captured

StepCallback = Callable[[dict[str, Any]], None]
"""Called after each step with {"i", "sigma", "sigma_next", "z", "nfe"}: progress bars, trajectories.
An inversion step runs σ up (sigma < sigma_next); Euler sampling runs σ down and passes "sigma_lower"
(< "sigma") in place of "sigma_next"."""


@dataclass
class InversionResult:
    """z_T: [B, C, H, W] float32 noise at σ_0 (≈1); nfe: denoiser calls (a CFG pair batched in one call
    counts 1); seconds: wall time of the inversion; trajectory: latents from σ_N = 0 up to σ_0, if kept;
    solver_calls: calls of a trained solver network (DeepInv), 0 for training-free methods."""

    z_T: torch.Tensor
    nfe: int
    seconds: float
    trajectory: list[torch.Tensor] | None = None
    solver_calls: int = 0


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

    def branches(
        self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(v_prompt, v_null | None) for fused CFG kernels; models without branches give (v, None)."""
        self.calls += 1
        if hasattr(self.model, "branches"):
            return self.model.branches(z, sigma, cond)
        return self.model(z, sigma, cond), None


class Stopwatch:
    """Seconds since construction. On a CUDA device: CUDA events on the current stream, the start recorded
    at construction (it fires when the GPU reaches it, so work queued before is not counted, and no host
    sync is needed) and the end at `seconds()`, which waits for it; elsewhere: time.perf_counter."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self._start_event = self._record()
        else:
            self.start = time.perf_counter()

    def _record(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def seconds(self) -> float:
        if self.device.type == "cuda":
            end = self._record()
            end.synchronize()
            return self._start_event.elapsed_time(end) / 1e3
        return time.perf_counter() - self.start


def sigma_batch(sigma: torch.Tensor | float, z: torch.Tensor) -> torch.Tensor:
    """A scalar (σ as a float64 schedule entry, or a step weight) → [B] float32 on z's device.

    Called every step: the host-to-device copy is non-blocking (safe from a host temporary), because a
    blocking one synchronises the stream and the host could no longer queue the next step ahead."""
    value = torch.as_tensor(sigma, dtype=torch.float32)
    return value.to(device=z.device, non_blocking=True).expand(z.shape[0])


def step_size(sigma: torch.Tensor, sigma_next: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """h = σ_next − σ (taken in float64) as [B] float32 on z's device: a tensor, so CUDA graphs replay it."""
    return sigma_batch(sigma_next - sigma, z)


def keep_best(
    score: torch.Tensor,
    best_score: torch.Tensor,
    candidates: tuple[torch.Tensor, ...],
    best: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Per sample, take `candidates` ([B, ...] each) over `best` where `score` [B] beats `best_score`.

    Returns the updated (best_score, best): the lowest-score iterate so far, for methods that iterate.
    """
    better = score < best_score
    mask = better.view(-1, *([1] * (candidates[0].dim() - 1)))
    chosen = tuple(torch.where(mask, c.detach(), b) for c, b in zip(candidates, best, strict=True))
    return torch.where(better, score.detach(), best_score), chosen


def upward_steps(sigmas: torch.Tensor) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(i, σ_{i+1}, σ_i) for i = N−1 … 0: the inversion's steps from σ_N = 0 up to σ_0 (sampling order)."""
    for i in reversed(range(len(sigmas) - 1)):
        yield i, sigmas[i + 1], sigmas[i]


def in_window(i: int, n: int, window: tuple[float, float]) -> bool:
    """Whether the step of sampling index i (as `upward_steps` yields it) lies strictly inside the fractional
    `window` of the n inversion steps counted from the clean end: start·n < k < end·n, k = n − 1 − i (the
    authors' EasyInv and DeepInv code test their windows so)."""
    start, end = window
    k = n - 1 - i  # inversion step k: 0 is the first step up from the clean latent
    return start * n < k < end * n


class InversionRun:
    """The bookkeeping every method shares, so its function holds only the update rule.

    `run.model` counts NFE; `run.kernels` are the step kernels of the run's `config` (a RunConfig; None:
    eager defaults); `run.captured(fn)` is the step function `fn(*tensors)` captured in a CUDA graph when
    the config asks for it, else `fn`; `run.step(i, sigma, sigma_next, z, **extra)`
    keeps the trajectory and calls the callback with {"i", "sigma", "sigma_next", "z", "nfe", **extra};
    `run.result(z)` stops the clock.
    """

    def __init__(
        self,
        model: VelocityModel,
        x0: torch.Tensor,
        callback: StepCallback | None,
        keep_trajectory: bool,
        config: RunConfig | None = None,
    ) -> None:
        self.config = config or RunConfig()
        self.kernels = StepKernels(self.config.kernels)
        self.model = NFECounter(model)
        self.clock = Stopwatch(x0.device)
        self.callback = callback
        self.trajectory = [x0.float()] if keep_trajectory else None
        self.device = x0.device

    def captured(self, fn: Callable[..., Any], *, enabled: bool = True) -> Callable[..., Any]:
        return captured(fn, self.model, self.device, capture=enabled and self.config.cuda_graphs)

    def step(
        self, i: int, sigma: torch.Tensor, sigma_next: torch.Tensor, z: torch.Tensor, **extra: Any
    ) -> None:
        if self.trajectory is not None:
            self.trajectory.append(z)
        if self.callback is not None:
            info = {
                "i": i,
                "sigma": float(sigma),
                "sigma_next": float(sigma_next),
                "z": z,
                "nfe": self.model.calls,
            }
            self.callback(info | extra)

    def result(self, z: torch.Tensor, solver_calls: int = 0) -> InversionResult:
        return InversionResult(
            z_T=z,
            nfe=self.model.calls,
            seconds=self.clock.seconds(),
            trajectory=self.trajectory,
            solver_calls=solver_calls,
        )
