"""The Python API editing tools embed: load → invert → reconstruct → evaluate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from test_solver import tiny_solver

import fastinv
from fastinv.errors import FastinvError
from fastinv.solver import TorchSolver


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
        res = inv.invert(photo, method="euler", steps=steps)
        errors.append(inv.evaluate(res, inv.reconstruct(res))["mse_latent"])
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < errors[0] / 4, errors


def test_default_method_is_the_best_at_equal_cost(
    tiny_sd3_dir: Path, photo: np.ndarray, tmp_path: Path
) -> None:
    """auto: warm_fixed_point without a solver (N + 1 NFE); deepinv with one (N NFE + N solver calls)."""
    inv = fastinv.load(tiny_sd3_dir, device="cpu")
    assert not inv.has_solver
    res = inv.invert(photo, steps=4)
    assert (res.method, res.result.nfe, res.result.solver_calls) == ("warm_fixed_point", 5, 0)
    with pytest.raises(FastinvError, match="method 'warm_fixed_point' has no option iterations"):
        inv.invert(photo, steps=4, iterations=2)
    tiny_solver().save_pretrained(tmp_path / "solver")
    with_solver = fastinv.load(tiny_sd3_dir, device="cpu", solver=tmp_path / "solver")
    assert with_solver.has_solver
    res = with_solver.invert(photo, steps=4)
    assert (res.method, res.result.nfe, res.result.solver_calls) == ("deepinv", 4, 4)
    shipped = fastinv.load(device="cpu")
    assert shipped.resolve_method("auto") == "deepinv" and shipped.resolve_method("euler") == "euler"


def test_bad_arguments(tiny_sd3_dir: Path, photo: np.ndarray) -> None:
    inv = fastinv.load(tiny_sd3_dir, device="cpu")
    with pytest.raises(FastinvError, match="steps must be at least 1"):
        inv.invert(photo, steps=0)
    with pytest.raises(FastinvError, match="unknown method"):
        inv.invert(photo, method="ddim")
    with pytest.raises(FastinvError, match="sees no CUDA GPU"):
        fastinv.load(tiny_sd3_dir, device="cuda")


EXPECTED_NFE = {
    "euler": lambda n: n,
    "easyinv": lambda n: n,
    "renoise": lambda n: 5 * n,
    "gnri": lambda n: 1 + 2 * n,
    "rf_solver": lambda n: 2 * n,
    "fireflow": lambda n: n + 1,
    "warm_fixed_point": lambda n: n + 1,
    "deepinv": lambda n: n,
}


@pytest.mark.parametrize("method", sorted(fastinv.METHODS))
def test_every_method_runs_on_a_real_adapter_with_cfg(
    method: str, tiny_sd3_dir: Path, photo: np.ndarray
) -> None:
    """Each registered method through the API on a diffusers SD3 folder, CFG batched, NFE as declared."""
    inv = fastinv.load(tiny_sd3_dir, device="cpu")
    options = {"solver": TorchSolver(tiny_solver())} if method == "deepinv" else {}
    forwards = []  # CFG batched: one transformer forward per evaluation
    hook = inv.model.velocity.network.register_forward_pre_hook(lambda *args: forwards.append(1))
    try:
        res = inv.invert(photo, prompt="an astronaut", guidance=3.0, method=method, steps=3, **options)
    finally:
        hook.remove()
    assert torch.isfinite(res.z_T).all() and res.z_T.shape == res.x0.shape
    assert res.result.nfe == len(forwards)
    if method == "preciseinv":  # N + 1 evaluations, plus 0 to max_iters = 10 descent steps per step
        assert 3 + 1 <= res.result.nfe <= 3 + 1 + 3 * 10
    else:
        assert res.result.nfe == EXPECTED_NFE[method](3)
    reconstruction = inv.reconstruct(res)
    mse_latent = inv.evaluate(res, reconstruction)["mse_latent"]
    assert mse_latent == pytest.approx(float((reconstruction.latents - res.x0).square().mean()), rel=1e-5)


def test_method_options_reach_the_method(tiny_sd3_dir: Path, photo: np.ndarray) -> None:
    inv = fastinv.load(tiny_sd3_dir, device="cpu")
    assert inv.invert(photo, method="renoise", steps=2, iterations=1).result.nfe == 4
    with pytest.raises(FastinvError, match="has no option"):
        inv.invert(photo, method="renoise", steps=2, bogus=1)
