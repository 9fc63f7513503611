"""ReNoise's noise regularisers: the losses measure what they claim, and the option is wired in."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastinv.conditioning import Conditioning
from fastinv.methods import invert_renoise
from fastinv.methods.noise_regularization import auto_correlation_loss, patch_kl_loss, regularize_noise
from fastinv.schedule import flow_sigmas

COND = Conditioning(prompt="", prompt_embeds=torch.zeros(1, 1, 1))


def _smooth_noise(seed: int) -> torch.Tensor:
    noise = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    smooth = F.avg_pool2d(F.pad(noise, (2, 2, 2, 2), mode="circular"), 5, stride=1)
    return smooth / smooth.std()


def test_auto_correlation_is_low_for_white_noise() -> None:
    white = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    smooth = _smooth_noise(1)
    assert auto_correlation_loss(white, torch.Generator().manual_seed(0)) < auto_correlation_loss(
        smooth, torch.Generator().manual_seed(0)
    )


def test_patch_kl() -> None:
    a = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert patch_kl_loss(a, a).abs() < 1e-3  # 48 patches × ~1e-6 from the variance epsilon
    assert patch_kl_loss(a, 2 * a + 1) > 0.1


def test_patch_kl_by_hand() -> None:
    """One 4×4 patch of 0…15 per channel (μ = 7.5, unbiased s² = 68/3) against 2x + 1 (μ = 16, s² = 272/3):
    log 4 + (68/3 + 8.5²)/(272/3) − 1 per channel, no ½, summed over the 2 channels."""
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(1, 2, 1, 1)
    per_channel = math.log(4) + (68 / 3 + 8.5**2) / (272 / 3) - 1
    torch.testing.assert_close(patch_kl_loss(x, 2 * x + 1), torch.tensor(2 * per_channel), rtol=1e-5, atol=0)


def test_auto_correlation_by_hand() -> None:
    """A 2×2 channel has one level and shift 0: loss = 2·mean(x²)² = 2·7.5² for [[1, 2], [3, 4]], and its
    gradient is 2·mean(x²)·x = 15·x, per channel, summed over channels."""
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2).repeat(1, 2, 1, 1)
    torch.testing.assert_close(auto_correlation_loss(x, torch.Generator()), torch.tensor(2 * 2 * 7.5**2))


def test_regularization_steps_are_scaled_as_the_authors() -> None:
    """Auto-correlation: `rolls` steps of λ·∇/rolls, not clipped (∇ = 1500·x here, far past 100);
    KL: one step of λ·clip(∇, ±100)."""
    x = 10 * torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    g = torch.Generator()
    once = regularize_noise(x, None, lambda_ac=1.0, lambda_kl=0.0, steps=1, rolls=1, generator=g)
    torch.testing.assert_close(once, x - 1500 * x)
    twice = regularize_noise(x, None, lambda_ac=0.01, lambda_kl=0.0, steps=1, rolls=2, generator=g)
    half = x - 0.005 * 2 * (x.square().mean()) * x
    torch.testing.assert_close(twice, half - 0.005 * 2 * (half.square().mean()) * half)
    y = torch.arange(16.0).view(1, 1, 4, 4)
    reference = 1e-3 * torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    leaf = y.clone().requires_grad_()
    (grad,) = torch.autograd.grad(patch_kl_loss(leaf, reference), leaf)
    assert grad.abs().max() > 100
    kl = regularize_noise(y, reference, lambda_ac=0.0, lambda_kl=0.065, steps=1, rolls=5, generator=g)
    torch.testing.assert_close(kl, y - 0.065 * grad.clamp(-100, 100))


def test_regularization_whitens_correlated_noise() -> None:
    smooth = _smooth_noise(3)
    whitened = regularize_noise(
        smooth,
        None,
        lambda_ac=20.0,
        lambda_kl=0.0,
        steps=4,
        rolls=5,
        generator=torch.Generator().manual_seed(0),
    )
    probe = torch.Generator().manual_seed(7)
    before = auto_correlation_loss(smooth, probe)
    after = auto_correlation_loss(whitened, probe.manual_seed(7))
    assert after < 0.5 * before


class Field:
    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return torch.tanh(z.roll(1, dims=-1)) + sigma[:, None, None, None]


def test_renoise_regularisers_are_wired_in() -> None:
    x0 = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    sigmas = flow_sigmas({"shift": 1.0}, 4)
    plain = invert_renoise(Field(), x0, sigmas, COND, iterations=2)
    ac = invert_renoise(Field(), x0, sigmas, COND, iterations=2, lambda_ac=20.0)
    kl = invert_renoise(Field(), x0, sigmas, COND, iterations=2, lambda_kl=0.065)
    assert not torch.equal(plain.z_T, ac.z_T) and not torch.equal(plain.z_T, kl.z_T)
    assert ac.nfe == plain.nfe == 4 * 3 and kl.nfe == plain.nfe + 4


def test_renoise_regularises_where_the_authors_do() -> None:
    """K = 1, m = 2, one step: v0 at (x0, σ_N) is regularised before it drives the iterate, v1 is not (it
    drives nothing), and the step uses the regularised mean of the raw ε̂ and x̂0 of both."""
    x0 = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([1.0, 0.0], dtype=torch.float64)
    res = invert_renoise(Field(), x0, sigmas, COND, iterations=1, average_last=2, lambda_ac=20.0)
    g = torch.Generator().manual_seed(0)
    options = {"lambda_ac": 20.0, "lambda_kl": 0.0, "steps": 4, "rolls": 5, "generator": g}
    v0 = Field()(x0, torch.zeros(1), COND)
    noise0, clean0 = x0 + v0, x0  # at σ = 0
    point = x0 + (regularize_noise(noise0, None, **options) - clean0)
    v1 = Field()(point, torch.ones(1), COND)
    noise1, clean1 = point, point - v1  # at σ = 1
    mean_noise, mean_clean = (noise0 + noise1) / 2, (clean0 + clean1) / 2
    torch.testing.assert_close(res.z_T, x0 + regularize_noise(mean_noise, None, **options) - mean_clean)
