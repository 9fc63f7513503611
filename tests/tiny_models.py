"""Tiny random-weight SD3 / FLUX model folders, written with diffusers' own ``save_pretrained``.

The folders have the exact layout of real hub checkpoints (``model_index.json`` plus one sub-folder per
component), so the product's loaders are exercised against genuine diffusers/transformers files, but every
component is a few kilobytes and runs in milliseconds on CPU. Nothing is downloaded: the tokenizers are built
from in-code vocabularies.

Dimensions are deliberately all different from each other (and from the real models) so that a loader which
hard-codes a size or mixes two of them up fails loudly:

SD3 (``make_tiny_sd3``)
    VAE: 4 latent channels, 4 down blocks -> ``vae_scale_factor`` 8, scaling 1.5305 / shift 0.0609.
    Transformer: patch 2, 4 heads x 8 = inner dim 32, ``joint_attention_dim`` 48 (= T5 ``d_model``),
    ``pooled_projection_dim`` 40 (= 16 + 24, the two CLIP projections), ``pos_embed_max_size`` 16
    (images up to 256 px; 64 px -> 8x8 latent -> 16 tokens).
    Text: CLIP-L-like hidden/proj 16, CLIP-G-like hidden/proj 24, 77 tokens each; T5 ``d_model`` 48.
    ``encode_prompt(max_sequence_length=L)`` returns prompt embeds ``(B, 77 + L, 48)`` and pooled ``(B, 40)``.
    SD3.5 (``make_tiny_sd3(..., sd35=True)``): the same with SD3.5-medium's MMDiT-X switches,
    ``qk_norm="rms_norm"`` and ``dual_attention_layers=(0,)`` (dual attention in the first of the 2 layers).

FLUX (``make_tiny_flux``)
    VAE: 4 latent channels (16 packed), ``vae_scale_factor`` 8, scaling 0.3611 / shift 0.1159.
    Transformer: patch 1, ``in_channels`` 16, 2 heads x 16 = inner dim 32, RoPE axes (4, 6, 6),
    ``joint_attention_dim`` 48 (= T5 ``d_model``), ``pooled_projection_dim`` 24 (= CLIP hidden size).
    ``encode_prompt(max_sequence_length=L)`` returns ``(B, L, 48)``, pooled ``(B, 24)``, text ids ``(L, 3)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

__all__ = [
    "CLIP_MAX_LENGTH",
    "FLUX_CLIP_DIM",
    "FLUX_JOINT_DIM",
    "FLUX_LATENT_CHANNELS",
    "SD3_CLIP_DIMS",
    "SD3_JOINT_DIM",
    "SD3_LATENT_CHANNELS",
    "SD3_POOLED_DIM",
    "T5_MAX_LENGTH",
    "VAE_SCALE_FACTOR",
    "make_tiny_flux",
    "make_tiny_sd3",
]

VAE_SCALE_FACTOR = 8
CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 512
SD3_LATENT_CHANNELS = 4
SD3_CLIP_DIMS = (16, 24)
SD3_POOLED_DIM = sum(SD3_CLIP_DIMS)
SD3_JOINT_DIM = 48
FLUX_LATENT_CHANNELS = 4
FLUX_CLIP_DIM = 24
FLUX_JOINT_DIM = 48

_WORDS = ("a", "an", "the", "of", "on", "in", "and", "photo", "cat", "dog", "red", "blue", "house", "tree")

_M = TypeVar("_M")


def _seeded(seed: int, build: Callable[[], _M]) -> _M:
    """Run ``build`` under ``torch.manual_seed(seed)`` without disturbing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _clip_tokenizer() -> CLIPTokenizer:
    """A byte-level BPE CLIP tokenizer: the 256 byte symbols (plain and ``</w>``) plus a few merged words."""
    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for symbol in [*alphabet, *(f"{c}</w>" for c in alphabet)]:
        vocab[symbol] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        left = word[0]
        for i, char in enumerate(word[1:], start=1):
            right = char + ("</w>" if i == len(word) - 1 else "")
            if (left, right) not in merges:
                merges.append((left, right))
            left += right
            vocab.setdefault(left, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH)


