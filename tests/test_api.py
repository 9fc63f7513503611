"""The Python API editing tools embed: load → invert → reconstruct → evaluate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import fastinv
from fastinv.errors import FastinvError


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.fromarray(data.astronaut()).resize((64, 64), Image.Resampling.LANCZOS))


@pytest.mark.parametrize("fixture", ["tiny_sd3_dir", "tiny_flux_dir"])
def test_load_invert_reconstruct(fixture: str, photo: np.ndarray, request: pytest.FixtureRequest) -> None:
    inv = fastinv.load(request.getfixturevalue(fixture), device="cpu")
    res = inv.invert(photo, prompt="an astronaut", method="euler", steps=6)
    assert res.result.nfe == 6 and res.z_T.shape == res.x0.shape
    rec = inv.reconstruct(res)
    assert rec.image.size == (64, 64) and rec.pixels.shape == (1, 3, 64, 64)
    metrics = inv.evaluate(res, rec)
    assert set(metrics) >= {"psnr", "ssim", "lpips", "mse_pixel", "mse_latent"}
    assert metrics["mse_latent"] == pytest.approx(torch.mean((rec.latents - res.x0) ** 2).item(), rel=1e-5)


def test_reconstruction_error_falls_with_steps(tiny_sd3_dir: Path, photo: np.ndarray) -> None:
    """Euler inversion's round-trip error in latent space shrinks as N grows (first-order method)."""
    inv = fastinv.load(tiny_sd3_dir, device="cpu")
    errors = []
    for steps in (2, 4, 8, 16):
        res = inv.invert(photo, steps=steps)
        errors.append(inv.evaluate(res, inv.reconstruct(res))["mse_latent"])
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < errors[0] / 4, errors


def test_bad_arguments(tiny_sd3_dir: Path, photo: np.ndarray) -> None:
    inv = fastinv.load(tiny_sd3_dir, device="cpu")
    with pytest.raises(FastinvError, match="steps must be at least 1"):
        inv.invert(photo, steps=0)
    with pytest.raises(FastinvError, match="unknown method"):
        inv.invert(photo, method="ddim")
    with pytest.raises(FastinvError, match="sees no CUDA GPU"):
        fastinv.load(tiny_sd3_dir, device="cuda")
