"""What one inverted (or edited) image leaves on disk: z_T, the reconstruction and a metrics record; the
source, the edit and a side-by-side PNG. A saved z_T read back as untrusted input (`read_latents_file`), and
its regeneration's PNG and record (`fastinv reconstruct`).

A set is written with `publish_files`: every file staged first, then renamed, the JSON record last, so an
interrupted run leaves nothing half-written and no new file before its set is complete. Every file of a set
carries the same run id (z_T metadata, PNG text chunk, JSON key), so `read_output_set` can refuse a set
mixed from two runs (a re-run killed between two renames).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
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
from fastinv.masks import Mask
from fastinv.memory import PeakMemory
from fastinv.models import FlowModel
from fastinv.request_checks import check_request
from fastinv.results import Edit, Inversion, Reconstruction
from fastinv.schedule import check_schedule

RUN_ID = "run_id"
WORKING_FOLDER = "working_folder"
"""The record key of the folder where the paths a record names (image, model, solver, z_T file) start when
they are relative: the writer's working folder, so a later run from another folder reads them as meant."""
INVERSION_FILES = (".zT.safetensors", ".recon.png", ".metrics.json")
"""The files of one inverted image, `<stem><suffix>`; the last marks the set complete."""


def inversion_record(model: FlowModel, inversion: Inversion) -> dict[str, Any]:
    """Provenance of z_T: model, method, schedule (σ), prompt, guidance, image, backend, device, run config
    (compile, CUDA graphs, kernels), version."""
    image = inversion.image
    return {
        "fastinv_version": __version__,
        WORKING_FOLDER: os.getcwd(),
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
        **runtime_record(model),
        "run_config": None if inversion.config is None else inversion.config.record(),
    }


def runtime_record(model: FlowModel) -> dict[str, str]:
    """What ran the model: its backend, device and dtype."""
    return {
        "backend": model.velocity.backend,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
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
        **peak_memory_record(
            model, inversion=inversion.peak_memory_mib, reconstruction=reconstruction.peak_memory_mib
        ),
        "metrics": metrics,
    }
    zt, recon, metrics_file = (out / f"{stem}{suffix}" for suffix in INVERSION_FILES)
    publish_files({zt: latents, recon: png, metrics_file: json_writer(record)})
    return record


def recorded_path(record: dict[str, Any], path: Any) -> Path | None:
    """`path`, a path that `record` names, as its writer meant it (absolute: a relative one starts from the
    record's WORKING_FOLDER); None when either is not a path string, or a relative path's record has no
    absolute working folder (an older fastinv wrote it)."""
    if not isinstance(path, str) or not path or "\0" in path:
        return None
    if Path(path).is_absolute():
        return Path(path)
    folder = record.get(WORKING_FOLDER)
    return Path(folder) / path if _absolute_path(folder) else None


def _absolute_path(value: Any) -> bool:
    """Whether `value` is an absolute path string (no NUL byte)."""
    return isinstance(value, str) and "\0" not in value and Path(value).is_absolute()


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
    (source | reconstruction | edit, and the mask of a local edit) and `.edit.json` under `out`; return the
    record.

    metrics: {"reconstruction": …, "edit": …}, each scored against the source (Inverter.evaluate)."""
    inversion = edit.inversion
    run = {RUN_ID: secrets.token_hex(8)}
    source = pixels_to_pil(inversion.image.pixels)
    panels = [
        (f"source: {inversion.cond.prompt}", source),
        ("reconstruction", reconstruction.image),
        (f"edit: {edit.target_prompt}", edit.edited.image),
    ]
    if edit.mask is not None:
        panels.append((f"mask, feather {edit.mask.feather} px", mask_image(edit.mask)))
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
            "mask": mask_record(edit.mask),
            "nfe_inversion": inversion.result.nfe,
            "nfe_edit": edit.edited.nfe,
            "seconds_inversion": inversion.result.seconds,
            "seconds_edit": edit.edited.seconds,
            **peak_memory_record(
                model, inversion=inversion.peak_memory_mib, edit=edit.edited.peak_memory_mib
            ),
            "metrics": metrics,
        }
    )


def mask_image(mask: Mask) -> Image.Image:
    """The mask's weights as a grey image: white editable, black kept."""
    return pixels_to_pil(mask.weights.expand(1, 3, -1, -1) * 2 - 1)


def mask_record(mask: Mask | None) -> dict[str, Any] | None:
    """A local edit's mask in its record: its file, feather radius (px) and editable share; None: no mask."""
    if mask is None:
        return None
    return {"source": mask.source, "feather": mask.feather, "editable_fraction": mask.editable_fraction}


def peak_memory_record(model: FlowModel, **stages: float | None) -> dict[str, Any]:
    """The record's `peak_memory_mib`, each stage's peak in MiB (None: not measured), and `peak_memory`, what
    it measures on the model's device (`fastinv.memory.PeakMemory.kind`)."""
    return {"peak_memory_mib": stages, "peak_memory": PeakMemory.kind(model.device)}


