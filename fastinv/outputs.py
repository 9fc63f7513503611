"""What one inverted (or edited) image leaves on disk: z_T, the reconstruction and a metrics record; the
source, the edit and a side-by-side PNG.

A set is written with `publish_files`: every file staged first, then renamed, the JSON record last, so an
interrupted run leaves nothing half-written and no new file before its set is complete. Every file of a set
carries the same run id (z_T metadata, PNG text chunk, JSON key), so `read_output_set` can refuse a set
mixed from two runs (a re-run killed between two renames).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from PIL import Image

from fastinv import __version__
from fastinv.errors import FastinvError
from fastinv.files import (
    json_writer,
    latents_bytes,
    latents_writer,
    load_latents,
    png_writer,
    publish_files,
    side_by_side,
)
from fastinv.images import pixels_to_pil
from fastinv.models import FlowModel
from fastinv.results import Edit, Inversion, Reconstruction

RUN_ID = "run_id"
INVERSION_FILES = (".zT.safetensors", ".recon.png", ".metrics.json")
"""The files of one inverted image, `<stem><suffix>`; the last marks the set complete."""


def inversion_record(model: FlowModel, inversion: Inversion) -> dict[str, Any]:
    """Provenance of z_T: model, method, schedule (σ), prompt, guidance, image, backend, device, run config
    (compile, CUDA graphs, kernels), version."""
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
        "backend": model.velocity.backend,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "run_config": None if inversion.config is None else inversion.config.record(),
    }


def latents_file(model: FlowModel, inversion: Inversion) -> bytes:
    """The `.zT.safetensors` file `write_outputs` writes for `inversion` (z_T and its metadata, with a run id
    of its own), as bytes: what `fastinv serve` sends."""
    return latents_bytes(
        inversion.z_T.cpu(), inversion_record(model, inversion) | {RUN_ID: secrets.token_hex(8)}
    )


def write_outputs(
    out: Path,
    stem: str,
    model: FlowModel,
    inversion: Inversion,
    reconstruction: Reconstruction,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """Publish `<stem>.zT.safetensors`, `.recon.png` and `.metrics.json` under `out` as one set (one run id);
    return the record."""
    record = inversion_record(model, inversion) | {RUN_ID: secrets.token_hex(8)}
    latents = latents_writer(inversion.z_T.cpu(), record)
    png = png_writer(pixels_to_pil(reconstruction.pixels), {RUN_ID: record[RUN_ID]})
    record |= {
        "nfe_inversion": inversion.result.nfe,
        "solver_calls": inversion.result.solver_calls,
        "reconstruction_embedded_guidance": reconstruction.embedded_guidance,
        "nfe_reconstruction": reconstruction.nfe,
        "seconds_inversion": inversion.result.seconds,
        "seconds_reconstruction": reconstruction.seconds,
        "metrics": metrics,
    }
    zt, recon, metrics_file = (out / f"{stem}{suffix}" for suffix in INVERSION_FILES)
    publish_files({zt: latents, recon: png, metrics_file: json_writer(record)})
    return record


def read_output_set(out: Path, stem: str) -> dict[str, Any] | None:
    """The metrics record of `<stem>`'s complete output set in `out`; None when the set is incomplete
    (a file missing); a one-line error when its files carry different run ids (two runs mixed)."""
    zt, recon, metrics_file = (out / f"{stem}{suffix}" for suffix in INVERSION_FILES)
    if not all(path.is_file() for path in (zt, recon, metrics_file)):
        return None
    try:
        record = json.loads(metrics_file.read_text())
        with Image.open(recon) as image:
            png_id = image.text.get(RUN_ID) if hasattr(image, "text") else None
    except (OSError, ValueError) as err:
        raise FastinvError(f"cannot read the output set of {stem} in {out}: {err}") from err
    ids = {record.get(RUN_ID) if isinstance(record, dict) else None, load_latents(zt)[1].get(RUN_ID), png_id}
    if len(ids) != 1 or None in ids:
        raise FastinvError(f"the output files of {stem} in {out} come from different runs: rerun that image")
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
    run = {RUN_ID: secrets.token_hex(8)}
    source = pixels_to_pil(inversion.image.pixels)
    panels = [
        (f"source: {inversion.cond.prompt}", source),
        ("reconstruction", reconstruction.image),
        (f"edit: {edit.target_prompt}", edit.edited.image),
    ]
    record = edit_record(model, edit, metrics, run[RUN_ID])
    publish_files(
        {
            out / f"{stem}.source.png": png_writer(source, run),
            out / f"{stem}.edit.png": png_writer(edit.edited.image, run),
            out / f"{stem}.side_by_side.png": png_writer(side_by_side(panels), run),
            out / f"{stem}.edit.json": json_writer(record),
        }
    )
    return record


def edit_record(
    model: FlowModel, edit: Edit, metrics: dict[str, dict[str, Any]], run_id: str
) -> dict[str, Any]:
    """The `.edit.json` record of `edit` (`write_edit_outputs`): the inversion's provenance, the edit's
    settings, NFE, seconds and `metrics`."""
    inversion = edit.inversion
    return (
        inversion_record(model, inversion)
        | {RUN_ID: run_id}
        | {
            "target_prompt": edit.target_prompt,
            "edit_guidance": edit.guidance,
            "edit_embedded_guidance": edit.edited.embedded_guidance,
            "edit_technique": "RF-Inversion controlled sampling ODE (Rout et al., arXiv:2410.10792, Alg. 2)",
            "strength": edit.strength,
            "start": edit.start,
            "stop": edit.stop,
            "nfe_inversion": inversion.result.nfe,
            "nfe_edit": edit.edited.nfe,
            "seconds_inversion": inversion.result.seconds,
            "seconds_edit": edit.edited.seconds,
            "metrics": metrics,
        }
    )
