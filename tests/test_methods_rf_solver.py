"""RF-Solver and FireFlow on analytic fields: second order, NFE, which velocity FireFlow reuses."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastinv.conditioning import Conditioning
from fastinv.methods.euler import invert_euler
from fastinv.methods.rf_solver import invert_fireflow, invert_rf_solver
from fastinv.schedule import flow_sigmas

COND = Conditioning(prompt="", prompt_embeds=torch.zeros(1, 1, 1))


class AffineField:
    """v(z, σ) = a·z + σ·u, whose flow from x0 at σ = 0 is z(σ) = e^{aσ}·x0 + (e^{aσ} − 1 − aσ)/a²·u."""

    def __init__(self, a: float, u: torch.Tensor) -> None:
        self.a, self.u = a, u

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        assert sigma.shape == (z.shape[0],) and sigma.dtype == torch.float32
        return self.a * z + sigma[:, None, None, None] * self.u

    def exact(self, x0: torch.Tensor, sigma: float) -> torch.Tensor:
        growth = math.exp(self.a * sigma)
        return growth * x0.double() + (growth - 1 - self.a * sigma) / self.a**2 * self.u.double()


class RecordingField(AffineField):
    """AffineField that logs the σ of every call."""

    def __init__(self, a: float, u: torch.Tensor) -> None:
        super().__init__(a, u)
        self.sigmas: list[float] = []

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        self.sigmas.append(float(sigma[0]))
        return super().__call__(z, sigma, cond)


def _problem(seed: int = 0) -> tuple[AffineField, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x0, u = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(1, 3, 4, 4, generator=gen)
    return AffineField(0.8, u), x0


@pytest.mark.parametrize(
    ("method", "low", "high"), [(invert_euler, 1.6, 2.4), (invert_rf_solver, 3, 5), (invert_fireflow, 3, 5)]
)
def test_halving_the_step_cuts_the_error_by_the_order(method, low: float, high: float) -> None:
    field, x0 = _problem()
    exact = field.exact(x0, 1.0)
    errors = [
        (method(field, x0, torch.linspace(1, 0, n + 1, dtype=torch.float64), COND).z_T - exact)
        .abs()
        .max()
        .item()
        for n in (8, 16, 32)
    ]
    for coarse, fine in itertools.pairwise(errors):
        assert low <= coarse / fine <= high


@settings(max_examples=20, deadline=None)
@given(steps=st.integers(1, 40), shift=st.floats(0.5, 6.0))
def test_nfe_is_counted_as_declared(steps: int, shift: float) -> None:
    field, x0 = _problem()
    sigmas = flow_sigmas({"shift": shift}, steps)
    assert invert_rf_solver(field, x0, sigmas, COND).nfe == 2 * steps
    assert invert_fireflow(field, x0, sigmas, COND).nfe == steps + 1


@settings(max_examples=20, deadline=None)
@given(steps=st.integers(1, 30), shift=st.floats(0.5, 6.0), seed=st.integers(0, 2**16))
def test_constant_field_is_integrated_exactly(steps: int, shift: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x0, u = torch.randn(1, 3, 4, 4, generator=gen), torch.randn(1, 3, 4, 4, generator=gen)
    sigmas = flow_sigmas({"shift": shift}, steps)

    def constant(z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return u.expand_as(z)

    for method in (invert_rf_solver, invert_fireflow):
        torch.testing.assert_close(method(constant, x0, sigmas, COND).z_T, x0 + u, atol=1e-5, rtol=0)


def test_one_step_is_the_midpoint_rule() -> None:
    # v = z/2 over σ 0 → 1: z_mid = 1.25·x0, z_1 = x0 + 0.5·1.25·x0 = 1.625·x0 (so does the Taylor form).
    x0, sigmas = torch.randn(1, 3, 4, 4), torch.tensor([1.0, 0.0], dtype=torch.float64)
    for method in (invert_rf_solver, invert_fireflow):
        torch.testing.assert_close(
            method(AffineField(0.5, torch.zeros(1)), x0, sigmas, COND).z_T, 1.625 * x0, atol=0, rtol=1e-6
        )


def test_fireflow_reuses_the_previous_midpoint_velocity() -> None:
    sigmas = torch.tensor([1.0, 0.5, 0.25, 0.0], dtype=torch.float64)
    rf, ff = RecordingField(0.8, torch.ones(1)), RecordingField(0.8, torch.ones(1))
    invert_rf_solver(rf, torch.ones(1, 1, 2, 2), sigmas, COND)
    invert_fireflow(ff, torch.ones(1, 1, 2, 2), sigmas, COND)
    assert rf.sigmas == [0.0, 0.125, 0.25, 0.375, 0.5, 0.75]
    assert ff.sigmas == [0.0, 0.125, 0.375, 0.75]


@pytest.mark.parametrize(
    ("method", "nfe"), [(invert_rf_solver, [2, 4, 6, 8]), (invert_fireflow, [2, 3, 4, 5])]
)
def test_callback_and_trajectory(method, nfe: list[int]) -> None:
    field, x0 = _problem(1)
    seen: list[dict] = []
    res = method(field, x0, flow_sigmas({"shift": 3.0}, 4), COND, callback=seen.append, keep_trajectory=True)
    assert [s["nfe"] for s in seen] == nfe
    assert [s["i"] for s in seen] == [3, 2, 1, 0]
    assert seen[0]["sigma"] == 0.0 and seen[-1]["sigma_next"] == pytest.approx(1.0)
    assert len(res.trajectory) == 5
    assert torch.equal(res.trajectory[0], x0) and torch.equal(res.trajectory[-1], res.z_T)
    assert res.z_T.dtype == torch.float32 and res.seconds > 0
