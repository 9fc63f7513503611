"""EasyInv and ReNoise on analytic fields: exact reductions to Euler, blending, fixed-point residuals, NFE."""

from __future__ import annotations

import inspect
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastinv.conditioning import Conditioning
from fastinv.errors import FastinvError
from fastinv.methods.easyinv import PAPER, SDXL_CODE, invert_easyinv
from fastinv.methods.euler import invert_euler
from fastinv.methods.renoise import invert_renoise
from fastinv.schedule import flow_sigmas

COND = Conditioning(prompt="", prompt_embeds=torch.zeros(1, 1, 1))


class ConstantField:
    """v(z, σ) = u: Euler inversion gives z_σ = x0 + σ·u exactly."""

    def __init__(self, u: torch.Tensor) -> None:
        self.u = u

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.u.expand_as(z)


class LinearField:
    """v(z, σ) = a·z."""

    def __init__(self, a: float) -> None:
        self.a = a

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.a * z


class TanhField:
    """v(z, σ) = tanh(W z) + sin(3σ)·u, W mixing channels: nonlinear in z, explicitly σ-dependent."""

    def __init__(self, seed: int = 0, channels: int = 3) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.w = 1.5 * torch.randn(channels, channels, generator=gen)
        self.u = torch.randn(1, channels, 4, 4, generator=gen)

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        assert sigma.shape == (z.shape[0],) and sigma.dtype == torch.float32
        return (
            torch.tanh(torch.einsum("dc,bchw->bdhw", self.w, z))
            + torch.sin(3 * sigma)[:, None, None, None] * self.u
        )


def _x0(seed: int) -> torch.Tensor:
    return torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


def _worst_residual(method, field: TanhField, x0: torch.Tensor, sigmas: torch.Tensor, **options) -> float:
    """max over steps of ‖z_i − (z_{i+1} + h·v(z_i, σ_i))‖ along `method`'s trajectory (σ = 0 → 1)."""
    trajectory = method(field, x0, sigmas, COND, keep_trajectory=True, **options).trajectory
    up, worst = sigmas.flip(0), 0.0
    for k, (z, z_next) in enumerate(itertools.pairwise(trajectory)):
        v = field(z_next, up[k + 1].float().expand(z.shape[0]), COND)
        worst = max(worst, (z_next - z - float(up[k + 1] - up[k]) * v).norm().item())
    return worst


def test_easyinv_presets() -> None:
    defaults = inspect.signature(invert_easyinv).parameters
    assert {name: defaults[name].default for name in SDXL_CODE} == SDXL_CODE
    assert SDXL_CODE == {"eta": 0.8, "window": (0.85, 0.95)}


@settings(max_examples=20, deadline=None)
@given(
    steps=st.integers(1, 40),
    start=st.floats(0.0, 1.0),
    length=st.floats(0.0, 1.0),
    eta=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**16),
)
def test_easyinv_reduces_to_euler(steps: int, start: float, length: float, eta: float, seed: int) -> None:
    x0, sigmas, field = _x0(seed), flow_sigmas({"shift": 3.0}, steps), TanhField(seed)
    euler = invert_euler(field, x0, sigmas, COND).z_T
    no_blend = invert_easyinv(field, x0, sigmas, COND, eta=1.0, window=(start, start + length))
    empty_window = invert_easyinv(field, x0, sigmas, COND, eta=eta, window=(start, start))
    assert torch.equal(no_blend.z_T, euler) and torch.equal(empty_window.z_T, euler)
    assert no_blend.nfe == empty_window.nfe == steps


@settings(max_examples=10, deadline=None)
@given(eta=st.floats(0.05, 1.0))
def test_easyinv_blends_with_previous_latent(eta: float) -> None:
    # N = 10, window (0.05, 0.25): 0.5 < k < 2.5 blends after k = 1 and 2 steps. With a constant field each
    # blend z̃_k = η·z_k + (1−η)·z̃_{k−1} takes back (1−η) of the previous increment h·u.
    x0, u = _x0(0), torch.full((1, 3, 4, 4), 2.0)
    res = invert_easyinv(
        ConstantField(u),
        x0,
        torch.linspace(1, 0, 11, dtype=torch.float64),
        COND,
        eta=eta,
        window=PAPER["window"],
    )
    torch.testing.assert_close(res.z_T, x0 + (0.8 + 0.2 * eta) * u, atol=1e-5, rtol=0)


