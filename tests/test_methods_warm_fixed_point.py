"""Warm-started fixed-point inversion against analytic fields: more exact than Euler, converging to the
implicit step where h·|a| < 1, falling back where the iteration diverges, exact NFE, CFG."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastinv.conditioning import Conditioning
from fastinv.errors import FastinvError
from fastinv.methods import invert_euler
from fastinv.methods.warm_fixed_point import invert_warm_fixed_point
from fastinv.sampling import sample_euler
from fastinv.schedule import flow_sigmas

COND = Conditioning(prompt="", prompt_embeds=torch.zeros(1, 1, 1))


class LinearField:
    """v(z, σ) = a·z + σ·u: the implicit step z_i = z_{i+1} + h·(a·z_i + σ_i·u) has the closed form
    z_i = (z_{i+1} + h·σ_i·u) / (1 − h·a)."""

    def __init__(self, a: float, u: torch.Tensor) -> None:
        self.a, self.u, self.calls = a, u, 0

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        self.calls += 1
        return self.a * z + sigma.view(-1, 1, 1, 1) * self.u

    def implicit_inversion(self, x0: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        z = x0.double()
        for i in reversed(range(len(sigmas) - 1)):
            h, target = float(sigmas[i] - sigmas[i + 1]), float(sigmas[i])
            z = (z + h * target * self.u.double()) / (1 - h * self.a)
        return z.float()


def problem(a: float, seed: int = 0) -> tuple[LinearField, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return LinearField(a, torch.randn(1, 3, 4, 4, generator=gen)), torch.randn(2, 3, 4, 4, generator=gen)


def round_trip_error(field: LinearField, x0: torch.Tensor, sigmas: torch.Tensor, z_T: torch.Tensor) -> float:
    return (sample_euler(field, z_T, sigmas, COND)[0] - x0).abs().max().item()


@pytest.mark.parametrize("a", [-1.5, -0.5, 0.8, 1.5])
@pytest.mark.parametrize("steps", [4, 10, 25])
def test_one_correction_is_more_exact_than_euler(a: float, steps: int) -> None:
    field, x0 = problem(a)
    sigmas = flow_sigmas({"shift": 3.0}, steps)
    warm = round_trip_error(field, x0, sigmas, invert_warm_fixed_point(field, x0, sigmas, COND).z_T)
    euler = round_trip_error(field, x0, sigmas, invert_euler(field, x0, sigmas, COND).z_T)
    assert warm < euler, (warm, euler)


@pytest.mark.parametrize("a", [-1.5, 0.8])
def test_one_correction_is_second_order(a: float) -> None:
    """Euler's round trip is first order in h; one warm-started correction makes it second order."""
    field, x0 = problem(a)
    warm, euler = [], []
    for steps in (10, 20, 40):
        sigmas = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
        warm.append(round_trip_error(field, x0, sigmas, invert_warm_fixed_point(field, x0, sigmas, COND).z_T))
        euler.append(round_trip_error(field, x0, sigmas, invert_euler(field, x0, sigmas, COND).z_T))
    for coarse, fine in itertools.pairwise(warm):
        assert 3.2 < coarse / fine < 4.8, warm
    for coarse, fine in itertools.pairwise(euler):
        assert 1.6 < coarse / fine < 2.4, euler


