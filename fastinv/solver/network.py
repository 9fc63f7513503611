"""The DeepInv solver: a dual-branch network of diffusers JointTransformerBlocks that corrects the plain
inversion velocity of one step, ε̂ = v + Δ(v, z_cur, z0, text, σ_cur, σ_next).

A diffusers model (ModelMixin + ConfigMixin): `save_pretrained` / `from_pretrained` write and read a
config.json + safetensors folder. Latents are [B, C, H, W] at any size divisible by the patch size.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import JointTransformerBlock
from diffusers.models.embeddings import PatchEmbed, PixArtAlphaTextProjection, TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormContinuous
from torch import nn


class SigmaEmbedding(nn.Module):
    """σ [B] in [0, 1] → [B, width]: diffusers' sinusoidal projection of σ·1000 and an MLP."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.embed = TimestepEmbedding(in_channels=256, time_embed_dim=width)

    def forward(self, sigma: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.embed(self.proj(sigma * 1000).to(dtype))


class DeepInvSolver(ModelMixin, ConfigMixin):
    """ε̂ = v + Δ: the per-step inversion noise, from one forward pass.

    Inputs (forward): v [B, C, H, W] the denoiser's velocity at (z_cur, σ_next); z [B, C, H, W] the current
    inversion latent z_cur; x0 [B, C, H, W] the clean latent; text [B, L, text_dim] prompt token states;
    pooled [B, pooled_dim] or None; sigma, sigma_next [B]: σ_cur < σ_next of the step (σ, not ×1000).

    Left branch (semantic prior): tokens of v attend jointly with the text tokens; conditioned on
    emb(σ_next) + emb(pooled). Right branch (content): tokens of v attend jointly with tokens of [z_cur, x0]
    (channel concatenation); conditioned on emb(σ_next) + emb(mean of x0's patch tokens). A merge
    block (hidden = left, context = right), AdaLayerNormContinuous and a zero-initialised output projection:
    an untrained solver returns v exactly.

    Deviations from the reference (which only works at 1024 px, one T per step size):
    - x0 enters through a patch embedding averaged over tokens (any resolution), not a Linear over a
      flattened 128×128 map; its tokens also join z_cur's as right-branch context;
    - emb(σ_cur) is added to both branches' conditioning: the step size varies with T, and the correction
      a fixed-point solution needs scales with it.
    attention_head_dim is per head (current diffusers semantics): width = num_attention_heads × head_dim.
    """

    _supports_gradient_checkpointing = False
    warm_start = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 16,
        patch_size: int = 2,
        num_attention_heads: int = 4,
        attention_head_dim: int = 64,
        left_layers: int = 1,
        right_layers: int = 2,
        text_dim: int = 4096,
        pooled_dim: int | None = 2048,
        sample_size: int = 128,
    ) -> None:
        super().__init__()
        width = num_attention_heads * attention_head_dim

        def patches(channels: int) -> PatchEmbed:
            return PatchEmbed(sample_size, sample_size, patch_size, channels, width, pos_embed_max_size=None)

        def blocks(count: int) -> nn.ModuleList:
            """`count` joint blocks; the last one only reads its context (its context output is unused)."""
            return nn.ModuleList(
                JointTransformerBlock(
                    width, num_attention_heads, attention_head_dim, context_pre_only=k == count - 1
                )
                for k in range(count)
            )

        self.left_embed, self.right_embed = patches(in_channels), patches(in_channels)
        self.content_embed, self.x0_embed = patches(2 * in_channels), patches(in_channels)
        self.text_proj = nn.Linear(text_dim, width)
        self.pooled_proj = None if pooled_dim is None else PixArtAlphaTextProjection(pooled_dim, width)
        self.x0_proj = PixArtAlphaTextProjection(width, width)
        self.sigma_next_embed, self.sigma_embed = SigmaEmbedding(width), SigmaEmbedding(width)
        self.left_blocks, self.right_blocks = blocks(left_layers), blocks(right_layers)
        self.merge = JointTransformerBlock(
            width, num_attention_heads, attention_head_dim, context_pre_only=True
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
        text: torch.Tensor,
        pooled: torch.Tensor | None,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
    ) -> torch.Tensor:
        """The corrected noise ε̂ [B, C, H, W] (same dtype as v)."""
        batch, channels, height, width = v.shape
        dtype = self.proj_out.weight.dtype
        v_in, z_in, x0_in = (t.to(dtype) for t in (v, z, x0))
        time = self.sigma_next_embed(sigma_next, dtype) + self.sigma_embed(sigma, dtype)
        content = self.content_embed(torch.cat([z_in, x0_in], dim=1))
        x0_summary = self.x0_embed(x0_in).mean(dim=1)
        left_temb = time if self.pooled_proj is None else time + self.pooled_proj(pooled.to(dtype))
        right_temb = time + self.x0_proj(x0_summary)

        left, context = self.left_embed(v_in), self.text_proj(text.to(dtype))
        for block in self.left_blocks:
            context, left = block(left, context, left_temb)
        right = self.right_embed(v_in)
        for block in self.right_blocks:
            content, right = block(right, content, right_temb)
        _, merged = self.merge(left, right, left_temb + right_temb)
        delta = self.proj_out(self.norm_out(merged, left_temb + right_temb))

        p = self.config.patch_size
        delta = delta.reshape(batch, height // p, width // p, p, p, channels)
        delta = delta.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, height, width)
        return v + delta.to(v.dtype)
