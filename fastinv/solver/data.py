"""Training images for a solver: skimage's training photos or a folder, as fixed random crops → latents."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from fastinv.errors import FastinvError
from fastinv.images import IMAGE_SUFFIXES, image_files, load_image
from fastinv.models.base import FlowModel
from fastinv.training.photos import TRAIN, photo_tensor


def source_images(images: str | Path) -> dict[str, torch.Tensor]:
    """ "skimage" (the shipped model's 14 training photos; the 6 held-out ones are never used) or a folder
    of image files → {name: pixels [3, H, W] in [-1, 1]}."""
    if str(images) == "skimage":
        return {name: photo_tensor(name) for name in TRAIN}
    folder = Path(images)
    if not folder.is_dir():
        raise FastinvError(f"image folder not found: {folder} (or pass --images skimage)")
    files = image_files(folder)
    if not files:
        raise FastinvError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return {p.stem: load_image(p).pixels[0] for p in files}


def fixed_crops(
    photos: dict[str, torch.Tensor],
    size: int,
    crops_per_image: int,
    crop_scale: tuple[float, float],
    generator: torch.Generator,
) -> torch.Tensor:
    """Square crops resized to size×size: per photo the largest center crop, then crops_per_image − 1
    random ones of side (shorter side) / U_log(crop_scale), flipped with p = 0.5. Returns [N, 3, size, size].

    Drawn once, so each crop keeps its identity across rounds (its pseudo-labels belong to it).
    """
    lo, hi = (math.log(s) for s in crop_scale)
    crops = []
    for photo in photos.values():
        height, width = photo.shape[-2:]
        for k in range(crops_per_image):
            u = torch.rand(4, generator=generator).tolist()
            side = (
                min(height, width) if k == 0 else round(min(height, width) / math.exp(lo + (hi - lo) * u[0]))
            )
            top = (height - side) // 2 if k == 0 else int(u[1] * (height - side + 1))
            left = (width - side) // 2 if k == 0 else int(u[2] * (width - side + 1))
            patch = photo[:, top : top + side, left : left + side][None]
            patch = F.interpolate(
                patch, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
            crops.append(patch.flip(-1) if k > 0 and u[3] < 0.5 else patch)
    return torch.cat(crops).clamp(-1, 1)


@torch.no_grad()
def encode(model: FlowModel, pixels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Pixels [N, 3, H, W] → the model's clean latents x0 [N, C, h, w] float32 on the model's device."""
    parts = [model.codec.encode(chunk.to(model.device)).float() for chunk in pixels.split(batch_size)]
    return torch.cat(parts)
