"""The `fastinv` command line (typer + rich). Bad input → one `error:` line on stderr, exit code 2."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table

from fastinv.display import fmt as _fmt
from fastinv.display import progress_bar
from fastinv.errors import FastinvError
from fastinv.runtime.backends import BACKENDS, folder_backends, get_backend

if TYPE_CHECKING:
    from fastinv.folders import Item, Manifest
    from fastinv.pipeline import InversionJob

app = typer.Typer(
    help="Fast diffusion inversion for rectified-flow models (SD3, FLUX).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()

ModelOption = Annotated[
    Path | None,
    typer.Option(
        help="Local diffusers folder (SD3/FLUX pipeline or transformer); default: the shipped model."
    ),
]
SolverOption = Annotated[
    Path | None, typer.Option(help="DeepInv solver folder for --method deepinv (default: MODEL/solver).")
]
MethodOption = Annotated[
    str,
    typer.Option(
        help="Inversion method (see `fastinv info`); auto: deepinv where the model has a solver, "
        "else warm_fixed_point."
    ),
]
StepsOption = Annotated[int, typer.Option(help="Number of schedule steps N.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Method option KEY=VALUE (repeatable), e.g. iterations=4."),
]
EmbeddedGuidanceOption = Annotated[
    float | None,
    typer.Option(
        help="FLUX-dev embedded guidance of the inversion (default 1); the reconstruction uses it too."
    ),
]
EditEmbeddedGuidanceOption = Annotated[
    float | None, typer.Option(help="FLUX-dev embedded guidance of the edit's regeneration (default 3.5).")
]
InversionEmbeddedGuidanceOption = Annotated[
    float | None, typer.Option(help="FLUX-dev embedded guidance of the edit's inversion (default 1).")
]
EmbeddingsOption = Annotated[
    Path | None, typer.Option(help="Precomputed prompt embeddings (for folders without text encoders).")
]
DeviceOption = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]
DtypeOption = Annotated[str, typer.Option(help="auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16")]
BACKEND_NAMES = " | ".join(BACKENDS)
FOLDER_BACKENDS = " / ".join(folder_backends())
BENCH_EXPORTS = " / ".join(name for name, backend in BACKENDS.items() if backend.bench_exports)
NEEDS_EXPORT = " / ".join(name for name, b in BACKENDS.items() if b.folder and not b.bench_exports)
BackendOption = Annotated[
    str,
    typer.Option(
        help="What runs the denoiser (and solver): "
        + "; ".join(f"{name}: {backend.description}" for name, backend in BACKENDS.items())
        + " (see `fastinv export`)."
    ),
]
ExportDirOption = Annotated[
    Path | None,
    typer.Option(
        help=f"For {FOLDER_BACKENDS}: the folder `fastinv export` wrote (ONNX graphs by --dtype, and for "
        "trt the TensorRT engines built from them)."
    ),
]
FastOption = Annotated[
    bool | None,
    typer.Option(
        "--fast/--no-fast",
        help="torch backend fast path: torch.compile + CUDA graphs + Triton step kernels "
        "(default: on for CUDA, off on CPU).",
    ),
]
CompileOption = Annotated[
    bool | None, typer.Option("--compile/--no-compile", help="torch.compile the networks (overrides --fast).")
]
CudaGraphsOption = Annotated[
    bool | None,
    typer.Option(
        "--cuda-graphs/--no-cuda-graphs", help="Capture each step in a CUDA graph (overrides --fast)."
    ),
]
KernelsOption = Annotated[
    str, typer.Option(help="Step kernels: auto (Triton on CUDA) | torch (references, for torch.compile).")
]
OffloadOption = Annotated[
    str,
    typer.Option(
        help="Memory plan on a CUDA device: none (all on the GPU) | text (text encoders stay in CPU memory "
        "and encode there) | model (model CPU offload: one component on the GPU at a time); see "
        "`fastinv info --model DIR`."
    ),
]


def _load_options(
    model: Path | None,
    device: str,
    dtype: str,
    embeddings: Path | None,
    solver: Path | None,
    backend: str,
    export_dir: Path | None,
    fast: bool | None,
    compile_: bool | None,
    cuda_graphs: bool | None,
    kernels: str,
) -> dict[str, Any]:
    """The keyword arguments of `fastinv.load` that the commands' model options give; a --solver folder's
    config is checked here, before any model is loaded."""
    if solver is not None:
        from fastinv.solver.model import read_solver_config

        read_solver_config(solver)
    return {
        "model_dir": model,
        "device": device,
        "dtype": dtype,
        "embeddings": embeddings,
        "solver": solver,
        "backend": backend,
        "export_dir": export_dir,
        "fast": fast,
        "compile": compile_,
        "cuda_graphs": cuda_graphs,
        "kernels": kernels,
    }


def _check_solver_method(solver: Path | None, method: str) -> None:
    """--solver is read by deepinv only (auto picks deepinv when there is a solver): not ignored silently."""
    if solver is not None and method not in ("deepinv", "auto"):
        raise FastinvError(f"--solver is for --method deepinv (or auto), not {method}")


def _check_offload(offload: str, device: str, backend: str) -> None:
    """`--offload`'s one-line errors before any work (`fastinv.run_config.check_offload`)."""
    from fastinv.device import resolve_device
    from fastinv.run_config import check_offload

    check_offload(offload, resolve_device(device), backend)


