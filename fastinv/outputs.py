"""What one inverted (or edited) image leaves on disk: z_T, the reconstruction and a metrics record; the
source, the edit and a side-by-side PNG.

Every file is written to a temporary name and renamed, so an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastinv import __version__
from fastinv.api import Edit, Inversion, Reconstruction
from fastinv.io import pixels_to_pil, save_image, save_json, save_latents, save_png, side_by_side
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


def write_edit_outputs(
    out: Path,
    stem: str,
    model: FlowModel,
    edit: Edit,
    reconstruction: Reconstruction,
    metrics: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Write `<stem>.source.png` (the input as the model saw it), `.edit.png`, `.side_by_side.png`
    (source | reconstruction | edit) and `.edit.json` under `out`; return the record.

    metrics: {"reconstruction": …, "edit": …}, each scored against the source (Inverter.evaluate)."""
    inversion = edit.inversion
    source = pixels_to_pil(inversion.image.pixels)
    save_image(source, out / f"{stem}.source.png")
    save_image(edit.edited.image, out / f"{stem}.edit.png")
    panels = [
        (f"source: {inversion.cond.prompt}", source),
        ("reconstruction", reconstruction.image),
        (f"edit: {edit.target_prompt}", edit.edited.image),
    ]
    save_image(side_by_side(panels), out / f"{stem}.side_by_side.png")
    record = inversion_record(model, inversion) | {
        "target_prompt": edit.target_prompt,
        "edit_guidance": edit.guidance,
        "edit_technique": "RF-Inversion controlled sampling ODE (Rout et al., arXiv:2410.10792, Alg. 2)",
        "strength": edit.strength,
        "stop": edit.stop,
        "nfe_inversion": inversion.result.nfe,
        "nfe_edit": edit.edited.nfe,
        "seconds_inversion": inversion.result.seconds,
        "seconds_edit": edit.edited.seconds,
        "metrics": metrics,
    }
    save_json(record, out / f"{stem}.edit.json")
    return record