def test_easyinv_velocity_at_unblended_latent() -> None:
    # As in the authors' code, the model sees the Euler output z_k; the blend only moves the step's base.
    field, x0, sigmas, seen = TanhField(), _x0(3), torch.linspace(1, 0, 11, dtype=torch.float64), []

    def recording(z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        seen.append(z)
        return field(z, sigma, cond)

    res = invert_easyinv(recording, x0, sigmas, COND, keep_trajectory=True)
    assert len(seen) == 10 and all(map(torch.equal, seen, res.trajectory[:-1]))
    assert not torch.equal(res.z_T, invert_euler(field, x0, sigmas, COND).z_T)


@settings(max_examples=20, deadline=None)
@given(steps=st.integers(1, 30), average_last=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_renoise_without_iterations_is_euler(steps: int, average_last: int, seed: int) -> None:
    x0, sigmas, field = _x0(seed), flow_sigmas({"shift": 3.0}, steps), TanhField(seed)
    res = invert_renoise(field, x0, sigmas, COND, iterations=0, average_last=average_last)
    assert torch.equal(res.z_T, invert_euler(field, x0, sigmas, COND).z_T)
    assert res.nfe == steps


@settings(max_examples=20, deadline=None)
@given(steps=st.integers(1, 20), iterations=st.integers(0, 6), average_last=st.integers(1, 8))
def test_renoise_nfe(steps: int, iterations: int, average_last: int) -> None:
    sigmas = flow_sigmas({"shift": 3.0}, steps)
    res = invert_renoise(TanhField(), _x0(0), sigmas, COND, iterations=iterations, average_last=average_last)
    assert res.nfe == steps * (iterations + 1)


@pytest.mark.parametrize(("average_last", "factor"), [(1, 1.9375), (2, 1.90625), (10, 1.765625)])
def test_renoise_averages_last_iterates(average_last: int, factor: float) -> None:
    # One step σ 0 → 1 on v = z/2: iterates 1.5, 1.75, 1.875, 1.9375 (× x0); mean of the last `average_last`.
    x0 = _x0(0)
    res = invert_renoise(
        LinearField(0.5),
        x0,
        torch.tensor([1.0, 0.0], dtype=torch.float64),
        COND,
        iterations=3,
        average_last=average_last,
    )
    torch.testing.assert_close(res.z_T, factor * x0, atol=0, rtol=1e-6)


def test_renoise_lowers_fixed_point_residual() -> None:
    field, x0, sigmas = TanhField(), _x0(1), torch.linspace(1, 0, 9, dtype=torch.float64)
    euler = _worst_residual(invert_euler, field, x0, sigmas)
    renoise = [
        _worst_residual(invert_renoise, field, x0, sigmas, iterations=k, average_last=1) for k in range(5)
    ]
    assert renoise[0] == pytest.approx(euler)
    assert all(fine < 0.5 * coarse for coarse, fine in itertools.pairwise(renoise))
    assert _worst_residual(invert_renoise, field, x0, sigmas) < 0.01 * euler


@pytest.mark.parametrize(("iterations", "average_last"), [(-1, 2), (4, 0)])
def test_renoise_rejects_bad_options(iterations: int, average_last: int) -> None:
    with pytest.raises(FastinvError, match="ReNoise"):
        invert_renoise(
            TanhField(),
            _x0(0),
            flow_sigmas({"shift": 3.0}, 4),
            COND,
            iterations=iterations,
            average_last=average_last,
        )


@pytest.mark.parametrize(("method", "per_step"), [(invert_easyinv, 1), (invert_renoise, 5)])
def test_callback_and_trajectory(method, per_step: int) -> None:
    x0, sigmas, seen = _x0(2), flow_sigmas({"shift": 3.0}, 7), []
    res = method(TanhField(), x0, sigmas, COND, callback=seen.append, keep_trajectory=True)
    assert [s["nfe"] for s in seen] == [per_step * k for k in range(1, 8)]
    assert [s["i"] for s in seen] == list(range(6, -1, -1))
    assert seen[0]["sigma"] == 0.0 and seen[-1]["sigma_next"] == pytest.approx(1.0)
    assert len(res.trajectory) == 8
    assert torch.equal(res.trajectory[0], x0) and torch.equal(res.trajectory[-1], res.z_T)
    assert res.z_T.dtype == torch.float32 and res.seconds > 0
