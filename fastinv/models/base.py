"""The protocols every backend and adapter meets, and the bundle a loaded model folder becomes.

Conventions (DESIGN §2): latents are [B, C, H, W] float32 outside adapters; time is σ ∈ [0, 1]
as a float32 tensor of shape [B] (σ = 0 clean, σ = 1 noise); the velocity is v = ε − x0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from fastinv.conditioning import DEFAULT_EMBEDDED_GUIDANCE, INVERSION_EMBEDDED_GUIDANCE, Conditioning
from fastinv.errors import FastinvError
from fastinv.kernels.reference import guided
from fastinv.models.prompt_cache import PromptCache
from fastinv.schedule import flow_sigmas

if TYPE_CHECKING:
    from fastinv.models.offload import Offloader
    from fastinv.runtime.graph import GraphVelocity


@runtime_checkable
class VelocityModel(Protocol):
    """A velocity field v_θ(z, σ, c): torch module, ONNX Runtime session or TensorRT engine behind it."""

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """z: [B, C, H, W] float32; sigma: [B] float32 σ ∈ [0, 1]; returns v: [B, C, H, W] float32."""
        ...


class LatentCodec(Protocol):
    """Pixels [B, 3, H, W] in [-1, 1] ↔ model latents [B, C, H/f, W/f] (f = `scale_factor`)."""

    scale_factor: int
    channels: int

    def encode(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


class PromptEncoder(Protocol):
    """Turns a prompt into (prompt_embeds [1, L, D], pooled_embeds [1, P] or None)."""

    def __call__(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]: ...


Predict = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, Conditioning], torch.Tensor
]
"""`predict(z, sigma, prompt_embeds, pooled_embeds, cond)` → v, for text tensors already of z's batch size."""


