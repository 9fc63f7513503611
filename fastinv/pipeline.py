"""The data path for one image, top to bottom. Every caller runs it from here (the CLI's invert and edit,
`fastinv bench`, the benchmarks); none re-assembles it.

    1. image (file, PIL, array) → pixels fitted to the model           Inverter.prepare_image
    2. pixels → latents x0 → z_T by the method on the backend          Inverter.invert_batch
    3. z_T → reconstruction (Euler sampling from z_T alone)            Inverter.reconstruct
    4. reconstruction against the input → PSNR, SSIM, LPIPS, MSE       Inverter.evaluate
    5. z_T, reconstruction and metrics → one published set of files   outputs.write_outputs

Images inverted together (`invert_images`, `invert_batch_to_files`) share step 2, one batched method call
per pixel size; steps 3–5 run per image. One image alone is the same call as `invert_to_files`'s.

An edit runs 1–4, regenerates from z_T with the target prompt (Inverter.edit), scores that too, and writes
the edit's files (outputs.write_edit_outputs).

A saved z_T (`outputs.read_latents_file`) runs step 3 alone, on its recorded schedule, prompt and guidance
(Inverter.reconstruct_latents), then publishes the reconstruction (outputs.write_reconstruction_outputs).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastinv.api import ImageSource, Inverter
from fastinv.images import LoadedImage
from fastinv.masks import DEFAULT_FEATHER, Mask, mask_scores
from fastinv.methods import AUTO
from fastinv.outputs import SavedLatents, write_edit_outputs, write_outputs, write_reconstruction_outputs
from fastinv.results import Edit, Inversion, Reconstruction
from fastinv.sampling import SourceControl

StepHook = Callable[[str], None]
"""Called once per denoiser step with the stage it belongs to: "invert", "reconstruct" or "edit"."""


@dataclass(frozen=True)
class InversionJob:
    """What to invert with: the prompt, the method ("auto": `Inverter.resolve_method`), N steps, the CFG
    scale, FLUX-dev's embedded guidance (None: the model's default) and the method's options (`--set`);
    keep_trajectory: keep the latents of every step (a masked edit follows them outside its mask)."""

    prompt: str = ""
    method: str = AUTO
    steps: int = 28
    guidance: float = 1.0
    embedded_guidance: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    keep_trajectory: bool = False


@dataclass(frozen=True)
class EditJob:
    """What to regenerate with: the target prompt, its CFG scale, RF-Inversion's strength η over the
    sampling steps in [start, stop) (fractions), FLUX-dev's embedded guidance (None: 3.5); a local edit's
    mask (white = editable, `fastinv.masks`; None: the whole image) and its feather radius, px."""

    target_prompt: str
    guidance: float = 1.0
    strength: float = 0.9
    stop: float = 0.25
    start: float = 0.0
    embedded_guidance: float | None = None
    mask: ImageSource | Mask | None = None
    mask_feather: int = DEFAULT_FEATHER


@dataclass
class RoundTrip:
    """Steps 1–4 of one image: its inversion, the reconstruction from z_T, the metrics against the input."""

    inversion: Inversion
    reconstruction: Reconstruction
    metrics: dict[str, Any]


@dataclass
class EditRun:
    """An edit and its source's reconstruction; metrics: {"reconstruction": …, "edit": …}, vs the source,
    and for a masked edit "mask_vs_reconstruction": the edit vs the reconstruction by region
    (`masks.mask_scores`)."""

    edit: Edit
    reconstruction: Reconstruction
    metrics: dict[str, dict[str, Any]]


def _stage(hook: StepHook | None, stage: str) -> Callable[[dict[str, Any]], None] | None:
    """The per-step callback a method or sampler takes, reporting `stage` to `hook`."""
    return None if hook is None else lambda _: hook(stage)


def invert_images(
    inverter: Inverter,
    images: Sequence[ImageSource | LoadedImage],
    job: InversionJob,
    hook: StepHook | None = None,
) -> list[Inversion]:
    """Steps 1–2 for images inverted together, in input order: one batched method call per pixel size
    (`Inverter.invert_batch`). Each Inversion's seconds is its share of its size group's call."""
    pictures = [  # 1
        image if isinstance(image, LoadedImage) else inverter.prepare_image(image) for image in images
    ]
    inversions = inverter.invert_batch(  # 2
        pictures,
        prompt=job.prompt,
        method=job.method,
        steps=job.steps,
        guidance=job.guidance,
        embedded_guidance=job.embedded_guidance,
        callback=_stage(hook, "invert"),
        keep_trajectory=job.keep_trajectory,
        **job.options,
    )
    group = Counter(tuple(picture.pixels.shape) for picture in pictures)  # invert_batch's size groups
    shared = []
    for inversion in inversions:
        size = group[tuple(inversion.image.pixels.shape)]
        if size > 1:
            share = dataclasses.replace(inversion.result, seconds=inversion.result.seconds / size)
            inversion = dataclasses.replace(inversion, result=share)
        shared.append(inversion)
    return shared


def invert_image(
    inverter: Inverter, image: ImageSource | LoadedImage, job: InversionJob, hook: StepHook | None = None
) -> Inversion:
    """Steps 1–2: fit the image to the model, encode it and invert it to z_T."""
    (inversion,) = invert_images(inverter, [image], job, hook)
    return inversion


def reconstruct_and_score(
    inverter: Inverter, inversion: Inversion, hook: StepHook | None = None
) -> tuple[Reconstruction, dict[str, Any]]:
    """Steps 3–4: regenerate from z_T alone with the inversion's schedule and conditioning, then score."""
    reconstruction = inverter.reconstruct(inversion, callback=_stage(hook, "reconstruct"))  # 3
    return reconstruction, inverter.evaluate(inversion, reconstruction)  # 4


