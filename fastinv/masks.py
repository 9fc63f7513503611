"""Masks for local edits: which pixels an edit may change.

A mask is read like an image (`images.load_image`: any PIL-readable file, its bytes, a PIL image or an array;
transparency composited onto white) and reduced to its luminance, the mean of R, G and B in [0, 1]. It is
then fitted to its image exactly as the image was fitted to the model (resized to the image's original size
first, with a note, when its size differs) and thresholded at 50 % grey: pixels at least mid-grey are
editable, darker ones are kept. The soft edge comes from the feather alone: the mask rises linearly from 0 at
its edge to 1 at `feather` pixels inside it (chessboard distance), so nothing outside the mask is blended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fastinv.errors import FastinvError
from fastinv.images import LoadedImage, load_image
from fastinv.request_checks import shown

DEFAULT_FEATHER = 4
"""Pixels (of the image as the model sees it) over which the mask rises from 0 at its edge to 1 inside."""
MAX_FEATHER = 4096
"""The widest feather taken, px: wider than the largest image a model here takes."""
THRESHOLD = 0.5
"""Luminance at or above which a mask pixel is editable."""


@dataclass(frozen=True)
class Mask:
    """A fitted, feathered mask: weights [1, 1, H, W] float32 in [0, 1] at the image's pixel size, 1 =
    editable; source: the mask's file name; feather: its radius, px; notes: the conversions applied."""

    weights: torch.Tensor
    source: str
    feather: int
    notes: list[str] = field(default_factory=list)

    @property
    def editable_fraction(self) -> float:
        """The share of pixels the edit may change (weight > 0)."""
        return float((self.weights > 0).float().mean())

    def at(self, size: tuple[int, int]) -> torch.Tensor:
        """The weights area-averaged to latent size (h, w): [1, 1, h, w] float32."""
        return F.interpolate(self.weights, size=size, mode="area")


def check_feather(feather: Any) -> None:
    """One-line error unless `feather` is an integer number of pixels in [0, MAX_FEATHER]."""
    if isinstance(feather, bool) or not isinstance(feather, int) or not 0 <= feather <= MAX_FEATHER:
        raise FastinvError(
            f"mask feather must be an integer number of pixels in [0, {MAX_FEATHER}], got {shown(feather)}"
        )


def load_mask(source: Any, image: LoadedImage, fit: dict[str, Any], feather: int = DEFAULT_FEATHER) -> Mask:
    """Read `source` as a mask for `image` (fitted to the model with `load_image(**fit)`), threshold it and
    feather it (see the module docstring). One-line FastinvError when it is not an image, or when it marks
    no pixel or every pixel editable."""
    check_feather(feather)
    try:
        raw = load_image(source)
    except FastinvError as err:  # the image rule's message, about a mask
        raise FastinvError(str(err).replace("image", "mask", 1)) from err
    name, notes = raw.source, []
    gray = ((raw.pixels[0].mean(0) + 1) / 2).clamp(0, 1).numpy()  # [h, w] luminance in [0, 1]
    width, height = image.original_size
    if (gray.shape[1], gray.shape[0]) != (width, height):
        notes.append(
            f"mask {name} is {gray.shape[1]}×{gray.shape[0]} px, resized to the image's {width}×{height}"
        )
        gray = np.asarray(Image.fromarray(gray).resize((width, height), Image.Resampling.BILINEAR))
    fitted = load_image(np.clip(gray, 0, 1), **fit).pixels[:, :1]  # the image's own resize and crop
    binary = ((fitted + 1) / 2 >= THRESHOLD).float()
    side = f"{binary.shape[-1]}×{binary.shape[-2]}"
    if not bool(binary.any()):
        raise FastinvError(
            f"mask {name} marks nothing editable (no pixel at least mid-grey at the model's {side}): "
            "paint the region to edit white"
        )
    if bool(binary.all()):
        raise FastinvError(
            f"mask {name} marks the whole image editable: paint the region to keep black, "
            "or edit without a mask"
        )
    return Mask(feathered(binary, feather), name, feather, notes)


def feathered(binary: torch.Tensor, radius: int) -> torch.Tensor:
    """[1, 1, H, W] 0/1 mask → weights min(d, radius)/radius inside it (d: chessboard distance in px to the
    nearest kept pixel, so 1/radius on its edge), 0 outside; radius 0: the binary mask. The image's border
    is not an edge."""
    if radius == 0:
        return binary
    inside, ramp = binary, torch.zeros_like(binary)
    for _ in range(radius):
        if not inside.any():  # eroded away: d ≤ this step's index everywhere, the ramp is complete
            break
        ramp += inside
        inside = -F.max_pool2d(-inside, 3, stride=1, padding=1)  # erode by one px (padding never counts)
    return ramp / radius


def region_psnr(a: torch.Tensor, b: torch.Tensor, region: torch.Tensor) -> float:
    """PSNR in dB of pixels a, b [1, 3, H, W] in [-1, 1] over the pixels where region [1, 1, H, W] is true
    (data range 1 on [0, 1] pixels, as `metrics.psnr`); inf where they agree, nan for an empty region."""
    select = region.expand_as(a)
    error = (a.float().clamp(-1, 1) - b.float().clamp(-1, 1))[select] / 2
    return float(10 * torch.log10(1 / error.square().mean()))


def mask_scores(mask: Mask, edited: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """A masked edit's pixels [1, 3, H, W] against a reference (its reconstruction): PSNR dB outside the mask
    (weight 0), inside it (weight > 0) and in its core (weight 1, past the feather); the editable share."""
    weights = mask.weights
    return {
        "editable_fraction": mask.editable_fraction,
        "psnr_outside": region_psnr(edited, reference, weights == 0),
        "psnr_inside": region_psnr(edited, reference, weights > 0),
        "psnr_core": region_psnr(edited, reference, weights == 1),
    }
