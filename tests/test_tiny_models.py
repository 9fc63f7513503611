"""The tiny model folders load back through diffusers and behave like (very small) real checkpoints."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from safetensors.torch import load_file
from tiny_models import (
    CLIP_MAX_LENGTH,
    FLUX_CLIP_DIM,
    FLUX_JOINT_DIM,
    FLUX_LATENT_CHANNELS,
    SD3_JOINT_DIM,
    SD3_LATENT_CHANNELS,
    SD3_POOLED_DIM,
    VAE_SCALE_FACTOR,
    make_tiny_flux,
    make_tiny_sd3,
)

PROMPTS = ["a photo of a cat", "a red house, under a blue tree!"]
T5_LENGTH = 32
PIXELS = 64
LATENT = PIXELS // VAE_SCALE_FACTOR
SD3_TEXT_COMPONENTS = (
    "text_encoder",
    "tokenizer",
    "text_encoder_2",
    "tokenizer_2",
    "text_encoder_3",
    "tokenizer_3",
)
FLUX_TEXT_COMPONENTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


def _model_index(folder: Path) -> dict:
    return json.loads((folder / "model_index.json").read_text())


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _sd3_forward(transformer: SD3Transformer2DModel, sample: torch.Tensor) -> torch.Tensor:
    batch = sample.shape[0]
    with torch.no_grad():
        return transformer(
            hidden_states=sample,
            encoder_hidden_states=torch.randn(batch, CLIP_MAX_LENGTH + T5_LENGTH, SD3_JOINT_DIM),
            pooled_projections=torch.randn(batch, SD3_POOLED_DIM),
            timestep=torch.full((batch,), 500.0),
        ).sample


def test_sd3_pipeline_loads_and_encodes(tiny_sd3_dir: Path) -> None:
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_dir)

    assert pipe.vae_scale_factor == VAE_SCALE_FACTOR
    assert pipe.tokenizer_max_length == CLIP_MAX_LENGTH
    assert pipe.vae.config.scaling_factor == pytest.approx(1.5305)
    assert pipe.vae.config.shift_factor == pytest.approx(0.0609)
    assert pipe.scheduler.config.shift == pytest.approx(3.0)
    assert not pipe.scheduler.config.use_dynamic_shifting

    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        PROMPTS, None, None, max_sequence_length=T5_LENGTH
    )
    assert embeds.shape == negative.shape == (2, CLIP_MAX_LENGTH + T5_LENGTH, SD3_JOINT_DIM)
    assert pooled.shape == negative_pooled.shape == (2, SD3_POOLED_DIM)
    assert not torch.allclose(embeds[0], embeds[1])
    assert not torch.allclose(pooled[0], pooled[1])

    default_embeds, *_ = pipe.encode_prompt(PROMPTS[0], None, None, do_classifier_free_guidance=False)
    assert default_embeds.shape == (1, CLIP_MAX_LENGTH + 256, SD3_JOINT_DIM)


def test_sd3_tokenizers_know_the_prompt_words(tiny_sd3_dir: Path) -> None:
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_dir)
    for tokenizer in (pipe.tokenizer, pipe.tokenizer_2):
        ids = tokenizer(PROMPTS[0]).input_ids
        assert ids[0] == tokenizer.bos_token_id
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids, skip_special_tokens=True) == PROMPTS[0]
    t5_ids = pipe.tokenizer_3(PROMPTS[0]).input_ids
    assert pipe.tokenizer_3.unk_token_id not in t5_ids
    assert t5_ids[-1] == pipe.tokenizer_3.eos_token_id
    assert pipe.tokenizer_3.decode(t5_ids, skip_special_tokens=True) == PROMPTS[0]


def test_sd3_transformer_forward(tiny_sd3_dir: Path) -> None:
    transformer = SD3Transformer2DModel.from_pretrained(tiny_sd3_dir, subfolder="transformer")
    assert transformer.config.in_channels == transformer.config.out_channels == SD3_LATENT_CHANNELS
    sample = torch.randn(2, SD3_LATENT_CHANNELS, LATENT, LATENT)

    out = _sd3_forward(transformer, sample)

    assert out.shape == sample.shape
    assert torch.isfinite(out).all()
    assert out.std() > 0


def test_sd3_vae_round_trip_shapes(tiny_sd3_dir: Path) -> None:
    vae = AutoencoderKL.from_pretrained(tiny_sd3_dir, subfolder="vae")
    with torch.no_grad():
        latents = vae.encode(torch.rand(1, 3, PIXELS, PIXELS) * 2 - 1).latent_dist.mean
        image = vae.decode(latents).sample
    assert latents.shape == (1, SD3_LATENT_CHANNELS, LATENT, LATENT)
    assert image.shape == (1, 3, PIXELS, PIXELS)


def test_sd3_transformer_only_folder(tiny_sd3_transformer_only_dir: Path) -> None:
    index = _model_index(tiny_sd3_transformer_only_dir)
    for name in SD3_TEXT_COMPONENTS:
        assert index[name] == [None, None]
        assert not (tiny_sd3_transformer_only_dir / name).exists()

    pipe = StableDiffusion3Pipeline.from_pretrained(
        tiny_sd3_transformer_only_dir, **dict.fromkeys(SD3_TEXT_COMPONENTS)
    )

    assert all(getattr(pipe, name) is None for name in SD3_TEXT_COMPONENTS)
    assert isinstance(pipe.vae, AutoencoderKL)
    assert pipe.vae_scale_factor == VAE_SCALE_FACTOR
    sample = torch.randn(1, SD3_LATENT_CHANNELS, LATENT, LATENT)
    assert _sd3_forward(pipe.transformer, sample).shape == sample.shape


def test_sd3_pixel_folder(tiny_sd3_pixel_dir: Path) -> None:
    index = _model_index(tiny_sd3_pixel_dir)
    assert index["vae"] == [None, None]
    assert not (tiny_sd3_pixel_dir / "vae").exists()

    pipe = StableDiffusion3Pipeline.from_pretrained(
        tiny_sd3_pixel_dir, vae=None, **dict.fromkeys(SD3_TEXT_COMPONENTS)
    )

    assert pipe.vae is None
    assert pipe.transformer.config.in_channels == pipe.transformer.config.out_channels == 3
    sample = torch.randn(1, 3, PIXELS, PIXELS)
    assert _sd3_forward(pipe.transformer, sample).shape == sample.shape


@pytest.mark.parametrize("fixture, guidance_embeds", [("tiny_flux_dir", False), ("tiny_flux_dev_dir", True)])
def test_flux_pipeline_loads_encodes_and_runs(
    fixture: str, guidance_embeds: bool, request: pytest.FixtureRequest
) -> None:
    folder: Path = request.getfixturevalue(fixture)
    pipe = FluxPipeline.from_pretrained(folder)

    assert pipe.vae_scale_factor == VAE_SCALE_FACTOR
    assert pipe.vae.config.scaling_factor == pytest.approx(0.3611)
    assert pipe.vae.config.shift_factor == pytest.approx(0.1159)
    scheduler = pipe.scheduler.config
    assert scheduler.use_dynamic_shifting
    assert (scheduler.base_shift, scheduler.max_shift) == pytest.approx((0.5, 1.15))
    assert (scheduler.base_image_seq_len, scheduler.max_image_seq_len) == (256, 4096)
    transformer = FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer")
    assert transformer.config.guidance_embeds is guidance_embeds
    assert transformer.config.in_channels == 4 * FLUX_LATENT_CHANNELS

    embeds, pooled, text_ids = pipe.encode_prompt(PROMPTS, max_sequence_length=T5_LENGTH)
    assert embeds.shape == (2, T5_LENGTH, FLUX_JOINT_DIM)
    assert pooled.shape == (2, FLUX_CLIP_DIM)
    assert text_ids.shape == (T5_LENGTH, 3)
    assert not torch.allclose(pooled[0], pooled[1])

    latents = torch.randn(2, FLUX_LATENT_CHANNELS, LATENT, LATENT)
    packed = pipe._pack_latents(latents, 2, FLUX_LATENT_CHANNELS, LATENT, LATENT)
    image_ids = pipe._prepare_latent_image_ids(2, LATENT // 2, LATENT // 2, "cpu", torch.float32)
    with torch.no_grad():
        out = transformer(
            hidden_states=packed,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            timestep=torch.full((2,), 0.5),
            img_ids=image_ids,
            txt_ids=text_ids,
            guidance=torch.full((2,), 3.5) if guidance_embeds else None,
        ).sample
    assert packed.shape == (2, (LATENT // 2) ** 2, 4 * FLUX_LATENT_CHANNELS)
    assert out.shape == packed.shape
    assert torch.isfinite(out).all()
    unpacked = pipe._unpack_latents(out, PIXELS, PIXELS, VAE_SCALE_FACTOR)
    assert unpacked.shape == latents.shape


def test_flux_without_text_encoders(tmp_path: Path) -> None:
    folder = make_tiny_flux(tmp_path, text_encoders=False)
    assert all(_model_index(folder)[name] == [None, None] for name in FLUX_TEXT_COMPONENTS)

    pipe = FluxPipeline.from_pretrained(folder, **dict.fromkeys(FLUX_TEXT_COMPONENTS))

    assert pipe.text_encoder is None
    assert pipe.text_encoder_2 is None
    assert isinstance(pipe.transformer, FluxTransformer2DModel)


def test_weights_are_seeded(tiny_sd3_dir: Path, tmp_path: Path) -> None:
    rng_state = torch.get_rng_state()
    same = make_tiny_sd3(tmp_path / "same", text_encoders=False, vae=False)
    other = make_tiny_sd3(tmp_path / "other", text_encoders=False, vae=False, seed=1)
    assert torch.equal(torch.get_rng_state(), rng_state)

    weights = "transformer/diffusion_pytorch_model.safetensors"
    reference = load_file(tiny_sd3_dir / weights)
    assert all(torch.equal(reference[key], value) for key, value in load_file(same / weights).items())
    assert not all(torch.equal(reference[key], value) for key, value in load_file(other / weights).items())


@pytest.mark.parametrize(
    "fixture",
    [
        "tiny_sd3_dir",
        "tiny_sd3_transformer_only_dir",
        "tiny_sd3_pixel_dir",
        "tiny_flux_dir",
        "tiny_flux_dev_dir",
    ],
)
def test_folders_are_tiny(fixture: str, request: pytest.FixtureRequest) -> None:
    assert _folder_bytes(request.getfixturevalue(fixture)) < 2 * 1024 * 1024
