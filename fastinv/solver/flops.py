"""What one solver forward costs next to one forward of the denoiser it serves: FLOPs and parameters.

Every model is built and run on the meta device, so nothing is allocated (full-size SD3 / FLUX included)
and a count takes seconds. FLOPs are torch's FlopCounterMode's: matmuls, convolutions and attention
(a multiply-add counts 2); elementwise work (norms, activations, modulation) is left out of every model.

Attention: on real CPU tensors F.scaled_dot_product_attention runs
aten._scaled_dot_product_flash_attention_for_cpu, which has no flop formula, so FlopCounterMode silently
skips it; on meta tensors it currently falls back to the math path. So as not to depend on that fallback,
`count_flops` runs under sdpa_kernel(SDPBackend.MATH): attention becomes two counted bmm (QKᵀ and AV,
4·tokens²·width FLOPs together). tests/test_solver_flops.py checks one JointTransformerBlock against its
analytic count.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from fastinv.models.loading import DEFAULT_MODEL
from fastinv.solver.presets import preset

SD3_MEDIUM: dict[str, Any] = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "out_channels": 16,
    "pos_embed_max_size": 192,
}
FLUX_DEV: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
SD3_TEXT_TOKENS = 77 + 256  # CLIP + T5
FLUX_TEXT_TOKENS = 512  # T5


@dataclass(frozen=True)
class Cost:
    """One forward at batch 1: flops (FLOPs, multiply-add = 2) and params (parameter count)."""

    flops: int
    params: int


def count_flops(model: nn.Module, *args: Any, **kwargs: Any) -> int:
    """FLOPs of model(*args, **kwargs) without gradients, attention counted (math SDPA path)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(*args, **kwargs)
    return counter.get_total_flops()


def count_params(model: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())


def sd3_cost(config: dict[str, Any], latent: tuple[int, int, int], text_tokens: int) -> Cost:
    """One SD3Transformer2DModel(**config) forward on latent (C, H, W) with text_tokens prompt tokens."""
    with torch.device("meta"):
        model = SD3Transformer2DModel.from_config(config)
        flops = count_flops(
            model,
            hidden_states=torch.empty(1, *latent),
            encoder_hidden_states=torch.empty(1, text_tokens, model.config.joint_attention_dim),
            pooled_projections=torch.empty(1, model.config.pooled_projection_dim),
            timestep=torch.empty(1),
        )
    return Cost(flops, count_params(model))


