"""Adapters loaded from tiny random-weight diffusers folders through the user-facing loader."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline
from safetensors.torch import save_file

from fastinv.errors import FastinvError
from fastinv.models import load_model
from fastinv.models.codecs import IdentityCodec, VaeCodec
from fastinv.models.flux import FluxVelocity
from fastinv.models.prompts import (
    EMBEDDINGS_FORMAT,
    PipelinePrompts,
    PrecomputedPrompts,
    save_prompt_embeddings,
)
from fastinv.models.sd3 import SD3Velocity


def _latents(model, pixels: int = 64, batch: int = 2) -> torch.Tensor:
    side = pixels // model.codec.scale_factor
    return torch.randn(batch, model.codec.channels, side, side, generator=torch.Generator().manual_seed(0))


def test_sd3_folder(tiny_sd3_dir: Path) -> None:
    model = load_model(tiny_sd3_dir)
    assert model.family == "sd3" and isinstance(model.velocity, SD3Velocity)
    assert isinstance(model.codec, VaeCodec) and isinstance(model.prompt_encoder, PipelinePrompts)
    cond = model.conditioning("a photo")
    z, sigma = _latents(model), torch.tensor([0.25, 0.75])
    v = model.velocity(z, sigma, cond)
    assert v.shape == z.shape and v.dtype == torch.float32
    direct = model.velocity.network(
        hidden_states=z,
        encoder_hidden_states=cond.prompt_embeds.expand(2, -1, -1),
        pooled_projections=cond.pooled_embeds.expand(2, -1),
        timestep=sigma * 1000,
        return_dict=False,
    )[0]
    torch.testing.assert_close(v, direct)
    assert model.size_multiple == model.codec.scale_factor * model.velocity.network.config.patch_size


def test_vae_codec_applies_scaling_and_shift(tiny_sd3_dir: Path) -> None:
    model = load_model(tiny_sd3_dir)
    vae = model.codec.vae
    assert vae.config.shift_factor not in (None, 0) and vae.config.scaling_factor != 1
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    raw = vae.encode(pixels).latent_dist.mode()
    latents = model.codec.encode(pixels)
    torch.testing.assert_close(latents, (raw - vae.config.shift_factor) * vae.config.scaling_factor)
    expected = vae.decode(raw, return_dict=False)[0].clamp(-1, 1)
    torch.testing.assert_close(model.codec.decode(latents), expected, atol=1e-5, rtol=1e-5)


def test_cfg_is_one_batched_call(tiny_sd3_dir: Path) -> None:
    model = load_model(tiny_sd3_dir)
    calls: list[int] = []
    hook = model.velocity.network.register_forward_pre_hook(
        lambda _m, _a, kw: calls.append(kw["hidden_states"].shape[0]), with_kwargs=True
    )
    z, sigma = _latents(model), torch.tensor([0.5, 0.5])
    guided = model.velocity(z, sigma, model.conditioning("a cat", guidance_scale=4.0))
    hook.remove()
    assert calls == [4]
    v_prompt = model.velocity(z, sigma, model.conditioning("a cat"))
    v_null = model.velocity(z, sigma, model.conditioning(""))
    torch.testing.assert_close(guided, v_null + 4.0 * (v_prompt - v_null), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fixture", ["tiny_flux_dir", "tiny_flux_dev_dir"])
def test_flux_folder(fixture: str, request: pytest.FixtureRequest) -> None:
    model = load_model(request.getfixturevalue(fixture))
    assert model.family == "flux" and isinstance(model.velocity, FluxVelocity)
    assert model.size_multiple == 2 * model.codec.scale_factor
    cond = model.conditioning("a photo", embedded_guidance=2.0)
    z, sigma = _latents(model), torch.tensor([0.2, 0.9])
    v = model.velocity(z, sigma, cond)
    assert v.shape == z.shape
    b, c, h, w = z.shape
    network = model.velocity.network
    guidance = torch.full((b,), 2.0) if network.config.guidance_embeds else None
    packed = network(
        hidden_states=FluxPipeline._pack_latents(z, b, c, h, w),
        encoder_hidden_states=cond.prompt_embeds.expand(b, -1, -1),
        pooled_projections=cond.pooled_embeds.expand(b, -1),
        timestep=sigma,
        img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, z.device, z.dtype),
        txt_ids=torch.zeros(cond.prompt_embeds.shape[1], 3),
        guidance=guidance,
        return_dict=False,
    )[0]
    torch.testing.assert_close(FluxPipeline._pack_latents(v, b, c, h, w), packed)


def test_flux_embedded_guidance_only_matters_for_dev(tiny_flux_dir: Path, tiny_flux_dev_dir: Path) -> None:
    for folder, matters in ((tiny_flux_dir, False), (tiny_flux_dev_dir, True)):
        model = load_model(folder)
        z, sigma = _latents(model, batch=1), torch.tensor([0.5])
        low = model.velocity(z, sigma, model.conditioning("", embedded_guidance=1.0))
        high = model.velocity(z, sigma, model.conditioning("", embedded_guidance=8.0))
        assert (not torch.equal(low, high)) == matters


def test_flux_schedule_shifts_with_image_size(tiny_flux_dir: Path) -> None:
    model = load_model(tiny_flux_dir)
    assert torch.all(model.sigmas(8, (64, 64))[1:-1] > model.sigmas(8, (16, 16))[1:-1])


def test_transformer_only_folder_uses_precomputed_embeddings(
    tiny_sd3_dir: Path, tiny_sd3_transformer_only_dir: Path, tmp_path: Path
) -> None:
    full = load_model(tiny_sd3_dir)
    bare = load_model(tiny_sd3_transformer_only_dir)
    with pytest.raises(FastinvError, match="has no text encoders: pass --embeddings"):
        bare.conditioning("a cat")
    file = save_prompt_embeddings(
        tmp_path / "prompts.safetensors", {p: full.encode_prompt(p) for p in ("", "a cat")}
    )
    bare = load_model(tiny_sd3_transformer_only_dir, embeddings=file)
    assert isinstance(bare.prompt_encoder, PrecomputedPrompts)
    torch.testing.assert_close(
        bare.conditioning("a cat").prompt_embeds, full.conditioning("a cat").prompt_embeds
    )
    with pytest.raises(FastinvError, match="'a dog' is not in"):
        bare.conditioning("a dog")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ((torch.zeros(1, 5, 7), torch.zeros(1, 40)), "the embeddings of 'p' are 7 wide, the model takes 48"),
        ((torch.zeros(1, 5, 48), torch.zeros(1, 9)), "pooled embedding of 'p' is 9 wide, the model takes 40"),
        ((torch.zeros(5, 48), torch.zeros(1, 40)), "prompt_embeds of 'p' must be a float tensor [1, L, D]"),
        ((torch.zeros(1, 5, 48, dtype=torch.int64), None), "float tensor [1, L, D], got torch.int64"),
        ((torch.full((1, 5, 48), float("nan")), None), "prompt_embeds of 'p' holds NaN or inf"),
        ((torch.zeros(1, 5, 48), torch.zeros(40)), "pooled_embeds of 'p' must be a float tensor [1, P]"),
    ],
)
def test_an_embeddings_file_is_checked_against_the_model(
    tiny_sd3_transformer_only_dir: Path, tmp_path: Path, entry: tuple, message: str
) -> None:
    """An --embeddings file is untrusted input: shapes, dtype, values and the model's widths, on load."""
    file = tmp_path / "prompts.safetensors"
    tensors = {"prompt_embeds.0": entry[0]} | ({} if entry[1] is None else {"pooled_embeds.0": entry[1]})
    save_file(tensors, str(file), metadata={"format": EMBEDDINGS_FORMAT, "prompts": '["p"]'})
    with pytest.raises(FastinvError, match=re.escape(message)):
        load_model(tiny_sd3_transformer_only_dir, embeddings=file)
    save_file(tensors, str(file), metadata={"format": EMBEDDINGS_FORMAT, "prompts": "5"})
    with pytest.raises(FastinvError, match="its prompts must be a list of strings, got 5"):
        load_model(tiny_sd3_transformer_only_dir, embeddings=file)