def _quiet_libraries() -> None:
    """Keep diffusers/transformers load chatter (progress bars, optional-backend notices) off the terminal."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for logging in (diffusers_logging, transformers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()


@app.command()
def invert(
    images: Annotated[
        list[str] | None,
        typer.Argument(
            help="Image files (any format PIL reads), folders (their image files) or quoted glob patterns "
            "('photos/*.jpg')."
        ),
    ] = None,
    model: ModelOption = None,
    example: Annotated[
        bool, typer.Option("--example", help="Also invert the photo shipped with fastinv.")
    ] = False,
    method: MethodOption = "auto",
    steps: StepsOption = 28,
    set_: SetOption = None,
    prompt: Annotated[str, typer.Option(help="Prompt used for inversion and reconstruction.")] = "",
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale (1 = off).")] = 1.0,
    embedded_guidance: EmbeddedGuidanceOption = None,
    embeddings: EmbeddingsOption = None,
    solver: SolverOption = None,
    out: Annotated[
        Path, typer.Option(help="Output folder; images whose outputs it holds (same settings) are skipped.")
    ] = Path("fastinv-out"),
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    backend: BackendOption = "torch",
    export_dir: ExportDirOption = None,
    fast: FastOption = None,
    compile_: CompileOption = None,
    cuda_graphs: CudaGraphsOption = None,
    kernels: KernelsOption = "auto",
    offload: OffloadOption = "none",
    batch_size: Annotated[
        int,
        typer.Option(
            help="Images inverted together (one batched method call per pixel size); --ray runs the same "
            "batches."
        ),
    ] = 1,
    ray: Annotated[
        str | None,
        typer.Option(
            help="Run on Ray Data: 'local' starts a local Ray, else a Ray cluster's address "
            "(needs pip install 'fastinv\\[ray]')."
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="With --ray: inverting actors (default: one per GPU, else per CPU).")
    ] = None,
) -> None:
    """Invert images to noise z_T, regenerate them, and write z_T, the reconstruction and metrics per image,
    and OUT/manifest.jsonl."""
    _quiet_libraries()
    from fastinv.folders import (
        Item,
        Manifest,
        Settings,
        completed,
        expand_inputs,
        name_problem,
        outcome,
        output_names,
    )
    from fastinv.methods import parse_options
    from fastinv.models import EXAMPLE_IMAGE
    from fastinv.pipeline import InversionJob
    from fastinv.ray_data import check_load_options
    from fastinv.request_checks import check_request

    check_request(steps=steps, prompt=prompt, guidance=guidance, embedded_guidance=embedded_guidance)
    get_backend(backend).check_method(method)  # before loading
    _check_solver_method(solver, method)
    _check_offload(offload, device, backend)
    _check_out(out)
    method_options = parse_options(method, set_ or [])
    if batch_size < 1:
        raise FastinvError(f"--batch-size must be at least 1, got {batch_size}")
    if workers is not None and (ray is None or workers < 1):
        raise FastinvError(
            "--workers needs --ray" if ray is None else f"--workers must be at least 1, got {workers}"
        )
    if ray is not None:
        from fastinv.ray_data import check_installed

        if not ray.strip():
            raise FastinvError("--ray needs 'local' or the address of a Ray cluster")
        check_installed()
    paths = expand_inputs([*(images or []), *([EXAMPLE_IMAGE] if example else [])], out)
    if not paths:
        raise FastinvError(
            "no images given: name image files or folders, or pass --example for the shipped photo"
        )
    names = output_names(paths)
    items = [Item(index, str(path), names[path]) for index, path in enumerate(paths)]
    job = InversionJob(prompt, method, steps, guidance, embedded_guidance, method_options)
    load_options = _load_options(
        model, device, dtype, embeddings, solver, backend, export_dir, fast, compile_, cuda_graphs, kernels
    ) | {"offload": offload}
    check_load_options(load_options)  # before anything is skipped or written, even when nothing is pending
    with _only_run_in(out):
        settings = Settings.of(job, model, solver)
        manifest = Manifest(out)
        problems = {item.index: name_problem(item) for item in items}
        manifest.add(
            outcome(item, "error", error=problems[item.index]) for item in items if problems[item.index]
        )
        manifest.add(
            record
            for record in (completed(out, item, settings) for item in items if not problems[item.index])
            if record is not None
        )
        pending = [item for item in items if item.index not in manifest.outcomes]
        title = ""
        try:
            if pending and ray is None:
                title = _invert_here(pending, job, out, load_options, batch_size, manifest)
            elif pending:
                title = _invert_on_ray(ray, pending, job, out, load_options, batch_size, workers, manifest)
        finally:
            manifest.write()
    _print_outcomes(manifest, title, out)
    failed = manifest.by_status("error")
    if failed:
        first = failed[0]
        raise FastinvError(
            f"{len(failed)} of {len(items)} images failed (see {manifest.path}); first: {first['image']}: "
            f"{first['error']}"
        )


def _invert_here(
    pending: list[Item],
    job: InversionJob,
    out: Path,
    load_options: dict[str, Any],
    batch_size: int,
    manifest: Manifest,
) -> str:
    """Invert `pending` in this process, `batch_size` at a time, into `out`; returns the table's title."""
    from fastinv.api import load
    from fastinv.folders import batches, invert_items

    with console.status(f"loading {load_options['model_dir'] or 'the shipped default model'}"):
        inverter = load(**load_options)
        inverter.prepare(job.method, **job.options)  # a solver that cannot load fails the run, not each image
    for note in inverter.model.notes:
        console.print(note, style="dim", markup=False, soft_wrap=True)  # paths unbroken, brackets as text
    with progress_bar(console) as progress:
        overall = progress.add_task("images", total=len(pending))
        for batch in batches(pending, batch_size):
            _stop_if_signalled()
            label = batch[0].name + (f" (+{len(batch) - 1})" if len(batch) > 1 else "")
            hook, task = _stage_hook(progress, label, job.steps)
            outcomes = invert_items(inverter, batch, job, out, hook)
            progress.remove_task(task)
            _report(outcomes, manifest)
            progress.advance(overall, len(batch))
    where = f"{inverter.model.device} ({load_options['backend']} backend, {inverter.config.describe()})"
    return f"{inverter.resolve_method(job.method)}, {job.steps} steps, {inverter.model.family} on {where}"


