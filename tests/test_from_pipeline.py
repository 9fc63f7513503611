"""fastinv.from_pipeline: an Inverter on a diffusers pipeline already loaded, sharing its modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline

import fastinv
from fastinv.errors import FastinvError

PIPELINES = {"tiny_sd3_dir": StableDiffusion3Pipeline, "tiny_flux_dir": FluxPipeline}


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """[64, 64, 3] uint8 noise: a fixed image the tiny models invert."""
    return (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)


def _pointers(module: torch.nn.Module) -> list[int]:
    """The data pointers of a module's parameters: equal before and after iff nothing was copied."""
    return [p.data_ptr() for p in module.parameters()]


@pytest.mark.parametrize("fixture", list(PIPELINES))
def test_shares_the_modules_and_equals_load(
    fixture: str, photo: np.ndarray, request: pytest.FixtureRequest
) -> None:
    folder: Path = request.getfixturevalue(fixture)
    pipe = PIPELINES[fixture].from_pretrained(folder)
    modules = {"transformer": pipe.transformer, "vae": pipe.vae, "text": pipe.text_encoder}
    before = {name: _pointers(module) for name, module in modules.items()}

    shared = fastinv.from_pipeline(pipe)
    assert shared.model.velocity.network is pipe.transformer
    assert shared.model.codec.vae is pipe.vae
    assert shared.model.prompt_encoder.pipeline.text_encoder is pipe.text_encoder
    assert shared.model.name == str(folder) and shared.model.device == torch.device("cpu")
    got = shared.invert(photo, prompt="a red cat", steps=4, guidance=2.0)
    assert {name: _pointers(module) for name, module in modules.items()} == before  # no copy made

    loaded = fastinv.load(folder, device="cpu")
    want = loaded.invert(photo, prompt="a red cat", steps=4, guidance=2.0)
    assert got.method == want.method == "warm_fixed_point"
    assert torch.equal(got.z_T, want.z_T)
    assert torch.equal(got.sigmas, want.sigmas)
    assert torch.equal(shared.reconstruct(got).pixels, loaded.reconstruct(want).pixels)


def test_dtype_casts_the_pipeline_in_place(tiny_sd3_dir: Path, photo: np.ndarray) -> None:
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_dir)
    transformer = pipe.transformer
    inverter = fastinv.from_pipeline(pipe, device="cpu", dtype="bf16", fast=False)
    assert inverter.model.velocity.network is transformer is pipe.transformer
    for module in (transformer, pipe.vae):
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    assert inverter.model.dtype == torch.bfloat16
    assert inverter.invert(photo, method="euler", steps=2).z_T.dtype == torch.float32  # the state stays fp32


def test_one_line_errors(tiny_sd3_dir: Path) -> None:
    with pytest.raises(FastinvError, match="takes a StableDiffusion3Pipeline or FluxPipeline, got str"):
        fastinv.from_pipeline("stabilityai/stable-diffusion-3-medium-diffusers")
    no_transformer = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_dir, transformer=None)
    with pytest.raises(FastinvError, match="has no transformer") as missing:
        fastinv.from_pipeline(no_transformer)
    assert "\n" not in str(missing.value)
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_dir)
    with pytest.raises(FastinvError, match="torch backend, not 'ort'"):
        fastinv.from_pipeline(pipe, backend="ort")
    with pytest.raises(FastinvError, match="unknown dtype"):
        fastinv.from_pipeline(pipe, dtype="int8")