RECONSTRUCTION_FILES = (".reconstruct.png", ".reconstruct.json")
"""What `fastinv reconstruct` writes for a z_T file, `<stem><suffix>`; the last marks the set complete."""
MAX_LATENTS_FILE = 256 << 20
"""The largest z_T file read, in bytes: far above any z_T (FLUX's of a 4096² image is 16 MiB)."""
SAVED_KEYS = ("model", "steps", "sigmas", "prompt", "guidance", "embedded_guidance")
"""The metadata a z_T file needs to be regenerated (`inversion_record` writes them)."""


@dataclass(frozen=True)
class SavedLatents:
    """A z_T file `write_outputs` wrote, read and checked (`read_latents_file`): z_T [1, C, h, w] float32, the
    N+1 sigmas (float64, decreasing) it was inverted over, the model folder (absolute where the file names its
    working folder), prompt, CFG scale and FLUX-dev embedded guidance it was inverted with, and its run id."""

    path: Path
    z_T: torch.Tensor
    sigmas: torch.Tensor
    model: str
    prompt: str
    guidance: float
    embedded_guidance: float | None
    run_id: str | None

    @property
    def stem(self) -> str:
        """The output name: the file's name without `.zT.safetensors` (or `.safetensors`)."""
        name = self.path.name
        for suffix in (INVERSION_FILES[0], ".safetensors"):
            if name.endswith(suffix) and len(name) > len(suffix):
                return name.removesuffix(suffix)
        return self.path.stem


def read_latents_file(path: Path) -> SavedLatents:
    """Read a z_T file as untrusted input: a .safetensors file (nothing is unpickled) of at most
    MAX_LATENTS_FILE bytes, every metadata value's type and range checked; one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FastinvError(f"z_T file not found: {path}")
    if path.suffix != ".safetensors":
        raise FastinvError(f"{path} is not a .safetensors file (fastinv invert writes NAME.zT.safetensors)")
    if path.stat().st_size > MAX_LATENTS_FILE:
        raise FastinvError(f"{path} is over {MAX_LATENTS_FILE >> 20} MiB: not a z_T file")
    z_T, meta = load_latents(path)
    try:
        missing = [key for key in SAVED_KEYS if key not in meta]
        if missing:
            raise FastinvError(f"its metadata has no {', '.join(missing)}")
        model, sigmas, run_id = meta["model"], meta["sigmas"], meta.get(RUN_ID)
        if not isinstance(model, str) or not model.strip() or "\0" in model:
            raise FastinvError(f"model must be a folder path, got {model!r}")
        folder = meta.get(WORKING_FOLDER)
        if folder is not None and not _absolute_path(folder):
            raise FastinvError(f"{WORKING_FOLDER} must be an absolute folder path, got {folder!r}")
        if run_id is not None and not isinstance(run_id, str):
            raise FastinvError(f"run_id must be a string, got {run_id!r}")
        check_request(
            steps=meta["steps"],
            prompt=meta["prompt"],
            guidance=meta["guidance"],
            embedded_guidance=meta["embedded_guidance"],
        )
        if (
            not isinstance(sigmas, list)
            or len(sigmas) != meta["steps"] + 1
            or not all(isinstance(s, float) or (type(s) is int and 0 <= s <= 1) for s in sigmas)
        ):
            raise FastinvError(f"sigmas must be a list of steps + 1 = {meta['steps'] + 1} numbers")
        schedule = torch.tensor(sigmas, dtype=torch.float64)
        check_schedule(schedule)
        if z_T.ndim != 4 or z_T.shape[0] != 1 or 0 in z_T.shape:
            raise FastinvError(f"z_T must be [1, C, h, w], got {list(z_T.shape)}")
        if not bool(torch.isfinite(z_T).all()):
            raise FastinvError("z_T holds NaN or inf")
    except (FastinvError, OverflowError) as err:  # OverflowError: an integer too large for a float
        raise FastinvError(f"{path}: {err} (not a z_T file fastinv invert wrote?)") from err
    embedded = meta["embedded_guidance"]
    return SavedLatents(
        path,
        z_T,
        schedule,
        str(recorded_path(meta, model) or model),  # a file without a working folder: from this one
        meta["prompt"],
        float(meta["guidance"]),
        None if embedded is None else float(embedded),
        run_id,
    )


def write_reconstruction_outputs(
    out: Path, model: FlowModel, saved: SavedLatents, reconstruction: Reconstruction
) -> dict[str, Any]:
    """Publish `<stem>.reconstruct.png` and `.reconstruct.json` under `out` as one set (one run id); return
    the record: the z_T file and its run id, what it was regenerated with, NFE and seconds."""
    record = {
        "fastinv_version": __version__,
        WORKING_FOLDER: os.getcwd(),
        "latents": str(saved.path),
        "latents_run_id": saved.run_id,
        "model": model.name,
        "steps": len(saved.sigmas) - 1,
        "prompt": saved.prompt,
        "guidance": saved.guidance,
        "embedded_guidance": reconstruction.embedded_guidance,
        **runtime_record(model),
        "nfe_reconstruction": reconstruction.nfe,
        "seconds_reconstruction": reconstruction.seconds,
        RUN_ID: secrets.token_hex(8),
    }
    png, record_file = (out / f"{saved.stem}{suffix}" for suffix in RECONSTRUCTION_FILES)
    image = pixels_to_pil(reconstruction.pixels)
    publish_files({png: png_writer(image, {RUN_ID: record[RUN_ID]}), record_file: json_writer(record)})
    return record