def _t5_tokenizer() -> T5TokenizerFast:
    """A unigram T5 tokenizer (``<pad>``=0, ``</s>``=1, ``<unk>``=2 as in T5): ASCII chars + a few words."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{word}", -3.0) for word in _WORDS]
    pieces += [(chr(code), -5.0) for code in range(33, 127)]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def _clip_config(hidden: int, vocab_size: int, tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        projection_dim=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _t5_encoder(d_model: int, vocab_size: int, seed: int) -> T5EncoderModel:
    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    return _seeded(seed, lambda: T5EncoderModel(config).eval())


def _vae(latent_channels: int, scaling_factor: float, shift_factor: float, seed: int) -> AutoencoderKL:
    depth = VAE_SCALE_FACTOR.bit_length()  # diffusers: vae_scale_factor = 2 ** (depth - 1)
    return _seeded(
        seed,
        lambda: AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * depth,
            up_block_types=("UpDecoderBlock2D",) * depth,
            block_out_channels=(8,) * depth,
            layers_per_block=1,
            latent_channels=latent_channels,
            norm_num_groups=4,
            sample_size=64,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ),
    )


def make_tiny_sd3(
    root: Path,
    *,
    text_encoders: bool = True,
    vae: bool = True,
    pixel_space: bool = False,
    sd35: bool = False,
    seed: int = 0,
) -> Path:
    """Write a tiny ``StableDiffusion3Pipeline`` folder to ``root`` and return ``root``.

    ``text_encoders=False`` saves the two CLIPs, T5 and their tokenizers as ``null`` entries in
    ``model_index.json``; ``vae=False`` leaves out the VAE the same way. ``pixel_space=True`` builds a
    3-channel transformer that works directly on 64x64 pixels and implies no VAE. ``sd35=True`` gives the
    transformer SD3.5-medium's ``qk_norm="rms_norm"`` and a dual-attention first layer.
    """
    with_vae = vae and not pixel_space
    channels = 3 if pixel_space else SD3_LATENT_CHANNELS
    transformer = _seeded(
        seed,
        lambda: SD3Transformer2DModel(
            sample_size=64 if pixel_space else 64 // VAE_SCALE_FACTOR,
            patch_size=2,
            in_channels=channels,
            out_channels=channels,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=SD3_JOINT_DIM,
            caption_projection_dim=32,
            pooled_projection_dim=SD3_POOLED_DIM,
            pos_embed_max_size=64 if pixel_space else 16,
            qk_norm="rms_norm" if sd35 else None,
            dual_attention_layers=(0,) if sd35 else (),
        ),
    )
    components: dict[str, object] = {
        "transformer": transformer,
        "scheduler": FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        "vae": _vae(SD3_LATENT_CHANNELS, 1.5305, 0.0609, seed + 1) if with_vae else None,
        "text_encoder": None,
        "tokenizer": None,
        "text_encoder_2": None,
        "tokenizer_2": None,
        "text_encoder_3": None,
        "tokenizer_3": None,
    }
    if text_encoders:
        clip_tokenizer, t5_tokenizer = _clip_tokenizer(), _t5_tokenizer()
        for index, (suffix, hidden) in enumerate(zip(("", "_2"), SD3_CLIP_DIMS, strict=True)):
            config = _clip_config(hidden, len(clip_tokenizer), clip_tokenizer)
            components[f"text_encoder{suffix}"] = _seeded(
                seed + 2 + index, lambda config=config: CLIPTextModelWithProjection(config).eval()
            )
            components[f"tokenizer{suffix}"] = clip_tokenizer
        components["text_encoder_3"] = _t5_encoder(SD3_JOINT_DIM, len(t5_tokenizer), seed + 4)
        components["tokenizer_3"] = t5_tokenizer
    StableDiffusion3Pipeline(**components).save_pretrained(root)
    return root


def make_tiny_flux(
    root: Path,
    *,
    guidance_embeds: bool = False,
    text_encoders: bool = True,
    seed: int = 0,
) -> Path:
    """Write a tiny ``FluxPipeline`` folder to ``root`` and return ``root``.

    ``guidance_embeds=False`` is FLUX.1-schnell-like, ``True`` is FLUX.1-dev-like (embedded guidance).
    ``text_encoders=False`` saves CLIP, T5 and their tokenizers as ``null`` entries in ``model_index.json``.
    """
    transformer = _seeded(
        seed,
        lambda: FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * FLUX_LATENT_CHANNELS,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=FLUX_JOINT_DIM,
            pooled_projection_dim=FLUX_CLIP_DIM,
            guidance_embeds=guidance_embeds,
            axes_dims_rope=(4, 6, 6),
        ),
    )
    components: dict[str, object] = {
        "transformer": transformer,
        "scheduler": FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000,
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        "vae": _vae(FLUX_LATENT_CHANNELS, 0.3611, 0.1159, seed + 1),
        "text_encoder": None,
        "tokenizer": None,
        "text_encoder_2": None,
        "tokenizer_2": None,
    }
    if text_encoders:
        clip_tokenizer, t5_tokenizer = _clip_tokenizer(), _t5_tokenizer()
        config = _clip_config(FLUX_CLIP_DIM, len(clip_tokenizer), clip_tokenizer)
        components["text_encoder"] = _seeded(seed + 2, lambda: CLIPTextModel(config).eval())
        components["tokenizer"] = clip_tokenizer
        components["text_encoder_2"] = _t5_encoder(FLUX_JOINT_DIM, len(t5_tokenizer), seed + 4)
        components["tokenizer_2"] = t5_tokenizer
    FluxPipeline(**components).save_pretrained(root)
    return root