def _invert_on_ray(
    address: str,
    pending: list[Item],
    job: InversionJob,
    out: Path,
    load_options: dict[str, Any],
    batch_size: int,
    workers: int | None,
    manifest: Manifest,
) -> str:
    """Invert `pending` on Ray Data (`fastinv.ray_data`), in the plain run's batches; returns the title."""
    from fastinv.folders import Settings, batches
    from fastinv.ray_data import LOCAL, invert_batches, session

    console.print(
        f"[dim]{'starting a local Ray' if address == LOCAL else f'connecting to Ray at {address}'}[/dim]"
    )
    with session(address), progress_bar(console) as progress:
        overall = progress.add_task("images (Ray)", total=len(pending))

        def finished(outcomes: list[dict[str, Any]]) -> None:
            _report(outcomes, manifest)
            progress.advance(overall, len(outcomes))

        actors = invert_batches(batches(pending, batch_size), load_options, job, out, workers, finished)
    method = Settings.of(job, load_options["model_dir"], load_options["solver"]).method
    return f"{method}, {job.steps} steps, on Ray ({actors} workers)"


def _report(outcomes: list[dict[str, Any]], manifest: Manifest) -> None:
    """Print a batch's image notes and errors as it finishes, and add its outcomes to the manifest."""
    for record in outcomes:
        name = Path(record["image"]).name
        for note in (record["details"] or {}).get("notes", []):
            console.print(f"{name}: {note}", style="dim", markup=False)
        if record["status"] == "error":
            console.print(f"{name}: {record['error']}", style="red", markup=False)
    manifest.add(outcomes)


def _print_outcomes(manifest: Manifest, title: str, out: Path) -> None:
    """The table of the images inverted now, and one line counting inverted, skipped and failed images."""
    inverted = manifest.by_status("ok")
    if inverted:
        table = Table(title=title)
        for column in ("image", "size", "NFE", "invert s", "reconstruct s", "PSNR dB", "SSIM", "LPIPS"):
            table.add_column(column, justify="left" if column == "image" else "right")
        for record in inverted:
            details, metrics = record["details"], record["metrics"]
            width, height = details["size"]
            table.add_row(
                Path(record["image"]).name,
                f"{width}×{height}",
                str(details["nfe"]),
                _fmt(details["seconds_inversion"]),
                _fmt(details["seconds_reconstruction"]),
                _fmt(metrics["psnr"]),
                _fmt(metrics["ssim"], 4),
                _fmt(metrics["lpips"], 4),
            )
        console.print(table)
        console.print(
            f"wrote z_T (.zT.safetensors), reconstructions (.recon.png) and metrics (.metrics.json) to {out}"
        )
    skipped, failed = manifest.by_status("skipped"), manifest.by_status("error")
    console.print(
        f"{len(inverted)} inverted, {len(skipped)} skipped (done before with these settings), "
        f"{len(failed)} failed; one line per image in {manifest.path}",
        markup=False,
    )


@app.command()
def edit(
    image: Annotated[Path, typer.Argument(help="The image to edit (any format PIL reads).")],
    target_prompt: Annotated[str, typer.Option(help="Prompt of the edit (the regeneration).")],
    source_prompt: Annotated[str, typer.Option(help="Prompt describing the image (the inversion).")] = "",
    method: MethodOption = "auto",
    steps: StepsOption = 28,
    set_: SetOption = None,
    guidance: Annotated[float, typer.Option(help="CFG scale of the regeneration (1 = off).")] = 1.0,
    inversion_guidance: Annotated[float, typer.Option(help="CFG scale of the inversion (1 = off).")] = 1.0,
    strength: Annotated[
        float, typer.Option(help="RF-Inversion control η in [0, 1]: 1 holds the source's layout, 0 does not.")
    ] = 0.9,
    stop: Annotated[
        float, typer.Option(help="End of the sampling steps held to the source (fraction, exclusive).")
    ] = 0.25,
    start: Annotated[
        float, typer.Option(help="Start of the steps held to the source (fraction ≤ stop).")
    ] = 0.0,
    mask: Annotated[
        Path | None,
        typer.Option(
            help="Edit only inside this mask (an image; at least mid-grey = editable, darker = kept): "
            "outside it the latents follow the source's inversion trajectory. Resized to the image if its "
            "size differs."
        ),
    ] = None,
    mask_feather: Annotated[
        int, typer.Option(help="Pixels over which the mask rises from 0 at its edge to 1 inside it.")
    ] = 4,  # masks.DEFAULT_FEATHER (tested): fastinv.masks imports torch, the CLI's start-up does not
    embedded_guidance: EditEmbeddedGuidanceOption = None,
    inversion_embedded_guidance: InversionEmbeddedGuidanceOption = None,
    embeddings: EmbeddingsOption = None,
    model: ModelOption = None,
    solver: SolverOption = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("fastinv-edit"),
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    backend: BackendOption = "torch",
    export_dir: ExportDirOption = None,
    fast: FastOption = None,
    compile_: CompileOption = None,
    cuda_graphs: CudaGraphsOption = None,
    kernels: KernelsOption = "auto",
    offload: OffloadOption = "none",
) -> None:
    """Edit an image: invert it with the source prompt, regenerate with the target prompt, held to the
    source by RF-Inversion's controlled ODE; writes source, edit and side-by-side PNGs and a JSON record."""
    _quiet_libraries()

    from fastinv.api import load
    from fastinv.masks import check_feather
    from fastinv.methods import parse_options
    from fastinv.pipeline import EditJob, InversionJob, edit_to_files
    from fastinv.request_checks import check_request
    from fastinv.sampling import SourceControl

    if not image.is_file():
        raise FastinvError(f"image not found: {image}")
    if mask is not None and not mask.is_file():
        raise FastinvError(f"mask not found: {mask}")
    check_feather(mask_feather)
    check_request(
        steps=steps,
        prompt=source_prompt,
        guidance=inversion_guidance,
        embedded_guidance=inversion_embedded_guidance,
    )
    check_request(prompt=target_prompt, guidance=guidance, embedded_guidance=embedded_guidance)
    SourceControl.check(strength, stop, start)  # before loading
    get_backend(backend).check_method(method)
    _check_solver_method(solver, method)
    _check_offload(offload, device, backend)
    _check_out(out)
    options = parse_options(method, set_ or [])
    load_options = _load_options(
        model, device, dtype, embeddings, solver, backend, export_dir, fast, compile_, cuda_graphs, kernels
    ) | {"offload": offload}
    with console.status(f"loading {model or 'the shipped default model'}"):
        inverter = load(**load_options)
    method = inverter.resolve_method(method)
    picture = inverter.prepare_image(image)
    local = None if mask is None else inverter.prepare_mask(mask, picture, mask_feather)  # before any work
    for note in [*inverter.model.notes, *picture.notes, *([] if local is None else local.notes)]:
        console.print(note, style="dim", markup=False, soft_wrap=True)  # paths unbroken, brackets as text
    job = InversionJob(source_prompt, method, steps, inversion_guidance, inversion_embedded_guidance, options)
    target = EditJob(target_prompt, guidance, strength, stop, start, embedded_guidance, local, mask_feather)
    with progress_bar(console) as progress:
        hook, _ = _stage_hook(progress, image.stem, steps)
        run = edit_to_files(inverter, picture, job, target, out, image.stem, hook)
    metrics, reconstruction, edited = run.metrics, run.reconstruction, run.edit
    table = Table(title=f"{method}, {steps} steps; edit η={strength}, steps [{start:.0%}, {stop:.0%})")
    for column in ("vs source", "PSNR dB", "SSIM", "LPIPS", "s"):
        table.add_column(column, justify="left" if column == "vs source" else "right")
    for name, rec in (("reconstruction", reconstruction), ("edit", edited.edited)):
        scores = metrics[name]
        table.add_row(
            name, _fmt(scores["psnr"]), _fmt(scores["ssim"], 4), _fmt(scores["lpips"], 4), _fmt(rec.seconds)
        )
    console.print(table)
    if local is not None:
        scores = metrics["mask_vs_reconstruction"]
        console.print(
            f"edit vs reconstruction: {_fmt(scores['psnr_outside'])} dB outside the mask, "
            f"{_fmt(scores['psnr_inside'])} dB inside ({scores['editable_fraction']:.0%} editable)"
        )
    console.print(f"wrote {image.stem}.source.png, .edit.png, .side_by_side.png, .edit.json to {out}")


