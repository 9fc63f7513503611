"""GNRI and PreciseInv on a tiny nonlinear velocity field: NFE, residuals, best iterate, losses, Euler."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fastinv.conditioning import Conditioning
from fastinv.errors import FastinvError
from fastinv.methods.euler import invert_euler
from fastinv.methods.gnri import gnri_objective, invert_gnri
from fastinv.methods.preciseinv import FAST, PRECISE, invert_preciseinv
from fastinv.sampling import sample_euler

COND = Conditioning(prompt="", prompt_embeds=torch.zeros(1, 1, 1))
SHAPE = (2, 3, 4, 4)


class TanhField:
    """v(z, σ) = tanh(W·z + σ·c), differentiable in z; counts its own calls to check the methods' NFE."""

    def __init__(self, seed: int = 0, scale: float = 1.5) -> None:
        gen = torch.Generator().manual_seed(seed)
        dim = math.prod(SHAPE[1:])
        self.weight = torch.randn(dim, dim, generator=gen) * scale / math.sqrt(dim)
        self.bias = torch.randn(dim, generator=gen)
        self.calls = 0

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        assert sigma.shape == (z.shape[0],) and sigma.dtype == torch.float32 and z.dtype == torch.float32
        self.calls += 1
        return torch.tanh(z.flatten(1) @ self.weight.T + sigma[:, None] * self.bias).view_as(z)