def cfg_branches(
    predict: Predict,
    z: torch.Tensor,
    sigma: torch.Tensor,
    cond: Conditioning,
    *,
    dtype: torch.dtype,
    device: torch.device,
    fp16_remedy: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(v_prompt, v_null) from ONE `predict` call, v_null None without CFG: the text tensors (and, with CFG,
    the null prompt's, batched first) moved to `device` and `dtype` and expanded to the batch, z in `dtype`.

    fp16_remedy: for a network that runs in fp16, check v is finite and name this remedy when it is not.
    """
    batch = z.shape[0]

    def expand(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device, dtype).expand(batch, *t.shape[1:])

    text, pooled = expand(cond.prompt_embeds), expand(cond.pooled_embeds)
    if cond.uses_cfg:
        text = torch.cat([expand(cond.null_prompt_embeds), text])
        pooled = None if pooled is None else torch.cat([expand(cond.null_pooled_embeds), pooled])
        z, sigma = torch.cat([z, z]), torch.cat([sigma, sigma])
    v = predict(z.to(dtype), sigma, text, pooled, cond)
    if fp16_remedy is not None and not torch.isfinite(v).all():
        raise FastinvError(f"non-finite velocity in fp16 at σ={sigma[0].item():.4f}: {fp16_remedy}")
    if cond.uses_cfg:
        v_null, v_prompt = v.chunk(2)
        return v_prompt, v_null
    return v, None


class TransformerVelocity:
    """Base of the diffusers-transformer adapters: classifier-free guidance as ONE batched call.

    Subclasses implement `predict(z, sigma, prompt_embeds, pooled_embeds, cond)` for a batch whose
    text tensors already match the batch size; `cfg_branches` does the CFG batching, the dtype round trip
    (float32 state, network dtype inside) and the fp16 overflow check, and `__call__` the blend.
    `backend` names what runs `predict` (torch here; exported graphs: `fastinv.runtime.graph.GraphVelocity`).
    """

    backend = "torch"
    offload: Offloader | None = None
    """Model CPU offload (`fastinv.models.offload`): the network rests in CPU memory and `branches` moves it
    to the offloader's device first; None: it stays where it is."""

    def __init__(self, network: torch.nn.Module, dtype: torch.dtype) -> None:
        self.network = network
        self.dtype = dtype

    @property
    def device(self) -> torch.device:
        """Where the network runs (with offload: its device, also while the network rests in CPU memory)."""
        if self.offload is not None:
            return self.offload.device
        return next(self.network.parameters()).device

    @property
    def config(self) -> Mapping[str, Any]:
        """The transformer's config."""
        return self.network.config

    def predict(
        self,
        z: torch.Tensor,
        sigma: torch.Tensor,
        prompt_embeds: torch.Tensor,
        pooled_embeds: torch.Tensor | None,
        cond: Conditioning,
    ) -> torch.Tensor:
        raise NotImplementedError

    def branches(
        self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(v_prompt, v_null) in the network's dtype, v_null None without CFG: both branches in ONE call.

        For fused kernels that do the CFG combine in their own pass (`fastinv.kernels`).
        """
        fp16 = "use --dtype bf16 or fp32" if self.dtype == torch.float16 else None
        if self.offload is not None:
            self.offload.use(self.network)
        return cfg_branches(
            self.predict, z, sigma, cond, dtype=self.dtype, device=self.device, fp16_remedy=fp16
        )

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Differentiable in z (the weights are frozen): callers choose no_grad or, e.g. PreciseInv, grad."""
        v, v_null = self.branches(z, sigma, cond)
        return guided(v, v_null, cond.guidance_scale)


@dataclass
class FlowModel:
    """Everything loaded from one model folder: the velocity network and what surrounds it.

    family: "sd3" or "flux"; size_multiple: pixel sides must be multiples of it (VAE factor × patch);
    max_side: largest pixel side the positional embedding covers (None: unbounded);
    resolution: (W, H) for fixed-resolution models (images are resized and center-cropped to it), else None.
    solver_dir: the folder's trained DeepInv solver (its solver/ subfolder), if it has one.
    """

    name: str
    family: str
    velocity: TransformerVelocity | GraphVelocity
    codec: LatentCodec
    prompt_encoder: PromptEncoder
    scheduler_config: dict
    size_multiple: int
    max_side: int | None
    device: torch.device
    dtype: torch.dtype
    resolution: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)
    schedule_seq_len: Callable[[int, int], int] | None = None
    solver_dir: Path | None = None
    weights_dir: Path | None = None
    takes_embedded_guidance: bool = False
    prompt_cache: PromptCache = field(default_factory=PromptCache, repr=False)

    def sigmas(self, steps: int, latent_hw: tuple[int, int]) -> torch.Tensor:
        """The N+1 sampling sigmas (1 → 0, float64) for `steps` steps at latent size (h, w)."""
        seq_len = None if self.schedule_seq_len is None else self.schedule_seq_len(*latent_hw)
        return flow_sigmas(self.scheduler_config, steps, image_seq_len=seq_len, family=self.family)

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prompt_embeds [1, L, D], pooled [1, P] | None) for `prompt` on the model's device, from the
        bounded LRU `prompt_cache` (encoded on a miss)."""

        def encode(text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
            embeds, pooled = self.prompt_encoder(text)
            return embeds.to(self.device), None if pooled is None else pooled.to(self.device)

        return self.prompt_cache.get(prompt, encode)

    def conditioning(
        self,
        prompt: str = "",
        guidance_scale: float = 1.0,
        embedded_guidance: float | None = None,
        *,
        inverting: bool = False,
    ) -> Conditioning:
        """Conditioning for `prompt`; CFG (guidance_scale != 1) adds the "" prompt as the null branch.

        For a model with an embedded-guidance input (FLUX-dev) an unset `embedded_guidance` becomes the
        default of the phase: 1 for inverting (as the RF-Solver/FireFlow authors), 3.5 for sampling
        (FluxPipeline's); other models record None.
        """
        if not self.takes_embedded_guidance:
            embedded_guidance = None
        elif embedded_guidance is None:
            embedded_guidance = INVERSION_EMBEDDED_GUIDANCE if inverting else DEFAULT_EMBEDDED_GUIDANCE
        embeds, pooled = self.encode_prompt(prompt)
        null_embeds, null_pooled = self.encode_prompt("") if guidance_scale != 1.0 else (None, None)
        return Conditioning(
            prompt=prompt,
            prompt_embeds=embeds,
            pooled_embeds=pooled,
            guidance_scale=guidance_scale,
            null_prompt_embeds=null_embeds,
            null_pooled_embeds=null_pooled,
            embedded_guidance=embedded_guidance,
        )