@app.command()
def reconstruct(
    latents: Annotated[Path, typer.Argument(help="A z_T file `fastinv invert` wrote (NAME.zT.safetensors).")],
    out: Annotated[
        Path, typer.Option(help="Output folder for NAME.reconstruct.png and NAME.reconstruct.json.")
    ] = Path("fastinv-out"),
    model: Annotated[
        Path | None,
        typer.Option(
            help="The model folder, where it is now (default: the one the file's metadata names); it must "
            "be the model that inverted it."
        ),
    ] = None,
    embeddings: EmbeddingsOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    backend: BackendOption = "torch",
    export_dir: ExportDirOption = None,
    fast: FastOption = None,
    compile_: CompileOption = None,
    cuda_graphs: CudaGraphsOption = None,
    kernels: KernelsOption = "auto",
) -> None:
    """Regenerate the image from a saved z_T with the schedule, prompt and guidance its metadata records, as
    `fastinv invert` reconstructs it; writes OUT/NAME.reconstruct.png and NAME.reconstruct.json."""
    _quiet_libraries()
    from fastinv.api import load
    from fastinv.outputs import read_latents_file
    from fastinv.pipeline import reconstruct_to_files

    saved = read_latents_file(latents)  # untrusted: every value checked before any work
    _check_out(out)
    model_dir = model or Path(saved.model)
    if not model_dir.is_dir():
        where = "" if model else f" (named by {latents}'s metadata: pass --model DIR where it is now)"
        raise FastinvError(f"model folder not found: {model_dir}{where}")
    load_options = _load_options(
        model_dir, device, dtype, embeddings, None, backend, export_dir, fast, compile_, cuda_graphs, kernels
    )
    with console.status(f"loading {model_dir}"):
        inverter = load(**load_options)
    for note in inverter.model.notes:
        console.print(note, style="dim", markup=False, soft_wrap=True)  # paths unbroken, brackets as text
    steps = len(saved.sigmas) - 1
    with progress_bar(console) as progress:
        hook, _ = _stage_hook(progress, saved.stem, steps)
        record = reconstruct_to_files(inverter, saved, out, hook)
    seconds = _fmt(record["seconds_reconstruction"])
    console.print(
        f"{saved.stem}: {steps} steps, {record['nfe_reconstruction']} NFE, {seconds} s on "
        f"{inverter.model.device} ({backend} backend); wrote {saved.stem}.reconstruct.png and "
        f".reconstruct.json to {out}",
        markup=False,
    )


def _stage_hook(progress: Progress, stem: str, steps: int) -> tuple[Callable[[str], None], TaskID]:
    """A pipeline step hook that shows `stem`'s current stage (invert, reconstruct, edit), `steps` a stage
    (a batch reconstructs its images one after another: each is a stage)."""
    task = progress.add_task(stem, total=steps)
    current: list[str] = []
    done = [0]

    def hook(stage: str) -> None:
        _stop_if_signalled()
        if current != [stage] or done[0] == steps:
            current[:], done[0] = [stage], 0
            progress.update(task, description=f"{stem}: {stage}", completed=0)
        done[0] += 1
        progress.advance(task)

    return hook, task


LOCK_FILE = ".fastinv.lock"
"""The file `fastinv invert` locks in its --out while it runs."""


@contextlib.contextmanager
def _only_run_in(out: Path) -> Iterator[None]:
    """Hold OUT/.fastinv.lock (an OS file lock, freed with the process) while a run writes to `out`: a second
    run into the same folder is a one-line error instead of a silent mix of two runs' sets. The lock file is
    removed at the end, and `out` too if this run made it and left it empty (a run refused before work)."""
    from filelock import FileLock, Timeout

    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise FastinvError(
            f"another fastinv run is writing to {out}: wait for it, or pick another --out"
        ) from None
    try:
        yield
    finally:
        # unlinked while held, so a run that opens it from now on makes a new file and takes that one
        (out / LOCK_FILE).unlink(missing_ok=True)
        lock.release()
        if made and not any(out.iterdir()):
            out.rmdir()