def x0_and_sigmas(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    return x0, torch.linspace(1, 0, steps + 1, dtype=torch.float64)


def step_residuals(field: TanhField, trajectory: list[torch.Tensor], sigmas: torch.Tensor) -> torch.Tensor:
    """[N, B] per-step residual ‖z_i − z_{i+1} − h·v(z_i, σ_i)‖ of the implicit step along `trajectory`."""
    rows = []
    for k, (z_prev, z) in enumerate(itertools.pairwise(trajectory)):
        sigma, sigma_next = sigmas[-1 - k], sigmas[-2 - k]
        v = field(z, sigma_next.float().expand(z.shape[0]), COND)
        rows.append((z - z_prev - float(sigma_next - sigma) * v).flatten(1).norm(dim=1))
    return torch.stack(rows)


@pytest.mark.parametrize("iterations", [0, 1, 2])
def test_gnri_nfe_is_counted_and_as_declared(iterations: int) -> None:
    field, (x0, sigmas) = TanhField(), x0_and_sigmas(6)
    seen: list[dict] = []
    res = invert_gnri(field, x0, sigmas, COND, iterations=iterations, callback=seen.append)
    assert res.nfe == field.calls == 1 + 6 * (iterations + 1)
    assert [s["nfe"] for s in seen] == [1 + (k + 1) * (iterations + 1) for k in range(6)]
    assert seen[-1]["objective"].shape == (SHAPE[0],)


def test_preciseinv_nfe_is_counted_and_as_declared() -> None:
    field, (x0, sigmas) = TanhField(), x0_and_sigmas(5)
    seen: list[dict] = []
    res = invert_preciseinv(field, x0, sigmas, COND, eta=1e-6, max_iters=4, callback=seen.append)
    evaluations = [len(s["losses"]) for s in seen]
    assert res.nfe == field.calls == 1 + sum(evaluations)
    assert all(1 <= n <= 5 for n in evaluations) and max(evaluations) > 1


def test_gnri_lowers_the_step_residual_below_euler() -> None:
    field, (x0, sigmas) = TanhField(), x0_and_sigmas(8)
    euler = invert_euler(field, x0, sigmas, COND, keep_trajectory=True)
    gnri = invert_gnri(field, x0, sigmas, COND, keep_trajectory=True)
    euler_res = step_residuals(field, euler.trajectory, sigmas)
    gnri_res = step_residuals(field, gnri.trajectory, sigmas)
    assert (gnri_res < 0.5 * euler_res).all()
    assert (sample_euler(field, gnri.z_T, sigmas, COND)[0] - x0).norm() < (
        sample_euler(field, euler.z_T, sigmas, COND)[0] - x0
    ).norm()


@pytest.mark.parametrize(("iterations", "prior_weight"), [(1, 0.1), (3, 0.1), (2, 5.0)])
def test_gnri_returns_f_of_the_best_iterate(iterations: int, prior_weight: float) -> None:
    """Each step, written out: Newton iterates from the Euler guess (prior factor detached), z* = the iterate
    of lowest O per sample, z_i = z_{i+1} + h·v(z*, σ_i) (the authors' F(z*)); v(z*, σ_i) is the next
    step's Euler velocity. At λ = 5 a prior gradient in the Newton step would move every iterate."""
    field, (x0, sigmas) = TanhField(), x0_and_sigmas(4)
    seen: list[dict] = []
    options = {"iterations": iterations, "prior_weight": prior_weight}
    res = invert_gnri(field, x0, sigmas, COND, keep_trajectory=True, callback=seen.append, **options)
    v_best = field(x0, sigmas[-1].float().expand(2), COND)
    for k, (z_prev, z) in enumerate(itertools.pairwise(res.trajectory)):
        sigma_next = sigmas[-2 - k]
        h, s = float(sigma_next - sigmas[-1 - k]), torch.full((2,), float(sigma_next))
        iterate = z_prev + h * v_best
        candidates = []
        for _ in range(iterations + 1):
            v = field(iterate, s, COND)
            leaf = iterate.detach().requires_grad_()
            objective = gnri_objective(leaf, z_prev, v, h, float(sigma_next), x0, prior_weight)
            (grad,) = torch.autograd.grad(objective.sum(), leaf)
            candidates.append((objective.detach(), v))
            newton = objective.detach() / grad.flatten(1).square().sum(1)
            iterate = iterate - newton[:, None, None, None] * grad
        objectives = torch.stack([o for o, _ in candidates])
        best = objectives.argmin(0)
        v_best = torch.stack([candidates[int(j)][1][b] for b, j in enumerate(best)])
        torch.testing.assert_close(seen[k]["objective"], objectives.min(0).values)
        torch.testing.assert_close(z, z_prev + h * v_best, rtol=1e-5, atol=1e-6)


def test_gnri_newton_step_without_prior_is_the_fixed_point_step() -> None:
    """λ = 0: the Newton iterate is F(guess), and the step returns F of it: two fixed-point maps."""
    field, (x0, sigmas) = TanhField(), x0_and_sigmas(1)
    guess = x0 + field(x0, torch.zeros(2), COND)
    newton = x0 + field(guess, torch.ones(2), COND)
    res = invert_gnri(field, x0, sigmas, COND, iterations=1, prior_weight=0.0)
    torch.testing.assert_close(res.z_T, x0 + field(newton, torch.ones(2), COND))


def test_gnri_handles_an_exact_euler_step() -> None:
    u = torch.randn(1, *SHAPE[1:])
    x0, sigmas = x0_and_sigmas(3)
    res = invert_gnri(lambda z, sigma, cond: u.expand_as(z), x0, sigmas, COND, iterations=2)
    torch.testing.assert_close(res.z_T, x0 + u)


def test_preciseinv_losses_decrease_and_round_trip_beats_euler() -> None:
    field, (x0, sigmas) = TanhField(), x0_and_sigmas(6)
    seen: list[dict] = []
    res = invert_preciseinv(field, x0, sigmas, COND, eta=0.0, max_iters=8, callback=seen.append)
    for step in seen:
        losses = step["losses"]
        assert losses.shape == (9, SHAPE[0])
        assert (losses.diff(dim=0) <= 0).all() and (losses[-1] < 0.1 * losses[0]).all()
    euler = invert_euler(field, x0, sigmas, COND)
    error = (sample_euler(field, res.z_T, sigmas, COND)[0] - x0).norm()
    assert error < 0.1 * (sample_euler(field, euler.z_T, sigmas, COND)[0] - x0).norm()


def test_preciseinv_settings() -> None:
    assert (FAST["eta"], PRECISE["eta"]) == (1e-2, 1e-5)
    field, (x0, sigmas) = TanhField(), x0_and_sigmas(4)
    default = invert_preciseinv(field, x0, sigmas, COND)
    fast = invert_preciseinv(field, x0, sigmas, COND, **FAST)
    precise = invert_preciseinv(field, x0, sigmas, COND, **PRECISE)
    torch.testing.assert_close(default.z_T, fast.z_T, rtol=0, atol=0)
    errors = [(sample_euler(field, r.z_T, sigmas, COND)[0] - x0).norm() for r in (fast, precise)]
    assert errors[1] < errors[0] and precise.nfe > fast.nfe


def test_zero_iterations_are_the_one_evaluation_methods() -> None:
    """PreciseInv with no descent is Euler. GNRI with K = 0 returns F(Euler guess) with the previous step's
    velocity: z_i = z_{i+1} + h·v(z_{i+1} + h·v_prev, σ_i), v_prev = v(x0, σ_N) at the first step."""
    field, (x0, sigmas) = TanhField(), x0_and_sigmas(7)
    euler = invert_euler(field, x0, sigmas, COND, keep_trajectory=True)
    z, v, by_hand = x0, field(x0, sigmas[-1].float().expand(2), COND), [x0]
    for k in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[-1 - k], sigmas[-2 - k]
        h = float(sigma_next - sigma)
        v = field(z + h * v, sigma_next.float().expand(2), COND)
        z = z + h * v
        by_hand.append(z)
    for method, options, reference in (
        (invert_gnri, {"iterations": 0}, by_hand),
        (invert_preciseinv, {"max_iters": 0}, euler.trajectory),
    ):
        res = method(field, x0, sigmas, COND, keep_trajectory=True, **options)
        for ours, theirs in zip(res.trajectory, reference, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
        assert res.nfe == euler.nfe + 1


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        (invert_gnri, {"iterations": -1}, "GNRI needs .*: -1, 0.1, 1e-12$"),
        (invert_gnri, {"prior_weight": -0.1}, "GNRI needs .*: 1, -0.1, 1e-12$"),
        (invert_gnri, {"eps": 0.0}, "GNRI needs .*: 1, 0.1, 0.0$"),
        (invert_preciseinv, {"eta": -1.0}, "PreciseInv needs .*: -1.0, 0.5, 10$"),
        (invert_preciseinv, {"lr": 0.0}, "PreciseInv needs .*: 0.01, 0.0, 10$"),
        (invert_preciseinv, {"max_iters": -1}, "PreciseInv needs .*: 0.01, 0.5, -1$"),
    ],
)
def test_bad_options_raise(method, options: dict, message: str) -> None:
    """The methods' own checks (called directly; the CLI and API check options first, options.py)."""
    x0, sigmas = x0_and_sigmas(2)
    with pytest.raises(FastinvError, match=message):
        method(TanhField(), x0, sigmas, COND, **options)