@settings(max_examples=20, deadline=None)
@given(a=st.floats(-1.8, 1.8), steps=st.integers(3, 30), seed=st.integers(0, 2**16))
def test_corrections_converge_to_the_implicit_step(a: float, steps: int, seed: int) -> None:
    """Where h·|a| < 1 on every step (|a| ≤ 1.8, h ≤ 0.5 here: a contraction by ≤ 0.9 per iteration), 200
    iterations (0.9^200 ≈ 7e-10) reach the closed form and the reconstruction is exact."""
    field, x0 = problem(a, seed)
    sigmas = flow_sigmas({"shift": 1.0}, steps)
    exact = field.implicit_inversion(x0, sigmas)
    errors = [
        (invert_warm_fixed_point(field, x0, sigmas, COND, corrections=c).z_T - exact).abs().max().item()
        for c in (1, 200)
    ]
    assert errors[-1] < 1e-5 * max(1.0, exact.abs().max().item()), errors
    torch.testing.assert_close(sample_euler(field, exact, sigmas, COND)[0], x0, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("corrections", [1, 2, 5])
@pytest.mark.parametrize("steps", [1, 4, 9])
def test_nfe_is_corrections_per_step_plus_one(corrections: int, steps: int) -> None:
    field, x0 = problem(0.5)
    res = invert_warm_fixed_point(field, x0, flow_sigmas({}, steps), COND, corrections=corrections)
    assert res.nfe == field.calls == corrections * steps + 1


def test_one_step_by_hand() -> None:
    """N = 1 (σ 0 → 1), c = 2: f0 = v(x0, 1), f1 = v(x0 + f0, 1), f2 = v(x0 + f1, 1), z_T = x0 + f2."""
    field, x0 = problem(0.3)
    sigmas = torch.tensor([1.0, 0.0], dtype=torch.float64)
    one = torch.ones(2)
    f = field(x0, one, COND)
    for _ in range(2):
        f = field(x0 + f, one, COND)
    res = invert_warm_fixed_point(field, x0, sigmas, COND, corrections=2)
    torch.testing.assert_close(res.z_T, x0 + f)


def test_diverging_iteration_falls_back_to_the_smallest_residual() -> None:
    """h·a = 1.5 > 1: each iteration multiplies the residual by 1.5, so the first iterate has the smallest
    residual and c = 6 returns what c = 1 returns (finite, not 1.5⁵ times worse)."""
    field, x0 = problem(3.0)
    sigmas = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    one = invert_warm_fixed_point(field, x0, sigmas, COND, corrections=1).z_T
    many = invert_warm_fixed_point(field, x0, sigmas, COND, corrections=6)
    torch.testing.assert_close(many.z_T, one)
    assert many.nfe == 6 * 2 + 1


def test_fallback_is_per_sample() -> None:
    """A field contracting for sample 0 (a = 0.5) and diverging for sample 1 (a = 3): sample 0 takes the
    last iterate, sample 1 the first."""
    a = torch.tensor([0.5, 3.0]).view(2, 1, 1, 1)

    def field(z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return a * z + sigma.view(-1, 1, 1, 1)

    x0 = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    sigmas = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    results = {c: invert_warm_fixed_point(field, x0, sigmas, COND, corrections=c).z_T for c in (1, 5)}
    torch.testing.assert_close(results[5][1], results[1][1])
    assert not torch.allclose(results[5][0], results[1][0])


class BranchField:
    """A model with CFG branches: v_prompt = a1·z, v_null = a2·z; guided = (a2 + g·(a1 − a2))·z."""

    def __init__(self, a1: float, a2: float) -> None:
        self.a1, self.a2 = a1, a2

    def branches(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning):
        return self.a1 * z, self.a2 * z

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        v, v_null = self.branches(z, sigma, cond)
        return v_null + cond.guidance_scale * (v - v_null)


def test_cfg_is_combined_in_every_iterate() -> None:
    cond = Conditioning(
        prompt="p",
        prompt_embeds=torch.zeros(1, 1, 1),
        null_prompt_embeds=torch.zeros(1, 1, 1),
        guidance_scale=3.0,
    )
    x0 = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(2))
    sigmas = flow_sigmas({}, 5)
    guided = invert_warm_fixed_point(BranchField(0.4, 0.1), x0, sigmas, cond, corrections=2)
    plain = invert_warm_fixed_point(
        LinearField(0.1 + 3.0 * 0.3, torch.zeros(1)), x0, sigmas, COND, corrections=2
    )
    torch.testing.assert_close(guided.z_T, plain.z_T)
    assert guided.nfe == 11


@pytest.mark.parametrize("corrections", [0, -1, 1.5, True, "2"])
def test_bad_corrections_are_one_line_errors(corrections: object) -> None:
    field, x0 = problem(0.5)
    with pytest.raises(FastinvError, match="corrections must be an integer >= 1"):
        invert_warm_fixed_point(field, x0, flow_sigmas({}, 3), COND, corrections=corrections)
