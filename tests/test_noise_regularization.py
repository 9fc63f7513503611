"""ReNoise's noise regularisers: the losses measure what they claim, and the option is wired in."""

from __future__ import annotations

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
    assert patch_kl_loss(a, a).abs() < 1e-6
    assert patch_kl_loss(a, 2 * a + 1) > 0.1


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