def test_pixel_space_folder(tiny_sd3_pixel_dir: Path) -> None:
    model = load_model(tiny_sd3_pixel_dir)
    assert isinstance(model.codec, IdentityCodec)
    assert "pixel-space model: no VAE, latents are RGB in [-1, 1]" in model.notes
    pixels = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(model.codec.decode(model.codec.encode(pixels)), pixels)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_bad_folders(tiny_sd3_dir: Path, tmp_path: Path) -> None:
    cases: list[tuple[Path, str]] = [(tmp_path / "missing", "model folder not found")]
    (tmp_path / "empty").mkdir()
    cases.append((tmp_path / "empty", "is not a diffusers model folder"))
    unknown = _copy(tiny_sd3_dir, tmp_path / "unknown")
    index = json.loads((unknown / "model_index.json").read_text())
    (unknown / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyPipeline"}))
    cases.append((unknown, "unsupported model type 'KandinskyPipeline'"))
    no_weights = _copy(tiny_sd3_dir, tmp_path / "no_weights")
    for weights in (no_weights / "transformer").glob("*.safetensors"):
        weights.unlink()
    cases.append((no_weights, "incomplete model folder .*cannot load the transformer"))
    no_transformer = _copy(tiny_sd3_dir, tmp_path / "no_transformer")
    shutil.rmtree(no_transformer / "transformer")
    cases.append((no_transformer, "no transformer/config.json"))
    for folder, message in cases:
        with pytest.raises(FastinvError, match=message) as info:
            load_model(folder)
        assert "\n" not in str(info.value)


def test_weights_are_read_into_modules_built_on_the_meta_device(
    tiny_sd3_dir: Path, tiny_solver_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """diffusers builds each model from its config on the meta device, then fills it from the file (with
    accelerate, a dependency): no float32 copy of the weights first, which doubles the host memory of a
    bf16 load (benchmarks/load_memory.py). The spy records where each freshly built model's parameters
    live; the loaded weights then equal the file's."""
    from diffusers.configuration_utils import ConfigMixin
    from safetensors.torch import load_file

    from fastinv.solver import load_solver

    built: dict[str, set[str]] = {}
    real = ConfigMixin.from_config.__func__

    def from_config(cls, *args, **kwargs):
        model = real(cls, *args, **kwargs)
        if isinstance(model, torch.nn.Module):
            built[cls.__name__] = {p.device.type for p in model.parameters()}
        return model

    monkeypatch.setattr(ConfigMixin, "from_config", classmethod(from_config))
    model = load_model(tiny_sd3_dir, dtype=torch.bfloat16)
    solver = load_solver(tiny_solver_dir)
    solver_class = type(solver.network).__name__
    assert built == {"SD3Transformer2DModel": {"meta"}, "AutoencoderKL": {"meta"}, solver_class: {"meta"}}
    network = model.velocity.network
    file = load_file(tiny_sd3_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    assert all(p.dtype == torch.bfloat16 and not p.is_meta for p in network.parameters())
    weights = network.state_dict()
    assert all(torch.equal(weights[name], value.to(torch.bfloat16)) for name, value in file.items())


def test_architecture_only_load_allocates_no_transformer_weights(tiny_sd3_dir: Path) -> None:
    """For the ort/trt backends: the transformer is built from its config on the meta device."""
    model = load_model(tiny_sd3_dir, transformer_weights=False)
    network = model.velocity.network
    assert all(p.is_meta for p in network.parameters())
    assert network.config.in_channels == model.codec.channels
    # SD3's positional grid covers pos_embed_max_size patches per side, in latents, then the VAE's ×8
    config = network.config
    assert model.max_side == config.pos_embed_max_size * config.patch_size * model.codec.scale_factor
