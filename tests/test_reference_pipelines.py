"""fastinv's schedules and Euler sampling against diffusers' own pipelines, run on tiny SD3 / FLUX folders:
the same σ grid and the same latents from the same noise and prompt (static and dynamic SD3 shift, FLUX)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline

import fastinv
from fastinv.sampling import sample_euler

STEPS = 5


def _sd3_folder(tiny_sd3_dir: Path, tmp_path: Path, dynamic: bool) -> Path:
    if not dynamic:
        return tiny_sd3_dir
    folder = tmp_path / "sd3_dynamic"
    shutil.copytree(tiny_sd3_dir, folder)
    path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text()) | {"use_dynamic_shifting": True, "max_shift": 1.16}
    path.write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("dynamic", [False, True], ids=["static shift", "dynamic shift"])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_sd3_sampling_matches_the_pipeline(
    tiny_sd3_dir: Path, tmp_path: Path, dynamic: bool, guidance: float
) -> None:
    folder = _sd3_folder(tiny_sd3_dir, tmp_path, dynamic)
    pipe = StableDiffusion3Pipeline.from_pretrained(folder)
    inv = fastinv.load(folder, device="cpu", dtype="fp32")
    noise = torch.randn(1, inv.model.codec.channels, 8, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = pipe(
            prompt="a cat",
            negative_prompt="",
            num_inference_steps=STEPS,
            guidance_scale=guidance,
            latents=noise.clone(),
            height=8 * pipe.vae_scale_factor,
            width=12 * pipe.vae_scale_factor,
            output_type="latent",
        ).images
    sigmas = inv.model.sigmas(STEPS, (8, 12))
    torch.testing.assert_close(sigmas.float(), pipe.scheduler.sigmas.float(), rtol=0, atol=1e-6)
    actual, _ = sample_euler(inv.model.velocity, noise, sigmas, inv.model.conditioning("a cat", guidance))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_sd3_dynamic_shift_uses_the_pipelines_grid_not_flux_linspace(
    tiny_sd3_dir: Path, tmp_path: Path
) -> None:
    """SD3 shifts its own timestep grid by μ (the pipeline's grid: test_sd3_sampling_matches_the_pipeline);
    FLUX's linspace(1, 1/N, N) under the same μ is another grid, 0.17 away at worst at N = 10."""
    model = fastinv.load(_sd3_folder(tiny_sd3_dir, tmp_path, True), device="cpu").model
    sd3 = model.sigmas(10, (64, 64))
    as_flux = fastinv.schedule.flow_sigmas(model.scheduler_config, 10, image_seq_len=32 * 32, family="flux")
    assert (sd3 - as_flux).abs().max() == pytest.approx(0.17, abs=0.01)


def test_flux_sampling_matches_the_pipeline(tiny_flux_dir: Path) -> None:
    pipe = FluxPipeline.from_pretrained(tiny_flux_dir)
    inv = fastinv.load(tiny_flux_dir, device="cpu", dtype="fp32")
    channels, height, width = inv.model.codec.channels, 8, 12
    noise = torch.randn(1, channels, height, width, generator=torch.Generator().manual_seed(1))
    packed = pipe._pack_latents(noise, 1, channels, height, width)
    with torch.no_grad():
        expected = pipe(
            prompt="a dog",
            num_inference_steps=STEPS,
            latents=packed,
            height=height * pipe.vae_scale_factor,
            width=width * pipe.vae_scale_factor,
            output_type="latent",
        ).images
    expected = pipe._unpack_latents(
        expected, height * pipe.vae_scale_factor, width * pipe.vae_scale_factor, pipe.vae_scale_factor
    )
    sigmas = inv.model.sigmas(STEPS, (height, width))
    torch.testing.assert_close(sigmas.float()[:-1], pipe.scheduler.sigmas.float()[:-1], rtol=0, atol=1e-6)
    actual, _ = sample_euler(inv.model.velocity, noise, sigmas, inv.model.conditioning("a dog"))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
