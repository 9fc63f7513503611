"""What one inverted image leaves on disk: z_T, the reconstruction and a metrics record.

Every file is written to a temporary name and renamed, so an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastinv import __version__
from fastinv.api import Inversion, Reconstruction
from fastinv.io import save_json, save_latents, save_png
from fastinv.models import FlowModel


def inversion_record(model: FlowModel, inversion: Inversion) -> dict[str, Any]:
    """Provenance of z_T: model, method, schedule (σ), prompt, guidance, image, engine, device, version."""
    image = inversion.image
    return {
        "fastinv_version": __version__,
        "model": model.name,
        "image": image.source,
        "original_size": list(image.original_size),
        "size": [image.pixels.shape[-1], image.pixels.shape[-2]],
        "image_notes": image.notes,
        "method": inversion.method,
        "method_options": inversion.options,
        "steps": inversion.steps,
        "sigmas": inversion.sigmas.tolist(),
        "prompt": inversion.cond.prompt,
        "guidance": inversion.cond.guidance_scale,
        "embedded_guidance": inversion.cond.embedded_guidance,
        "engine": model.velocity.engine,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
    }


def write_outputs(
    out: Path,
    stem: str,
    model: FlowModel,
    inversion: Inversion,
    reconstruction: Reconstruction,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """Write `<stem>.zT.safetensors`, `.recon.png` and `.metrics.json` under `out`; return the record."""
    record = inversion_record(model, inversion)
    save_latents(out / f"{stem}.zT.safetensors", inversion.z_T.cpu(), record)
    save_png(reconstruction.pixels, out / f"{stem}.recon.png")
    record |= {
        "nfe_inversion": inversion.result.nfe,
        "nfe_reconstruction": reconstruction.nfe,
        "seconds_inversion": inversion.result.seconds,
        "seconds_reconstruction": reconstruction.seconds,
        "metrics": metrics,
    }
    save_json(record, out / f"{stem}.metrics.json")
    return record
