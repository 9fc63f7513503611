"""Euler inversion and sampling against analytic velocity fields, NFE counting and the registry."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastinv.conditioning import Conditioning
from fastinv.errors import FastinvError
from fastinv.methods import METHODS, get_method, invert_euler, method_options, parse_options
from fastinv.sampling import sample_euler
from fastinv.schedule import flow_sigmas

COND = Conditioning(prompt="", prompt_embeds=torch.zeros(1, 1, 1))


class ConstantField:
    """v(z, σ) = u: straight-line flow z_σ = x0 + σ·u, which Euler integrates exactly both ways."""

    def __init__(self, u: torch.Tensor) -> None:
        self.u = u

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        assert sigma.shape == (z.shape[0],) and sigma.dtype == torch.float32
        return self.u.expand_as(z)


class LinearField:
    """v(z, σ) = a·z: linear in z, so inversion (v at z_{i+1}) and sampling (v at z_i) disagree by O(h²)."""

    def __init__(self, a: float) -> None:
        self.a = a

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.a * z


@settings(max_examples=25, deadline=None)
@given(steps=st.integers(1, 60), shift=st.floats(0.5, 6.0), seed=st.integers(0, 2**16))
def test_constant_field_inverts_exactly(steps: int, shift: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x0, u = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(1, 4, 8, 8, generator=gen)
    sigmas = flow_sigmas({"shift": shift}, steps)
    field = ConstantField(u)
    res = invert_euler(field, x0, sigmas, COND)
    torch.testing.assert_close(res.z_T, x0 + float(sigmas[0] - sigmas[-1]) * u, atol=1e-5, rtol=0)
    torch.testing.assert_close(sample_euler(field, res.z_T, sigmas, COND)[0], x0, atol=1e-5, rtol=0)
    assert res.nfe == steps


def test_round_trip_error_is_first_order_in_step_size() -> None:
    x0 = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    field = LinearField(0.8)
    errors = []
    for steps in (5, 10, 20, 40):
        sigmas = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
        z_T = invert_euler(field, x0, sigmas, COND).z_T
        errors.append((sample_euler(field, z_T, sigmas, COND)[0] - x0).abs().max().item())
    assert errors == sorted(errors, reverse=True)
    for coarse, fine in itertools.pairwise(errors):
        assert 1.7 < coarse / fine < 2.3


def test_callback_and_trajectory() -> None:
    x0 = torch.randn(1, 3, 4, 4)
    sigmas = flow_sigmas({"shift": 3.0}, 7)
    seen: list[dict] = []
    res = invert_euler(
        ConstantField(torch.ones(1)), x0, sigmas, COND, callback=seen.append, keep_trajectory=True
    )
    assert [s["nfe"] for s in seen] == list(range(1, 8))
    assert seen[0]["sigma"] == 0.0 and seen[-1]["sigma_next"] == pytest.approx(1.0)
    assert len(res.trajectory) == 8
    torch.testing.assert_close(res.trajectory[0], x0)
    torch.testing.assert_close(res.trajectory[-1], res.z_T)
    assert res.seconds > 0


def test_registry() -> None:
    assert get_method("euler") is invert_euler
    assert "euler" in METHODS
    with pytest.raises(FastinvError, match="unknown method 'nope'"):
        get_method("nope")


def test_options_are_checked_against_the_signature() -> None:
    assert method_options("euler") == {}
    assert parse_options("euler", []) == {}
    with pytest.raises(FastinvError, match="method 'euler' has no option iterations"):
        parse_options("euler", ["iterations=4"])
    with pytest.raises(FastinvError, match="KEY=VALUE"):
        parse_options("euler", ["iterations"])