def flux_cost(config: dict[str, Any], latent: tuple[int, int, int], text_tokens: int) -> Cost:
    """One FluxTransformer2DModel(**config) forward on latent (C, H, W), packed 2×2 as FluxPipeline does
    ([1, H/2·W/2, 4C], with its img_ids), text_tokens prompt tokens (txt_ids zero) and a guidance value."""
    from diffusers import FluxPipeline  # imports transformers: only when FLUX is counted

    channels, height, width = latent
    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config(config)
        flops = count_flops(
            model,
            hidden_states=torch.empty(1, height // 2 * width // 2, 4 * channels),
            encoder_hidden_states=torch.empty(1, text_tokens, model.config.joint_attention_dim),
            pooled_projections=torch.empty(1, model.config.pooled_projection_dim),
            timestep=torch.empty(1),
            img_ids=FluxPipeline._prepare_latent_image_ids(1, height // 2, width // 2, "meta", torch.float32),
            txt_ids=torch.zeros(text_tokens, 3),
            guidance=torch.empty(1),
        )
    return Cost(flops, count_params(model))


def network_cost(
    network_class: type[nn.Module], config: dict[str, Any], latent: tuple[int, int, int], text_tokens: int
) -> Cost:
    """One forward of a solver network built from `config` on the meta device: latent inputs [1, *latent],
    and for the paper design (it reads text) text_tokens prompt tokens."""
    with torch.device("meta"):
        model = network_class(**config)
        latents = [torch.empty(1, *latent) for _ in range(4 if model.warm_start else 3)]
        sigmas = (torch.empty(1), torch.empty(1))
        if model.warm_start:
            flops = count_flops(model, *latents, *sigmas)
        else:
            pooled = None if config["pooled_dim"] is None else torch.empty(1, config["pooled_dim"])
            flops = count_flops(
                model, *latents, torch.empty(1, text_tokens, config["text_dim"]), pooled, *sigmas
            )
    return Cost(flops, count_params(model))


def solver_cost(name: str, latent: tuple[int, int, int], text_tokens: int) -> Cost:
    """One forward of preset `name`'s network (see `network_cost`)."""
    chosen = preset(name)
    return network_cost(chosen.network, chosen.config, latent, text_tokens)


def denoiser_cost(
    family: str, config: dict[str, Any], latent: tuple[int, int, int], text_tokens: int
) -> Cost:
    """One forward of an SD3 ("sd3") or FLUX ("flux") transformer of `config` on latents (C, H, W)."""
    public = {k: v for k, v in config.items() if not k.startswith("_")}
    return (sd3_cost if family == "sd3" else flux_cost)(public, latent, text_tokens)


def _default_model_config() -> dict[str, Any]:
    return json.loads((DEFAULT_MODEL / "transformer" / "config.json").read_text())


@dataclass(frozen=True)
class Target:
    """The denoiser a solver preset serves and the forward both are counted at (batch 1).

    latent: (C, H, W) as the solver sees it; text_tokens: prompt length; cost(latent, text_tokens):
    the denoiser's forward.
    """

    denoiser: str
    resolution: str
    latent: tuple[int, int, int]
    text_tokens: int
    cost: Callable[[tuple[int, int, int], int], Cost]


DEFAULT_MODEL_TARGET = Target(
    "default model (pixel-space SD3)",
    "64² native (pixels 3×64×64)",
    (3, 64, 64),
    16,
    lambda latent, tokens: sd3_cost(_default_model_config(), latent, tokens),
)
SD3_MEDIUM_TARGET = Target(
    "SD3-medium", "1024² (latent 16×128×128)", (16, 128, 128), SD3_TEXT_TOKENS, partial(sd3_cost, SD3_MEDIUM)
)
FLUX_DEV_TARGET = Target(
    "FLUX.1-dev", "1024² (latent 16×128×128)", (16, 128, 128), FLUX_TEXT_TOKENS, partial(flux_cost, FLUX_DEV)
)
TARGETS: dict[str, Target] = {
    "default-model": DEFAULT_MODEL_TARGET,
    "default-model-lean": DEFAULT_MODEL_TARGET,
    "default-model-paper": DEFAULT_MODEL_TARGET,
    "sd3-medium": SD3_MEDIUM_TARGET,
    "sd3-medium-ref": SD3_MEDIUM_TARGET,
    "sd3-medium-paper": SD3_MEDIUM_TARGET,
    "flux": FLUX_DEV_TARGET,
    "flux-paper": FLUX_DEV_TARGET,
}
"""The denoiser each solver preset serves."""


def compare(name: str) -> dict[str, Any]:
    """Solver preset `name` vs its denoiser (TARGETS[name]), one forward each: GFLOPs (1e9 FLOPs), their
    ratio solver/denoiser, and parameter counts."""
    target = TARGETS[name]
    solver = solver_cost(name, target.latent, target.text_tokens)
    denoiser = target.cost(target.latent, target.text_tokens)
    return {
        "preset": name,
        "design": "warm start" if preset(name).network.warm_start else "paper",
        "denoiser": target.denoiser,
        "resolution": target.resolution,
        "solver_gflops": solver.flops / 1e9,
        "denoiser_gflops": denoiser.flops / 1e9,
        "ratio": solver.flops / denoiser.flops,
        "solver_params": solver.params,
        "denoiser_params": denoiser.params,
    }
