"""Prompt conditioning: produced once per prompt, reused for every denoiser call."""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_EMBEDDED_GUIDANCE = 3.5
"""FLUX-dev's embedded guidance for sampling (FluxPipeline's default)."""
INVERSION_EMBEDDED_GUIDANCE = 1.0
"""FLUX-dev's embedded guidance for inverting (the RF-Solver/FireFlow authors'; flux_guidance.py)."""


@dataclass(frozen=True)
class Conditioning:
    """Text conditioning of one prompt, batch dimension 1 (broadcast to the latent batch by adapters).

    prompt_embeds: [1, L, D] token states (encoder_hidden_states of the transformer).
    pooled_embeds: [1, P] pooled text vector (pooled_projections), or None for models without one.
    guidance_scale: classifier-free guidance scale w; v = v_null + w·(v_prompt − v_null). 1 disables CFG.
    null_prompt_embeds / null_pooled_embeds: the "" prompt, required when guidance_scale != 1.
    embedded_guidance: the guidance value fed to guidance-distilled models (FLUX-dev); None elsewhere.
    """

    prompt: str
    prompt_embeds: torch.Tensor
    pooled_embeds: torch.Tensor | None = None
    guidance_scale: float = 1.0
    null_prompt_embeds: torch.Tensor | None = None
    null_pooled_embeds: torch.Tensor | None = None
    embedded_guidance: float | None = None

    @property
    def uses_cfg(self) -> bool:
        """True when the velocity is a CFG blend of a prompt and a null branch (one batched call)."""
        return self.guidance_scale != 1.0

    def __post_init__(self) -> None:
        if self.uses_cfg and self.null_prompt_embeds is None:
            raise ValueError("classifier-free guidance needs null_prompt_embeds (the '' prompt)")