def _check_out(out: Path) -> None:
    """One-line error, before any work, when --out cannot be a folder: it, or the nearest part of its path
    that exists, is a file, or that folder is not writable."""
    existing = next(folder for folder in (out, *out.absolute().parents) if folder.exists())
    if existing == out and not out.is_dir():
        raise FastinvError(f"--out {out} is a file, not a folder")
    if not existing.is_dir():
        raise FastinvError(f"--out {out}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FastinvError(f"--out {out}: {existing} is not writable")


@app.command()
def train(
    model: Annotated[
        Path | None, typer.Option(help="Local diffusers folder; default: the shipped default model.")
    ] = None,
    images: Annotated[
        str,
        typer.Option(help="Folder of training images, or 'skimage' (the shipped model's training photos)."),
    ] = "skimage",
    out: Annotated[
        Path,
        typer.Option(
            help="Output folder: solver/, checkpoints/, loss.csv, loss.png, targets.json, log.json."
        ),
    ] = Path("fastinv-solver"),
    config: Annotated[
        Path | None, typer.Option(help="Training recipe JSON; default: the shipped solver's recipe.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Recipe override KEY=VALUE (repeatable), e.g. rounds=1 or steps=[4,10]."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the newest complete checkpoint in OUT.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing OUT/solver.")] = False,
    device: Annotated[
        str, typer.Option(help="auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)")
    ] = "auto",
    dtype: Annotated[
        str, typer.Option(help="Denoiser dtype: auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16")
    ] = "auto",
) -> None:
    """Train a DeepInv solver for a model (self-supervised: no labels needed). Runs under torchrun for DDP."""
    import os

    import torch

    _quiet_libraries()
    _check_out(out)
    if dtype not in ("auto", "fp32", "bf16"):
        raise FastinvError(f"--dtype for train must be auto, fp32 or bf16, got {dtype!r}")
    from fastinv.api import load
    from fastinv.methods import parse_pairs
    from fastinv.solver.recipe import DEFAULT_RECIPE, SolverTrainConfig
    from fastinv.solver.training import train_solver

    recipe = SolverTrainConfig.read(config or DEFAULT_RECIPE, parse_pairs(set_ or []))
    if device == "auto" and "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    with console.status(f"loading {model or 'the shipped default model'}"):
        inverter = load(model, device=device, dtype=dtype, fast=False)  # training runs eager (+ autocast)
    summary = train_solver(inverter.model, recipe, images, out, resume=resume, force=force)
    if int(os.environ.get("RANK", "0")) == 0:
        console.print(
            f"trained {summary['optimizer_steps']} steps in {summary['seconds']:.0f} s, "
            f"final loss {summary['final_loss']:.3e}; wrote {out / 'solver'} and {out / 'loss.png'}"
        )


@app.command()
def export(
    out: Annotated[Path, typer.Option(help="Output folder; pass it as `fastinv invert --export-dir`.")],
    model: Annotated[
        Path | None, typer.Option(help="Local diffusers folder; default: the shipped default model.")
    ] = None,
    solver: Annotated[
        Path | None, typer.Option(help="DeepInv solver folder to export too (default: MODEL/solver if any).")
    ] = None,
    format_: Annotated[
        str, typer.Option("--format", help="onnx | trt (trt: the ONNX graphs, then TensorRT engines).")
    ] = "onnx",
    precision: Annotated[
        str, typer.Option(help="Network dtype inside the graphs: fp32 | bf16 | fp16.")
    ] = "fp32",
    batch: Annotated[
        str, typer.Option(help="trt profile: images per call MIN:OPT:MAX (CFG doubles them).")
    ] = "1:1:2",
    size: Annotated[
        str | None, typer.Option(help="trt profile: image side MIN:OPT:MAX in pixels, for height and width.")
    ] = None,
    text: Annotated[
        str | None,
        typer.Option(help="trt profile: prompt length MIN:OPT:MAX in tokens (default: the model's)."),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Compare every export with torch on random inputs; exit 2 above tolerance."
        ),
    ] = False,
    device: Annotated[str, typer.Option(help="Device of the torch model while exporting.")] = "cpu",
    workspace: Annotated[
        float | None, typer.Option(help="trt: builder workspace limit in GiB (default: TensorRT's).")
    ] = None,
    opt_level: Annotated[
        int | None, typer.Option(help="trt: builder optimisation level, 0 (fast build) … 5 (default 3).")
    ] = None,
    gpu_arch: Annotated[
        str | None,
        typer.Option(
            help="trt: build ahead of time, without a GPU, for this compute capability (TensorRT-RTX: "
            "sm_75, sm_80, sm_86, sm_89, sm_120, sm_121); default: for the GPU here."
        ),
    ] = None,
) -> None:
    """Export the denoiser (and DeepInv solver) as ONNX graphs and, with --format trt, TensorRT engines."""
    import logging
    import math
    import resource
    import time

    from fastinv.device import DTYPES
    from fastinv.runtime.tensorrt.profile import parse_range

    if format_ not in ("onnx", "trt"):
        raise FastinvError(f"unknown format {format_!r}: use onnx or trt")
    if precision not in DTYPES:
        raise FastinvError(f"unknown precision {precision!r}: use {', '.join(DTYPES)}")
    batch_range = parse_range(batch, "--batch")
    size_range = None if size is None else parse_range(size, "--size")
    text_range = None if text is None else parse_range(text, "--text")
    if gpu_arch is not None and format_ != "trt":
        raise FastinvError("--gpu-arch is for --format trt")
    if format_ != "trt" and (workspace is not None or opt_level is not None):
        raise FastinvError("--workspace and --opt-level are for --format trt")
    if workspace is not None and not (math.isfinite(workspace) and 0 < workspace <= 1024):
        raise FastinvError(f"--workspace must be a number of GiB in (0, 1024], got {workspace}")
    opt_level = 3 if opt_level is None else opt_level
    if not 0 <= opt_level <= 5:
        raise FastinvError(f"--opt-level must be 0 … 5, got {opt_level}")
    if format_ == "trt":
        from fastinv.runtime.tensorrt import library

        if gpu_arch is None:
            library.check_any()  # before any work: one line when neither TensorRT library is here
        else:
            gpu_arch = library.parse_arch(gpu_arch)
            library.for_arch(gpu_arch)
    _quiet_libraries()
    _check_out(out)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # the exporter's notes on absent torchvision ops
    from fastinv.api import load
    from fastinv.export.onnx import check_parity, export_model

    with console.status(f"loading {model or 'the shipped default model'}"):
        inverter = load(model, device=device, dtype="fp32", solver=solver, fast=False)
    flow = inverter.model
    clock = time.perf_counter()
    references = export_model(flow, inverter.solver_dir, out, precision=precision)
    if inverter.solver_dir is None:
        console.print(
            f"[dim]{flow.name} has no solver/ folder and no --solver: velocity graph only[/dim]",
            soft_wrap=True,
        )
    seconds = time.perf_counter() - clock
    for path in references:
        megabytes = sum(f.stat().st_size for f in out.glob(path.name + "*")) / 2**20
        console.print(f"wrote {path} ({megabytes:.1f} MB)", markup=False, soft_wrap=True)
    console.print(f"exported {len(references)} graph(s) in {seconds:.1f} s")
    if check:
        for path, reference in references.items():
            report = check_parity(path, reference, device=flow.device)
            console.print(str(report), markup=False, soft_wrap=True)
    if format_ == "trt":
        from fastinv.export.tensorrt import build_engines

        builds = build_engines(
            references,
            flow,
            batch=batch_range,
            size=size_range,
            text=text_range,
            device=device,
            gpu_arch=gpu_arch,
            workspace_gib=workspace,
            optimization_level=opt_level,
            check=check and gpu_arch is None,
        )
        if check and gpu_arch is not None:
            console.print(
                f"[dim]engines built ahead of time for {gpu_arch} cannot run here: not checked[/dim]"
            )
        for build in builds:
            verb = "built" if build.engine.built else "reused cached"
            facts = build.engine.facts
            line = (
                f"{verb} {build.engine.path} ({facts.built_by}, {facts.compute_capability}) "
                f"for {build.profile.describe()}"
            )
            console.print(line, markup=False, soft_wrap=True)
            if build.parity is not None:
                console.print(str(build.parity), markup=False, soft_wrap=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    console.print(f"peak memory (RSS of this process) {peak:.0f} MB")


@app.command()
def bench(
    model: ModelOption = None,
    solver: SolverOption = None,
    methods: Annotated[
        str, typer.Option(help="'all' or a comma-separated list of methods, each with its default options.")
    ] = "all",
    backends: Annotated[
        str,
        typer.Option(
            help=f"Comma-separated {BACKEND_NAMES} ({BENCH_EXPORTS}: exported to OUT/exports unless "
            "--export-dir)."
        ),
    ] = "torch",
    steps: Annotated[str, typer.Option(help="Comma-separated step counts.")] = "10,25,50",
    images: Annotated[
        str, typer.Option(help="A folder of images, or 'skimage' (the photos held out of the shipped model).")
    ] = "skimage",
    max_images: Annotated[int | None, typer.Option(help="Use at most this many images.")] = None,
    repeats: Annotated[int, typer.Option(help="Timed inversions per image.")] = 3,
    warmup: Annotated[int, typer.Option(help="Untimed inversions per method × steps before timing.")] = 1,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    export_dir: Annotated[
        Path | None,
        typer.Option(
            help=f"For {FOLDER_BACKENDS}: a folder `fastinv export` wrote ({NEEDS_EXPORT} needs one: "
            f"--format {NEEDS_EXPORT})."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder: bench.json, bench.md and plots.")] = Path(
        "fastinv-bench"
    ),
    timing_only: Annotated[
        bool,
        typer.Option("--timing-only", help="Skip reconstruction and metrics (random-weight models)."),
    ] = False,
    fast: FastOption = None,
) -> None:
    """Time and score every method × backend × step count on the same images; write JSON, Markdown, plots."""
    import logging

    _quiet_libraries()
    _check_out(out)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # the exporter's notes on absent torchvision ops
    from fastinv.bench import build_record, make_plan, report_tables, run_bench, write_report

    plan = make_plan(
        model=model,
        solver=solver,
        methods=methods,
        backends=backends,
        steps=steps,
        images=images,
        max_images=max_images,
        repeats=repeats,
        warmup=warmup,
        device=device,
        dtype=dtype,
        export_dir=export_dir,
        out=out,
        timing_only=timing_only,
        fast=fast,
    )
    record = build_record(plan, run_bench(plan, console))
    paths = write_report(record, plan.out)
    for table in report_tables(record):
        rich_table = Table(title=table.title)
        for column, align in zip(table.columns, table.align, strict=True):
            rich_table.add_column(column, justify="right" if align == "r" else "left", overflow="fold")
        for cells in table.rows:
            rich_table.add_row(*cells)
        console.print(rich_table)
    console.print(f"[dim]{record['fidelity_note']}[/dim]")
    console.print(f"wrote {', '.join(str(path) for path in paths)}", markup=False, soft_wrap=True)


@app.command()
def serve(
    model: ModelOption = None,
    solver: SolverOption = None,
    embeddings: EmbeddingsOption = None,
    host: Annotated[str, typer.Option(help="Address the HTTP proxy listens on (0.0.0.0: every one).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    replicas: Annotated[
        int | None, typer.Option(help="Model replicas (default: one per GPU of the cluster, else one).")
    ] = None,
    address: Annotated[
        str, typer.Option(help="'local' starts a local Ray; else a Ray cluster's address (HOST:PORT, auto).")
    ] = "local",
    max_batch_size: Annotated[
        int, typer.Option(help="Inversions a replica runs together (same method, steps, prompt, size).")
    ] = 8,
    batch_wait_ms: Annotated[float, typer.Option(help="How long a batch waits to fill, in ms.")] = 10.0,
    request_timeout: Annotated[
        float, typer.Option(help="Seconds a request waits for its replica before a 503.")
    ] = 300.0,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    backend: BackendOption = "torch",
    export_dir: ExportDirOption = None,
    fast: FastOption = None,
    compile_: CompileOption = None,
    cuda_graphs: CudaGraphsOption = None,
    kernels: KernelsOption = "auto",
) -> None:
    """Serve inversion and editing over HTTP on Ray Serve, batching concurrent requests (README: Service);
    runs until SIGINT / SIGTERM, then shuts down what it started."""
    import logging
    import time

    from fastinv.ray_data import LOCAL, check_installed, check_load_options, session

    if not 1 <= port <= 65535:
        raise FastinvError(f"--port must be in [1, 65535], got {port}")
    if replicas is not None and replicas < 1:
        raise FastinvError(f"--replicas must be at least 1, got {replicas}")
    if not 1 <= max_batch_size <= 1024:
        raise FastinvError(f"--max-batch-size must be in [1, 1024], got {max_batch_size}")
    if not 0 <= batch_wait_ms <= 60_000:  # (False for NaN)
        raise FastinvError(f"--batch-wait-ms must be in [0, 60000], got {batch_wait_ms}")
    if not 0 < request_timeout <= 86_400:
        raise FastinvError(f"--request-timeout must be in (0, 86400] seconds, got {request_timeout}")
    if not address.strip():
        raise FastinvError("--address needs 'local' or the address of a Ray cluster")
    if not host.strip():
        raise FastinvError("--host needs an address or host name to listen on (0.0.0.0: every one)")
    get_backend(backend)
    check_installed("fastinv serve", "fastapi")
    load_options = _load_options(
        model, device, dtype, embeddings, solver, backend, export_dir, fast, compile_, cuda_graphs, kernels
    )
    for name in ("model_dir", "embeddings", "solver", "export_dir"):  # the replicas' working folder differs
        if load_options[name] is not None:
            load_options[name] = str(load_options[name].resolve())
    check_load_options(load_options)
    if address == LOCAL:
        _check_port(host, port)
    from fastinv.serve import deploy, undeploy

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # after its import, which sets INFO

    console.print(
        f"[dim]{'starting a local Ray' if address == LOCAL else f'connecting to Ray at {address}'}[/dim]"
    )
    with session(address):
        try:
            with console.status(f"loading {model or 'the shipped default model'} on the model replicas"):
                service = deploy(
                    load_options,
                    host=host,
                    port=port,
                    replicas=replicas,
                    max_batch_size=max_batch_size,
                    batch_wait_s=batch_wait_ms / 1000,
                    timeout_s=request_timeout,
                )
            each = ", ".join(
                f"{name.removeprefix('num_')}={value:g}" for name, value in service.resources.items()
            )
            console.print(
                f"serving at {service.url} on Ray at {service.ray_address}: {service.replicas} model "
                f"replica(s), each {each}; batches of up to {max_batch_size}, filled for {batch_wait_ms:g} "
                "ms. Ctrl-C or SIGTERM stops.",
                markup=False,
                soft_wrap=True,
            )
            while True:
                time.sleep(3600)
        finally:
            undeploy(shutdown=address == LOCAL)


def _check_port(host: str, port: int) -> None:
    """One-line error, before Ray starts, when this machine cannot listen on host:port."""
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as err:
        raise FastinvError(f"cannot listen on {host}:{port}: {err.strerror or err}") from err


def _version_of(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


@app.command()
def info(
    export_dir: Annotated[
        Path | None,
        typer.Option(help="Also list the TensorRT engines in this folder: graph, library, GPU architecture."),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            help="Also print this model folder's family and variant and each memory plan's estimated peak "
            "(from its configs and safetensors headers; nothing is loaded)."
        ),
    ] = None,
    dtype: Annotated[
        str, typer.Option(help="With --model: the dtype to estimate for, as a run's --dtype (GPU: bf16).")
    ] = "auto",
) -> None:
    """Print versions, devices, backends and inversion methods (and the engines in an export folder, and a
    model folder's memory plans)."""
    import torch

    from fastinv import __version__
    from fastinv.device import resolve_device, resolve_dtype
    from fastinv.kernels import triton_available
    from fastinv.lpips import lpips_available
    from fastinv.methods import METHODS
    from fastinv.models import DEFAULT_MODEL
    from fastinv.run_config import RunConfig
    from fastinv.runtime.exports import available_backends
    from fastinv.runtime.tensorrt import library
    from fastinv.runtime.tensorrt.cache import engines_in

    estimate, estimate_dtype = None, resolve_dtype(dtype, resolve_device("auto"))  # errors before any output
    if model is not None:
        from fastinv.models.footprint import footprint

        estimate = footprint(model, estimate_dtype)
    table = Table(title=f"fastinv {__version__}", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("python", platform.python_version())
    for package in ("torch", "diffusers", "accelerate", "transformers", "onnx", "onnxruntime", "triton"):
        table.add_row(package, _version_of(package))
    found = library.present()
    table.add_row("tensorrt (datacenter GPUs; builds on the GPU here)", found[library.TENSORRT])
    rtx = (
        f"{found[library.TENSORRT_RTX]}; runs on and builds ahead of time for {', '.join(library.RTX_ARCHS)}"
    )
    table.add_row("tensorrt_rtx (RTX GPUs)", rtx)
    table.add_row("cpu threads", str(torch.get_num_threads()))
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    table.add_row("cuda devices", ", ".join(gpus) if gpus else "none")
    shipped = "present" if (DEFAULT_MODEL / "model_index.json").is_file() else "missing"
    table.add_row("default model", f"{DEFAULT_MODEL} ({shipped})")
    solver = "present" if (DEFAULT_MODEL / "solver" / "config.json").is_file() else "missing"
    table.add_row("default DeepInv solver", f"{DEFAULT_MODEL / 'solver'} ({solver})")
    table.add_row("backends", ", ".join(available_backends()))
    fast = RunConfig.resolve(resolve_device("auto"), resolve_dtype("auto", resolve_device("auto")))
    kernels = "Triton on CUDA tensors" if triton_available() else "torch references (triton not installed)"
    table.add_row("fast path (torch backend)", f"{fast.describe()}; step kernels: {kernels}")
    methods = f"{', '.join(METHODS)}; default auto: deepinv with a solver, else warm_fixed_point"
    table.add_row("methods", methods)
    table.add_row("lpips (alex)", "available" if lpips_available() else "unavailable (see README: metrics)")
    console.print(table)
    if export_dir is not None:
        engines = engines_in(export_dir)
        console.print(
            f"TensorRT engines in {export_dir}: {len(engines) or 'none'}", markup=False, soft_wrap=True
        )
        for engine, facts in engines:
            line = (
                f"  {engine.name}: built by {facts.built_by} for {facts.compute_capability} "
                f"({facts.device_name}), {facts.precision}, {facts.profile.describe()}"
            )
            console.print(line, markup=False, soft_wrap=True)
    if estimate is not None:
        _print_footprint(model, estimate)


def _print_footprint(model_dir: Path, estimate: Any) -> None:
    """`info --model`: the folder's variant (and a distilled model's warning), each component's weights, the
    activations, and each memory plan's estimated peak (a `fastinv.models.footprint.Footprint`)."""
    from fastinv.models.footprint import memory_size

    variant = estimate.variant
    line = f"{model_dir}: {variant.family}, {variant.name} ({variant.evidence})"
    console.print(line, markup=False, soft_wrap=True)
    if variant.distilled is not None:
        console.print(variant.distilled, style="yellow", markup=False, soft_wrap=True)
    precision = str(estimate.dtype).removeprefix("torch.")
    table = Table(title=f"estimated device memory in {precision} (fastinv.models.footprint says how)")
    for column in ("component", "parameters", "memory"):
        table.add_column(column, justify="left" if column == "component" else "right")
    for part in estimate.components:
        count = "n/a" if part.parameters is None else f"{part.parameters / 1e6:,.1f} M"
        table.add_row(part.name, count, part.note or memory_size(part.bytes))
    (width, height), (image, text) = estimate.resolution, estimate.tokens
    where = f"{width}×{height}: {image} image + {text} text tokens; CFG ×2"
    activations = {f"transformer activations per image ({where})": estimate.denoiser_activations}
    if estimate.vae_activations:
        activations[f"VAE decode activations ({width}×{height})"] = estimate.vae_activations
    for name, size in activations.items():
        table.add_row(name, "", memory_size(size))
    console.print(table)
    plans = Table(title="memory plans (--offload): estimated peak on the device")
    for column in ("--offload", "peak", "on the device"):
        plans.add_column(column, justify="right" if column == "peak" else "left")
    held = {
        "none": "every component",
        "text": "transformer and VAE; text encoders in CPU memory",
        "model": "one component at a time",
    }
    for plan, peak in estimate.plans.items():
        plans.add_row(plan, memory_size(peak), held[plan])
    console.print(plans)


_received: list[int] = []
"""Signals received during this `main` call (typer turns the KeyboardInterrupt they raise into exit 130)."""


def _on_signal(signum: int, _frame: object) -> None:
    """SIGINT / SIGTERM: raise KeyboardInterrupt in the main thread, so that every `with` block (staged
    files, checkpoints) unwinds before the process exits."""
    _received.append(signum)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _stop_if_signalled() -> None:
    """Raise the interruption again if a signal arrived: its KeyboardInterrupt can land in a finaliser
    (`__del__`), where Python prints and drops it, and the run would carry on."""
    if _received:
        raise KeyboardInterrupt(signal.Signals(_received[0]).name)


def _fail(message: str, code: int = 2) -> NoReturn:
    """One `error:` line, then exit `code`; after SIGINT / SIGTERM, whatever failed (an import the signal
    cut short, say), the interruption's line and 128 + signum."""
    if _received:
        _interrupted(_received[0])
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(code)


def _interrupted(signum: int) -> NoReturn:
    name = signal.Signals(signum).name
    print(f"error: interrupted by {name}: stopped, nothing half-written left", file=sys.stderr)
    sys.exit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `fastinv` and `python -m fastinv`: every failure ends in one `error:` line on stderr.

    Exit codes: 0 done; 2 bad input or a fault (disk full, unreadable file; FASTINV_DEBUG=1 re-raises
    unexpected errors with their traceback); 130 / 143 on SIGINT / SIGTERM (outputs are staged and
    published atomically, so nothing half-written is left; `train` keeps its last complete checkpoint).
    """
    for variable in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):  # read when those libraries load
        os.environ.setdefault(variable, "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _received.clear()
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = app(args=argv, standalone_mode=False)
    except FastinvError as err:
        _fail(str(err))
    except typer.TyperException as err:  # usage errors of typer's (vendored) click
        message = err.format_message() if hasattr(err, "format_message") else str(err)
        _fail(message or "no command given: the help above lists them")  # bare `fastinv`: help, then this
    except KeyboardInterrupt:
        _interrupted(_received[0] if _received else signal.SIGINT)
    except OSError as err:
        _fail(f"{err.strerror or err}{f': {err.filename}' if err.filename else ''}")
    except MemoryError:
        _fail("out of memory")
    except Exception as err:
        if os.environ.get("FASTINV_DEBUG") and not _received:
            raise
        _fail(f"internal error ({type(err).__name__}: {err}); rerun with FASTINV_DEBUG=1 for the traceback")
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if _received or code == 130:  # typer returns 130 for the KeyboardInterrupt it caught
        _interrupted(_received[0] if _received else signal.SIGINT)
    if isinstance(code, int) and code:
        sys.exit(code)
