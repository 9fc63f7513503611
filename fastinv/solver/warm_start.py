"""The warm-start DeepInv solver (fastinv's design): one pass that turns the denoiser's velocity at the
warm-started point into the fixed point of the implicit inversion step.

Per step (σ → σ_next, h = σ_next − σ) the method evaluates v = v_θ(z + h·f_prev, σ_next), the velocity at
the point the previous step's noise f_prev predicts, and the solver returns ε̂ ≈ f*, the solution of
f* = v_θ(z + h·f*, σ_next). Near the solution, f* − v ≈ (I − h·J)⁻¹·h·J·(v − f_prev), J = ∂v_θ/∂z: the
correction is a linear map of Δ = v − f_prev that depends on the state. So the network sees Δ / ‖Δ‖ (unit
scale at every T) with the state, and its output is multiplied back by ‖Δ‖:

    ε̂ = v + s·N(Δ/s, v, z + h·f_prev, x0; σ_next, h/σ_next, log s),   s = RMS(Δ) per sample.

N is a single-stream DiT (diffusers `SD3SingleTransformerBlock`s) on patch tokens, with a zero-initialised
output: an untrained solver returns v, i.e. `warm_fixed_point` with one correction. Text is not an input:
the prompt reaches the solver through v and f_prev, which the denoiser computed with it (and with CFG).
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import PatchEmbed
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormContinuous
from diffusers.models.transformers.transformer_sd3 import SD3SingleTransformerBlock
from torch import nn

from fastinv.solver.network import SigmaEmbedding

FEATURES = 4
"""Input maps, each [B, C, H, W]: Δ/s, v, z + h·f_prev, x0."""
SCALE_RANGE = (1e-6, 1.0)
"""s is embedded as log10(s) mapped from this range onto [0, 1] (clamped)."""


class WarmStartSolver(ModelMixin, ConfigMixin):
    """ε̂ [B, C, H, W] from v, z, x0, f_prev [B, C, H, W] and σ, σ_next [B] (σ, not ×1000).

    attention_head_dim is per head: width = num_attention_heads × attention_head_dim. Any H, W divisible by
    the patch size (sincos positions are recomputed for sizes other than sample_size).
    """

    _supports_gradient_checkpointing = False
    warm_start = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 16,
        patch_size: int = 2,
        num_attention_heads: int = 8,
        attention_head_dim: int = 64,
        layers: int = 2,
        sample_size: int = 128,
    ) -> None:
        super().__init__()
        width = num_attention_heads * attention_head_dim
        self.embed = PatchEmbed(
            sample_size, sample_size, patch_size, FEATURES * in_channels, width, pos_embed_max_size=None
        )
        self.sigma_next_embed = SigmaEmbedding(width)
        self.ratio_embed = SigmaEmbedding(width)  # h / σ_next ∈ (0, 1]: how implicit the step is
        self.scale_embed = SigmaEmbedding(width)
        self.blocks = nn.ModuleList(
            SD3SingleTransformerBlock(width, num_attention_heads, attention_head_dim) for _ in range(layers)
        )
        self.norm_out = AdaLayerNormContinuous(width, width, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(width, patch_size * patch_size * in_channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(
        self,
        v: torch.Tensor,
        z: torch.Tensor,
        x0: torch.Tensor,
        f_prev: torch.Tensor,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
    ) -> torch.Tensor:
        """The corrected noise ε̂ [B, C, H, W] in float32 (features and the rescaling in float32)."""
        batch, channels, height, width = v.shape
        dtype = self.proj_out.weight.dtype
        v, z, x0, f_prev = (t.float() for t in (v, z, x0, f_prev))
        h = (sigma_next - sigma).float()
        delta = v - f_prev
        scale = delta.flatten(1).pow(2).mean(dim=1).sqrt().clamp(min=SCALE_RANGE[0])  # [B]
        lo, hi = (math.log10(x) for x in SCALE_RANGE)
        scale_unit = ((scale.log10() - lo) / (hi - lo)).clamp(0, 1)
        point = z + h.view(-1, 1, 1, 1) * f_prev
        features = torch.cat([delta / scale.view(-1, 1, 1, 1), v, point, x0], dim=1).to(dtype)
        temb = (
            self.sigma_next_embed(sigma_next, dtype)
            + self.ratio_embed(h / sigma_next.float().clamp(min=1e-6), dtype)
            + self.scale_embed(scale_unit, dtype)
        )
        tokens = self.embed(features)
        for block in self.blocks:
            tokens = block(tokens, temb)
        out = self.proj_out(self.norm_out(tokens, temb))

        p = self.config.patch_size
        out = out.reshape(batch, height // p, width // p, p, p, channels)
        out = out.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, height, width)
        return v + scale.view(-1, 1, 1, 1) * out.float()