def reconstruct_saved(
    inverter: Inverter, saved: SavedLatents, hook: StepHook | None = None
) -> Reconstruction:
    """Step 3 for a z_T read from its file: regenerated on its recorded schedule with its recorded prompt and
    guidance, as `reconstruct_and_score` regenerates the Inversion it came from."""
    return inverter.reconstruct_latents(
        saved.z_T,
        saved.sigmas,
        prompt=saved.prompt,
        guidance=saved.guidance,
        embedded_guidance=saved.embedded_guidance,
        callback=_stage(hook, "reconstruct"),
    )


def reconstruct_to_files(
    inverter: Inverter, saved: SavedLatents, out: Path, hook: StepHook | None = None
) -> dict[str, Any]:
    """Step 3 for a saved z_T, then `<stem>.reconstruct.png` and `.reconstruct.json` published under `out` as
    one set; returns the record written."""
    reconstruction = reconstruct_saved(inverter, saved, hook)
    return write_reconstruction_outputs(out, inverter.model, saved, reconstruction)


def round_trip(
    inverter: Inverter, image: ImageSource | LoadedImage, job: InversionJob, hook: StepHook | None = None
) -> RoundTrip:
    """Steps 1–4 of one image."""
    inversion = invert_image(inverter, image, job, hook)
    return RoundTrip(inversion, *reconstruct_and_score(inverter, inversion, hook))


def invert_to_files(
    inverter: Inverter,
    image: ImageSource | LoadedImage,
    job: InversionJob,
    out: Path,
    stem: str,
    hook: StepHook | None = None,
) -> dict[str, Any]:
    """Steps 1–5: `<stem>.zT.safetensors`, `.recon.png` and `.metrics.json` published under `out` as one set;
    returns the record written."""
    (record,) = invert_batch_to_files(inverter, [image], job, out, [stem], hook)
    return record


def invert_batch_to_files(
    inverter: Inverter,
    images: Sequence[ImageSource | LoadedImage],
    job: InversionJob,
    out: Path,
    stems: Sequence[str],
    hook: StepHook | None = None,
) -> list[dict[str, Any]]:
    """Steps 1–5 for images inverted together (`invert_images`); each is then reconstructed, scored and
    published under `out` as its stem's set of files. Returns the records written, in input order."""
    if len(images) != len(stems):
        raise ValueError(f"{len(images)} images but {len(stems)} stems")
    records = []
    for inversion, stem in zip(invert_images(inverter, images, job, hook), stems, strict=True):
        reconstruction, metrics = reconstruct_and_score(inverter, inversion, hook)
        records.append(write_outputs(out, stem, inverter.model, inversion, reconstruction, metrics))  # 5
    return records


def edit_image(
    inverter: Inverter,
    image: ImageSource | LoadedImage,
    job: InversionJob,
    target: EditJob,
    hook: StepHook | None = None,
) -> EditRun:
    """Steps 1–4 with the source prompt, then the regeneration from z_T with the target's, scored too; a
    masked edit also scores the edit against the reconstruction inside and outside its mask."""
    SourceControl.check(target.strength, target.stop, target.start)  # before any work
    mask = None
    if target.mask is not None:
        image = image if isinstance(image, LoadedImage) else inverter.prepare_image(image)
        mask = inverter.prepare_mask(target.mask, image, target.mask_feather)
        job = dataclasses.replace(job, keep_trajectory=True)
    trip = round_trip(inverter, image, job, hook)
    edit = inverter.edit(
        trip.inversion,
        target_prompt=target.target_prompt,
        guidance=target.guidance,
        strength=target.strength,
        stop=target.stop,
        start=target.start,
        embedded_guidance=target.embedded_guidance,
        callback=_stage(hook, "edit"),
        mask=mask,
    )
    metrics = {"reconstruction": trip.metrics, "edit": inverter.evaluate(trip.inversion, edit.edited)}
    if mask is not None:
        metrics["mask_vs_reconstruction"] = mask_scores(mask, edit.edited.pixels, trip.reconstruction.pixels)
    return EditRun(edit, trip.reconstruction, metrics)


def edit_to_files(
    inverter: Inverter,
    image: ImageSource | LoadedImage,
    job: InversionJob,
    target: EditJob,
    out: Path,
    stem: str,
    hook: StepHook | None = None,
) -> EditRun:
    """`edit_image`, then `<stem>.source.png`, `.edit.png`, `.side_by_side.png`, `.edit.json` under `out`."""
    run = edit_image(inverter, image, job, target, hook)
    write_edit_outputs(out, stem, inverter.model, run.edit, run.reconstruction, run.metrics)
    return run
