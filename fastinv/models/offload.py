"""Memory plans: where a loaded model's components rest between their uses (`--offload`, RunConfig.offload).

- none: every component on the run's device.
- text: the text encoders stay in CPU memory and encode there (once per prompt: the prompt cache keeps the
  embeddings); the transformer and VAE are on the device, which never holds T5.
- model: model CPU offload (what diffusers' `enable_model_cpu_offload` does, here without accelerate's
  hooks): every component rests in CPU memory and moves to the device when it runs, after the one that ran
  before went back, so at most one of {text encoders, VAE, transformer} is on the device. Prompts are
  encoded, then the text encoders leave before the denoiser comes. An image costs two host ↔ device copies
  of the transformer's weights (VAE encode → transformer → VAE decode).

A model is loaded into CPU memory and then placed by `plan_model`. The DeepInv solver (small) stays on the
device. `check_offload` (`fastinv.run_config`) says which runs may offload: the torch backend on CUDA.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from fastinv.models.base import FlowModel, PromptEncoder
from fastinv.models.codecs import VaeCodec
from fastinv.models.prompts import PipelinePrompts
from fastinv.run_config import CPU

TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
"""A diffusers pipeline's text-encoder attributes (SD3 has three, FLUX two)."""


def place(modules: Sequence[torch.nn.Module], device: torch.device) -> None:
    """Move each module's parameters and buffers to `device`, in place."""
    for module in modules:
        module.to(device)


class Offloader:
    """Keeps at most one component on `device`: `use` moves one there, after the previous one went back to
    CPU memory. A component is a tuple of modules that run together (the text encoders)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.resident: tuple[torch.nn.Module, ...] = ()

    def use(self, *modules: torch.nn.Module) -> None:
        """Put `modules` on the device (a no-op when they are there): first the resident ones to the CPU."""
        if len(modules) == len(self.resident) and all(
            a is b for a, b in zip(modules, self.resident, strict=True)
        ):
            return
        place(self.resident, CPU)
        place(modules, self.device)
        self.resident = modules


class OffloadedCodec:
    """A VaeCodec whose VAE rests in CPU memory and moves to the offloader's device to encode or decode."""

    def __init__(self, codec: VaeCodec, offloader: Offloader) -> None:
        self.codec = codec
        self.offloader = offloader
        self.scale_factor = codec.scale_factor
        self.channels = codec.channels

    @property
    def vae(self) -> torch.nn.Module:
        return self.codec.vae

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, H, W] in [-1, 1] → latents [B, C, H/f, W/f] float32, on the device."""
        self.offloader.use(self.codec.vae)
        return self.codec.encode(pixels)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, C, h, w] → pixels [B, 3, h·f, w·f] float32 in [-1, 1], on the device."""
        self.offloader.use(self.codec.vae)
        return self.codec.decode(latents.to(self.offloader.device))


class OffloadedPrompts:
    """A pipeline's text encoders as one component: in CPU memory, moved to the device to encode a prompt
    (and left there until the next component runs)."""

    def __init__(self, encoder: PipelinePrompts, offloader: Offloader) -> None:
        self.encoder = encoder
        self.offloader = offloader
        found = (getattr(encoder.pipeline, name, None) for name in TEXT_ENCODERS)
        self.modules = tuple(module for module in found if isinstance(module, torch.nn.Module))

    def __call__(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prompt_embeds [1, L, D], pooled [1, P]) float32 on the CPU."""
        self.offloader.use(*self.modules)
        return self.encoder(prompt)


def plan_model(model: FlowModel, offload: str, device: torch.device) -> FlowModel:
    """`model` (loaded in CPU memory, offload "text" or "model") placed for the plan and run on `device`:
    "text" moves the transformer and VAE to the device and leaves the prompt encoder on the CPU; "model"
    leaves all of them in CPU memory behind one Offloader."""
    velocity, codec, prompts = model.velocity, model.codec, model.prompt_encoder
    vae = [codec.vae] if isinstance(codec, VaeCodec) else []
    if offload == "text":
        place([velocity.network, *vae], device)
        note = (
            "memory plan: text encoders in CPU memory (prompts encode there), transformer and VAE on device"
        )
    else:
        offloader = Offloader(device)
        velocity.offload = offloader
        if vae:
            codec = OffloadedCodec(codec, offloader)
        prompts = _offloaded_prompts(prompts, offloader)
        note = (
            "memory plan: model CPU offload (text encoders, VAE and transformer on the device one at a time)"
        )
    notes = [*model.notes, note]
    return dataclasses.replace(model, codec=codec, prompt_encoder=prompts, device=device, notes=notes)


def _offloaded_prompts(prompts: PromptEncoder, offloader: Offloader) -> PromptEncoder:
    """A pipeline's text encoders behind `offloader`, encoding on its device; other prompt encoders
    (precomputed embeddings, the shipped sentence encoder) as they are, on the CPU."""
    if not isinstance(prompts, PipelinePrompts):
        return prompts
    on_device = PipelinePrompts(prompts.pipeline, prompts.family, offloader.device)
    return OffloadedPrompts(on_device, offloader)
