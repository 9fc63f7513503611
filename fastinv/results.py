"""What a run produces, one dataclass each: an inverted image, a reconstruction, an edit. The API returns
them, the pipeline passes them on, outputs write them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from fastinv.conditioning import Conditioning
from fastinv.images import LoadedImage
from fastinv.masks import Mask
from fastinv.methods import InversionResult
from fastinv.run_config import RunConfig


@dataclass
class Inversion:
    """An inverted image: the method's result plus what is needed to regenerate it.

    x0: [1, C, h, w] float32 clean latents of the input; sigmas: the N+1 float64 schedule used; config:
    the RunConfig it ran with; peak_memory_mib: the peak of the batched call it came from
    (`fastinv.memory.PeakMemory`: max allocated on CUDA, the process's RSS on CPU), MiB.
    """

    result: InversionResult
    method: str
    steps: int
    sigmas: torch.Tensor
    cond: Conditioning
    image: LoadedImage
    x0: torch.Tensor
    options: dict[str, Any] = field(default_factory=dict)
    model_name: str = ""
    config: RunConfig | None = None
    peak_memory_mib: float | None = None

    @property
    def z_T(self) -> torch.Tensor:
        return self.result.z_T


@dataclass
class Reconstruction:
    """The image regenerated from z_T alone: latents [1, C, h, w], pixels [1, 3, H, W] in [-1, 1];
    embedded_guidance: the value the regeneration ran with (FLUX-dev; None elsewhere); peak_memory_mib: its
    peak as `Inversion.peak_memory_mib`'s, MiB."""

    latents: torch.Tensor
    pixels: torch.Tensor
    nfe: int
    seconds: float
    image: Image.Image = field(repr=False)
    embedded_guidance: float | None = None
    peak_memory_mib: float | None = None


@dataclass
class Edit:
    """An edit: the source's inversion and the regeneration from its z_T with the target prompt, held to
    the source by strength η over the sampling steps in [start, stop), as fractions of the steps
    (`sampling.SourceControl`); mask: a local edit's mask, outside which the latents followed the source's
    inversion trajectory (`sampling.SourceTrajectory`), None for an edit of the whole image."""

    inversion: Inversion
    target_prompt: str
    guidance: float
    strength: float
    stop: float
    start: float
    edited: Reconstruction
    mask: Mask | None = None
