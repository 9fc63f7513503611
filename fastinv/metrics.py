"""Image-quality metrics for reconstructions: PSNR, SSIM (scikit-image), MSE and LPIPS.

Images are float tensors in [-1, 1] of shape [3,H,W] or [1,3,H,W] (one image). PSNR and SSIM clamp them to
[-1, 1] and map them to [0, 1] (``data_range=1``), i.e. measure them as they would be saved; so does
:func:`reconstruction_metrics` for all its pixel metrics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from fastinv.errors import FastinvError
from fastinv.lpips import MIN_SIDE, NETS, LPIPSUnavailable, load_lpips

# scikit-image's default SSIM window (uniform 7x7), shrunk to fit smaller images.
_SSIM_WIN = 7
_SSIM_MIN_SIDE = 3


def _image(x: torch.Tensor, name: str) -> torch.Tensor:
    """Validate one image and return it as a float64 CPU tensor of shape [3,H,W]."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise FastinvError(f"{name} must be a float tensor in [-1, 1], got {_describe(x)}")
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3 or x.shape[0] != 3:
        raise FastinvError(f"{name} must have shape [3,H,W] or [1,3,H,W], got {tuple(x.shape)}")
    x = x.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(x).all():
        raise FastinvError(f"{name} contains NaN or infinite values")
    return x


def _describe(x: Any) -> str:
    return f"{x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__


def _pair(ref: torch.Tensor, rec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _image(ref, "reference image"), _image(rec, "reconstructed image")
    if a.shape != b.shape:
        raise FastinvError(f"images differ in size: {tuple(a.shape)} vs {tuple(b.shape)}")
    return a, b


def _to_unit_hwc(x: torch.Tensor) -> np.ndarray:
    """[3,H,W] in [-1, 1] -> [H,W,3] float64 in [0, 1]."""
    return ((x.clamp(-1.0, 1.0) + 1.0) / 2.0).permute(1, 2, 0).numpy()


def psnr(ref: torch.Tensor, rec: torch.Tensor) -> float:
    """PSNR in dB (scikit-image, data_range=1 on [0, 1] pixels); ``inf`` for identical images."""
    a, b = _pair(ref, rec)
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(_to_unit_hwc(a), _to_unit_hwc(b), data_range=1.0))


def ssim(ref: torch.Tensor, rec: torch.Tensor) -> float:
    """SSIM (scikit-image, uniform window, data_range=1 on [0, 1] pixels).

    The window is scikit-image's default 7 px, shrunk to the largest odd size that fits smaller images.
    """
    a, b = _pair(ref, rec)
    side = min(a.shape[-2:])
    if side < _SSIM_MIN_SIDE:
        raise FastinvError(f"SSIM needs images of at least {_SSIM_MIN_SIDE} px per side, got {side} px")
    win = min(_SSIM_WIN, side if side % 2 else side - 1)
    return float(
        structural_similarity(_to_unit_hwc(a), _to_unit_hwc(b), win_size=win, channel_axis=-1, data_range=1.0)
    )


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error of two same-shaped tensors of any shape (pixels or latents), in float64."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise FastinvError(f"mse needs two tensors, got {_describe(a)} and {_describe(b)}")
    if a.shape != b.shape:
        raise FastinvError(f"mse inputs differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.numel() == 0:
        raise FastinvError("mse inputs are empty")
    a64 = a.detach().to(device="cpu", dtype=torch.float64)
    b64 = b.detach().to(device="cpu", dtype=torch.float64)
    return float(torch.mean((a64 - b64) ** 2))


def _lpips(a: torch.Tensor, b: torch.Tensor, net: str) -> tuple[float | None, str | None]:
    side = min(a.shape[-2:])
    if side < MIN_SIDE[net]:
        return None, f"LPIPS-{net} needs images of at least {MIN_SIDE[net]} px per side, got {side} px"
    try:
        model = load_lpips(net)
    except LPIPSUnavailable as exc:
        return None, str(exc)
    with torch.inference_mode():
        return float(model(a.float(), b.float())[0]), None


def reconstruction_metrics(
    ref_pixels: torch.Tensor,
    rec_pixels: torch.Tensor,
    ref_latents: torch.Tensor | None = None,
    rec_latents: torch.Tensor | None = None,
    *,
    lpips_net: str = "alex",
) -> dict[str, Any]:
    """All metrics of a reconstruction, as a JSON-serialisable dict of plain Python floats / None / str.

    Keys: ``psnr`` (``float('inf')`` for identical images; strict-JSON writers must map it, e.g. to null),
    ``ssim``, ``mse_pixel``, ``mse_latent`` (None without latents), ``lpips`` (None when unavailable) and
    ``lpips_note`` (None, or the one-line reason LPIPS is unavailable).
    """
    if lpips_net not in NETS:
        raise FastinvError(f"unknown LPIPS network {lpips_net!r}; choose one of: {', '.join(NETS)}")
    if (ref_latents is None) != (rec_latents is None):
        raise FastinvError("give both ref_latents and rec_latents, or neither")
    a, b = (x.clamp(-1.0, 1.0) for x in _pair(ref_pixels, rec_pixels))
    lpips_value, note = _lpips(a, b, lpips_net)
    return {
        "psnr": psnr(a, b),
        "ssim": ssim(a, b),
        "mse_pixel": mse(a, b),
        "mse_latent": None if ref_latents is None or rec_latents is None else mse(ref_latents, rec_latents),
        "lpips": lpips_value,
        "lpips_note": note,
    }
