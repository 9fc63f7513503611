"""The Python API for editing tools: load once, then invert and reconstruct images.

inv = fastinv.load("path/to/sd3-folder", device="cuda")
res = inv.invert("photo.png", prompt="a cat", steps=28)  # method "auto": deepinv or warm_fixed_point
rec = inv.reconstruct(res)          # rec.image is a PIL image
print(inv.evaluate(res, rec))       # PSNR / SSIM / LPIPS / MSE

The same calls run on exported graphs: fastinv.load(..., backend="ort" | "trt", export_dir=folder).
A diffusers StableDiffusion3Pipeline or FluxPipeline already loaded: fastinv.from_pipeline(pipe), on its
own modules.
On a GPU the torch backend takes the fast path (torch.compile, CUDA graphs, Triton step kernels) unless
fastinv.load(..., fast=False); the run's settings are one RunConfig (`fastinv.run_config`), inv.config.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fastinv.conditioning import Conditioning
from fastinv.device import precision_name, resolve_device, resolve_dtype
from fastinv.errors import FastinvError
from fastinv.images import LoadedImage, load_image, pixels_to_pil
from fastinv.masks import DEFAULT_FEATHER, Mask, check_feather, load_mask
from fastinv.memory import PeakMemory
from fastinv.methods import (
    AUTO,
    StepCallback,
    auto_method,
    check_options,
    get_method,
    method_options,
)
from fastinv.methods.base import Stopwatch
from fastinv.metrics import reconstruction_metrics
from fastinv.models import FlowModel, load_model
from fastinv.models.offload import plan_model
from fastinv.models.prompt_cache import PromptCache
from fastinv.models.variants import distilled_warning
from fastinv.request_checks import check_request
from fastinv.results import Edit, Inversion, Reconstruction
from fastinv.run_config import CPU, RunConfig, check_offload
from fastinv.runtime.backends import get_backend
from fastinv.runtime.exports import export_folder, exported_solver, exported_velocity, solver_exported
from fastinv.runtime.fast_path import compiled
from fastinv.runtime.graph import GraphSolver
from fastinv.runtime.weights import expect_weights
from fastinv.sampling import SourceControl, SourceTrajectory, sample_euler
from fastinv.schedule import check_schedule
from fastinv.solver.model import TorchSolver, check_solver_fits, load_solver, read_solver_config

ImageSource = str | Path | bytes | Image.Image | np.ndarray
"""An image file (its path or its bytes), a PIL image or an array."""


class Inverter:
    """A loaded model plus the invert → reconstruct → evaluate path, for any registered method.

    solver_dir: the DeepInv solver for method "deepinv" (default: the model folder's solver/), loaded
    on first use. backend / export_dir: what runs the solver: with "ort" or "trt", the solver exported
    to export_dir when it holds one (checked against solver_dir's config), else the torch solver.
    config: how the run executes (device, dtype, compile, CUDA graphs, kernels), resolved by `load`; it is
    passed to every method and to the sampler, compiles torch solvers, and is recorded in each Inversion.

    Threads: one Inverter may serve several threads, on every backend. The calls that run the networks
    (invert, invert_batch, reconstruct, edit) hold the inverter's lock, so one request at a time runs on
    the device; image loading and metrics run outside it. A GPU runs one request's batch at full width
    and torch on CPU already spreads one request over all cores, so a lock costs little; for throughput,
    batch (`invert_batch`). Prompt embeddings live in the model's bounded LRU `prompt_cache`.
    """

    def __init__(
        self,
        model: FlowModel,
        solver_dir: str | Path | None = None,
        *,
        backend: str = "torch",
        export_dir: str | Path | None = None,
        config: RunConfig | None = None,
    ) -> None:
        self.model = model
        self.config = config or RunConfig(model.device, model.dtype)
        self.solver_dir = Path(solver_dir) if solver_dir is not None else model.solver_dir
        self.backend = backend
        self.export_dir = export_folder(backend, export_dir)
        self._solver: TorchSolver | GraphSolver | None = None
        self._solvers_by_path: dict[Path, TorchSolver | GraphSolver] = {}
        self._lock = threading.RLock()

    @property
    def solver(self) -> TorchSolver | GraphSolver:
        """The trained DeepInv solver, loaded once, checked against the model."""
        if self._solver is None:
            self._solver = self._load_solver(self.solver_dir)
        return self._solver

    @property
    def has_solver(self) -> bool:
        """Whether method deepinv can run: a solver folder, or an exported solver in export_dir."""
        if self.solver_dir is not None:
            return True
        precision = precision_name(self.model.dtype)
        return self.export_dir is not None and solver_exported(self.backend, self.export_dir, precision)

    def resolve_method(self, method: str) -> str:
        """`method`, with "auto" (the default) resolved: deepinv where this inverter has a solver, else
        warm_fixed_point."""
        return auto_method(self.has_solver) if method == AUTO else method

    def prepare(self, method: str = AUTO, **options: Any) -> None:
        """Check `method`'s options and load what it needs (deepinv: its solver, the folder's or a `solver`
        option's) now, so that a run over many images fails once, up front, rather than on each."""
        self._method_options(self.resolve_method(method), options)

    def _load_solver(self, folder: str | Path | None) -> TorchSolver | GraphSolver:
        """The solver of `folder` on this inverter's backend: its exported graph in export_dir if there is
        one, else the torch solver; checked against the model."""
        config = None if folder is None else read_solver_config(folder)
        solver: TorchSolver | GraphSolver | None = None
        if self.export_dir is not None:
            precision = precision_name(self.model.dtype)
            solver = exported_solver(self.backend, self.export_dir, precision, self.model.device, config)
            if solver is not None:
                expect_weights(solver.graph.path, solver.graph.spec.weights, folder)
        if solver is None:
            if folder is None:
                held = "" if self.export_dir is None else f" and {self.export_dir} holds no exported solver"
                raise FastinvError(
                    f"method deepinv needs a trained solver: {self.model.name} has no solver/ folder{held}; "
                    "pass --solver DIR (fastinv train writes one)"
                )
            solver = load_solver(folder, self.model.device, self.model.dtype)
            if self.config.compile:
                solver = compiled(solver)
        check_solver_fits(solver.config, self.model.codec.channels, self.model.conditioning(""))
        return solver

    def prepare_image(self, image: ImageSource) -> LoadedImage:
        """Load and fit an image to the model: resized and cropped to a fixed-resolution model's size;
        otherwise sides cropped to the model's multiple and shrunk past its maximum."""
        return load_image(image, **self._fit())

    def _fit(self) -> dict[str, Any]:
        """`load_image`'s options that fit an image to the model (`prepare_image`)."""
        step, model = self.model.size_multiple, self.model
        return {"multiple": step, "min_size": step, "size": model.resolution, "max_side": model.max_side}

    def prepare_mask(
        self, mask: ImageSource | Mask, image: LoadedImage, feather: int = DEFAULT_FEATHER
    ) -> Mask:
        """A local edit's mask for `image` (prepared): fitted as the image was, thresholded at mid-grey and
        feathered `feather` px inwards (`fastinv.masks`); a prepared Mask is checked against the image."""
        if not isinstance(mask, Mask):
            return load_mask(mask, image, self._fit(), feather)
        if mask.weights.shape[-2:] != image.pixels.shape[-2:]:
            raise FastinvError(
                f"mask {mask.source} is {mask.weights.shape[-1]}×{mask.weights.shape[-2]} px, the image "
                f"{image.pixels.shape[-1]}×{image.pixels.shape[-2]}: prepare it for this image"
            )
        return mask

    def _method_options(self, method: str, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(options to call `method` with, options to record): a solver option becomes a loaded solver."""
        check_options(method, options)
        options, recorded = dict(options), dict(options)
        if "solver" in method_options(method):
            given = options.get("solver")
            if given is None:
                options["solver"], source = self.solver, self.solver_dir
            elif isinstance(given, str | Path):
                key = Path(given).resolve()
                if key not in self._solvers_by_path:  # loaded once, not on every call
                    self._solvers_by_path[key] = self._load_solver(given)
                options["solver"], source = self._solvers_by_path[key], given
            else:
                source = type(given).__name__
            graph = getattr(options["solver"], "graph", None)  # an exported solver: record its file
            recorded["solver"] = str(graph.path if graph is not None else source)
        return options, recorded

    def invert(
        self,
        image: ImageSource | LoadedImage,
        *,
        prompt: str = "",
        method: str = AUTO,
        steps: int = 28,
        guidance: float = 1.0,
        embedded_guidance: float | None = None,
        callback: StepCallback | None = None,
        keep_trajectory: bool = False,
        **options: Any,
    ) -> Inversion:
        """Invert one image to z_T with `method` over `steps` steps of the model's schedule."""
        (inversion,) = self.invert_batch(
            [image],
            prompt=prompt,
            method=method,
            steps=steps,
            guidance=guidance,
            embedded_guidance=embedded_guidance,
            callback=callback,
            keep_trajectory=keep_trajectory,
            **options,
        )
        return inversion

    def invert_batch(
        self,
        images: Sequence[ImageSource | LoadedImage],
        *,
        prompt: str = "",
        method: str = AUTO,
        steps: int = 28,
        guidance: float = 1.0,
        embedded_guidance: float | None = None,
        callback: StepCallback | None = None,
        keep_trajectory: bool = False,
        **options: Any,
    ) -> list[Inversion]:
        """Invert images with one prompt, one batched method call per latent size; results in input order.

        Each Inversion holds its image's slice of z_T; nfe and seconds are those of its size group's
        batched call (NFE per image = the method's NFE; seconds per image = seconds / group size).
        """
        check_request(steps=steps, prompt=prompt, guidance=guidance, embedded_guidance=embedded_guidance)
        if isinstance(images, ImageSource) or not isinstance(images, Sequence):
            raise TypeError(f"invert_batch takes a list of images, got {type(images).__name__}")
        if not images:
            raise FastinvError("no images to invert")
        method = self.resolve_method(method)
        get_backend(self.backend).check_method(method)  # e.g. preciseinv's gradients on ort: before any work
        check_options(method, options)
        invert = get_method(method)
        loaded = [image if isinstance(image, LoadedImage) else self.prepare_image(image) for image in images]
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, picture in enumerate(loaded):
            groups.setdefault(tuple(picture.pixels.shape), []).append(index)
        inversions: list[Inversion | None] = [None] * len(loaded)
        with self._lock, PeakMemory(self.model.device) as memory:
            options, recorded = self._method_options(method, options)
            cond = self.model.conditioning(prompt, guidance, embedded_guidance, inverting=True)
            for indices in groups.values():
                pixels = torch.cat([loaded[i].pixels for i in indices]).to(self.model.device)
                x0 = self.model.codec.encode(pixels)
                sigmas = self.model.sigmas(steps, (x0.shape[-2], x0.shape[-1]))
                result = invert(
                    self.model.velocity,
                    x0,
                    sigmas,
                    cond,
                    callback=callback,
                    keep_trajectory=keep_trajectory,
                    config=self.config,
                    **options,
                )
                if not bool(torch.isfinite(result.z_T).all()):  # one host sync per inversion
                    raise FastinvError(
                        f"method {method!r} produced a non-finite z_T (NaN or inf) at {steps} steps: "
                        "try more steps, fewer corrections or fp32"
                    )
                for row, i in enumerate(indices):
                    trajectory = (
                        None if result.trajectory is None else [z[row : row + 1] for z in result.trajectory]
                    )
                    part = dataclasses.replace(result, z_T=result.z_T[row : row + 1], trajectory=trajectory)
                    inversions[i] = Inversion(
                        part,
                        method,
                        steps,
                        sigmas,
                        cond,
                        loaded[i],
                        x0[row : row + 1],
                        recorded,
                        self.model.name,
                        self.config,
                    )
        return [dataclasses.replace(inversion, peak_memory_mib=memory.mib) for inversion in inversions]

    def _regenerate(
        self,
        z_T: torch.Tensor,
        sigmas: torch.Tensor,
        cond: Conditioning,
        control: SourceControl | None,
        callback: StepCallback | None,
        source: SourceTrajectory | None = None,
    ) -> Reconstruction:
        """Euler sampling from z_T [B, C, h, w] over the N+1 `sigmas` with `cond` (and `control`), decoded."""
        with self._lock, PeakMemory(self.model.device) as memory:
            clock = Stopwatch(self.model.device)
            latents, nfe = sample_euler(
                self.model.velocity,
                z_T,
                sigmas,
                cond,
                callback=callback,
                control=control,
                source=source,
                config=self.config,
            )
            if not bool(torch.isfinite(latents).all()):  # one host sync per reconstruction or edit
                raise FastinvError(
                    f"Euler sampling over {len(sigmas) - 1} steps produced non-finite latents (NaN or inf): "
                    "check z_T (an inversion's, of normal scale?) and the prompt embeddings, or use fp32"
                )
            pixels = self.model.codec.decode(latents).cpu()
            seconds = clock.seconds()
        image = pixels_to_pil(pixels)
        return Reconstruction(latents, pixels, nfe, seconds, image, cond.embedded_guidance, memory.mib)

    def _check_inversion(self, inversion: Any) -> None:
        """TypeError for anything but an Inversion; a one-line error for one made by another model."""
        if not isinstance(inversion, Inversion):
            raise TypeError(f"expected an Inversion (from Inverter.invert), got {type(inversion).__name__}")
        if inversion.model_name != self.model.name or inversion.z_T.shape[1] != self.model.codec.channels:
            raise FastinvError(
                f"this inversion was made with {inversion.model_name}, not this inverter's {self.model.name}"
            )

    def reconstruct(
        self,
        inversion: Inversion,
        *,
        embedded_guidance: float | None = None,
        callback: StepCallback | None = None,
    ) -> Reconstruction:
        """Regenerate from z_T alone with the same schedule and conditioning (Euler sampling), then decode.

        `embedded_guidance` (FLUX-dev) defaults to the inversion's: the only exact inverse (a mismatch
        raised the latent error 250–700× on tiny FLUX-dev, benchmarks/flux_guidance.py)."""
        check_request(embedded_guidance=embedded_guidance)
        self._check_inversion(inversion)
        cond = inversion.cond
        if embedded_guidance is not None and self.model.takes_embedded_guidance:
            cond = dataclasses.replace(cond, embedded_guidance=embedded_guidance)
        return self._regenerate(inversion.z_T, inversion.sigmas, cond, None, callback)

    def reconstruct_latents(
        self,
        z_T: torch.Tensor,
        sigmas: torch.Tensor,
        *,
        prompt: str = "",
        guidance: float = 1.0,
        embedded_guidance: float | None = None,
        callback: StepCallback | None = None,
    ) -> Reconstruction:
        """`reconstruct` for a z_T without its Inversion, e.g. one read from its file
        (`outputs.read_latents_file`): z_T [B, C, h, w] float32, the N+1 sigmas (float64, decreasing) it was
        inverted over, and the prompt, CFG scale and FLUX-dev embedded guidance (None: the inversion's
        default, 1) it was inverted with."""
        check_request(prompt=prompt, guidance=guidance, embedded_guidance=embedded_guidance)
        check_schedule(sigmas)
        self._check_latents(z_T)
        cond = self.model.conditioning(prompt, guidance, embedded_guidance, inverting=True)
        return self._regenerate(z_T.to(self.model.device, torch.float32), sigmas, cond, None, callback)

    def _check_latents(self, z_T: torch.Tensor) -> None:
        """One-line error unless z_T is [B, C, h, w] latents of this model: its C channels, h and w multiples
        of its patch, the pixel sides (h·f, w·f) within its largest side."""
        model, factor = self.model, self.model.codec.scale_factor
        patch = model.size_multiple // factor
        fits = z_T.ndim == 4 and z_T.shape[0] >= 1 and z_T.shape[1] == model.codec.channels
        sides = list(z_T.shape[-2:]) if fits else []
        fits = fits and all(side >= 1 and side % patch == 0 for side in sides)
        if not fits or (model.max_side is not None and max(sides) * factor > model.max_side):
            largest = "" if model.max_side is None else f", at most {model.max_side // factor}"
            raise FastinvError(
                f"z_T of shape {list(z_T.shape)} does not fit {model.name}: it takes [B, "
                f"{model.codec.channels}, h, w] latents, h and w multiples of {patch}{largest}"
            )

    def edit(
        self,
        image: ImageSource | LoadedImage | Inversion,
        *,
        source_prompt: str = "",
        target_prompt: str,
        method: str = AUTO,
        steps: int = 28,
        guidance: float = 1.0,
        inversion_guidance: float = 1.0,
        strength: float = 0.9,
        stop: float = 0.25,
        start: float = 0.0,
        embedded_guidance: float | None = None,
        inversion_embedded_guidance: float | None = None,
        callback: StepCallback | None = None,
        mask: ImageSource | Mask | None = None,
        mask_feather: int = DEFAULT_FEATHER,
        **options: Any,
    ) -> Edit:
        """Invert `image` with `source_prompt` (guidance `inversion_guidance`), then regenerate from z_T with
        `target_prompt` (guidance `guidance`), held to the source by RF-Inversion's controlled ODE
        (`sampling.SourceControl`: strength η over the steps in [start, stop), fractions). An Inversion
        is reused as is (its method, steps and source prompt). strength = 0 is plain regeneration.
        FLUX-dev's embedded guidance: `inversion_embedded_guidance` (default 1) for the inversion,
        `embedded_guidance` (default 3.5) for the regeneration.

        `mask` (a file, image or array; white = editable, see `fastinv.masks`; or a Mask from
        `prepare_mask`) makes the edit local: outside it the latents follow the source's inversion
        trajectory step by step (`sampling.SourceTrajectory`), feathered `mask_feather` px inside its edge.
        A masked edit of an Inversion needs its trajectory (`invert(..., keep_trajectory=True)`)."""
        SourceControl.check(strength, stop, start)  # before any work
        check_feather(mask_feather)
        check_request(prompt=target_prompt, guidance=guidance, embedded_guidance=embedded_guidance)
        check_request(
            steps=steps,
            prompt=source_prompt,
            guidance=inversion_guidance,
            embedded_guidance=inversion_embedded_guidance,
        )
        if isinstance(image, Inversion):
            self._check_inversion(image)
            if mask is not None and image.result.trajectory is None:
                raise FastinvError(
                    "a masked edit needs the source's inversion trajectory: invert with keep_trajectory=True"
                )
            picture = image.image
        else:
            picture = image if isinstance(image, LoadedImage) else self.prepare_image(image)
        mask = None if mask is None else self.prepare_mask(mask, picture, mask_feather)  # before any work
        if isinstance(image, Inversion):
            inversion = image
        else:
            inversion = self.invert(
                picture,
                prompt=source_prompt,
                method=method,
                steps=steps,
                guidance=inversion_guidance,
                embedded_guidance=inversion_embedded_guidance,
                keep_trajectory=mask is not None,
                **options,
            )
        cond = self.model.conditioning(target_prompt, guidance, embedded_guidance)
        control = SourceControl(inversion.x0, strength, stop, start)
        source = None
        if mask is not None:
            weights = mask.at(tuple(inversion.x0.shape[-2:])).to(inversion.x0.device)
            source = SourceTrajectory(weights, inversion.result.trajectory)
        edited = self._regenerate(inversion.z_T, inversion.sigmas, cond, control, callback, source)
        return Edit(inversion, target_prompt, guidance, strength, stop, start, edited, mask)

    def evaluate(self, inversion: Inversion, reconstruction: Reconstruction) -> dict[str, Any]:
        """PSNR, SSIM, LPIPS and pixel MSE of the reconstruction vs the input; MSE of the latents vs x0."""
        return reconstruction_metrics(
            inversion.image.pixels[0],
            reconstruction.pixels[0],
            inversion.x0.cpu(),
            reconstruction.latents.cpu(),
        )


def load(
    model_dir: str | Path | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    embeddings: str | Path | None = None,
    solver: str | Path | None = None,
    backend: str = "torch",
    export_dir: str | Path | None = None,
    fast: bool | None = None,
    compile: bool | None = None,
    cuda_graphs: bool | None = None,
    kernels: str = "auto",
    prompt_cache_size: int = 64,
    offload: str = "none",
) -> Inverter:
    """Load a local diffusers folder (SD3, FLUX; None: the shipped default model) for inversion.

    device: auto | cpu | cuda[:N]; dtype: auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16;
    embeddings: a precomputed prompt-embeddings file, for folders without text encoders;
    solver: a DeepInv solver folder for method "deepinv" (default: the model folder's solver/);
    backend: torch | ort | trt: what runs the denoiser (and the solver, when export_dir holds it);
    export_dir: the folder `fastinv export` wrote, whose graphs are picked by dtype
    (velocity.<dtype>.onnx, solver.<dtype>.onnx, TensorRT engines beside them);
    fast: the torch backend's GPU fast path (None: on for CUDA); compile / cuda_graphs override its two
    switches one by one; kernels: "auto" (Triton step kernels on CUDA) | "torch" (their references);
    prompt_cache_size: how many prompts' embeddings the LRU keeps;
    offload: the memory plan on a CUDA device (`fastinv.models.offload`): "none" | "text" (text encoders in
    CPU memory, encoding there) | "model" (model CPU offload: one component on the device at a time).
    """
    folder = export_folder(backend, export_dir)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    check_offload(offload, torch_device, backend)
    run = {
        "enabled": fast,
        "compile": compile,
        "cuda_graphs": cuda_graphs,
        "kernels": kernels,
        "offload": offload,
    }
    RunConfig.resolve(torch_device, torch_dtype, **run)  # its errors before any loading
    model = load_model(
        model_dir,
        device=torch_device if offload == "none" else CPU,  # an offload plan places the components itself
        dtype=torch_dtype,
        embeddings=embeddings,
        transformer_weights=folder is None,  # a graph backend runs the exported graph: architecture only
    )
    if offload != "none":
        model = plan_model(model, offload, torch_device)
    return _inverter(model, solver, backend, folder, prompt_cache_size, run)


def from_pipeline(
    pipeline: Any,
    *,
    device: str | None = None,
    dtype: str | None = None,
    embeddings: str | Path | None = None,
    solver: str | Path | None = None,
    backend: str = "torch",
    fast: bool | None = None,
    compile: bool | None = None,
    cuda_graphs: bool | None = None,
    kernels: str = "auto",
    prompt_cache_size: int = 64,
) -> Inverter:
    """An Inverter on a diffusers StableDiffusion3Pipeline or FluxPipeline already loaded, sharing its
    transformer, VAE and text encoders (no second copy of the weights; fastinv sets the transformer and VAE
    to eval and frozen, in place). Its results equal `load(folder)`'s for the pipeline of that folder.

    device / dtype: as `load`'s, None keeps the transformer's; another one moves (casts) the pipeline's
    modules in place (`fastinv.models.pipelines.model_from_pipeline`). backend: torch only (exported graphs
    run from a folder: `load(folder, backend=..., export_dir=...)`). The other options are `load`'s.
    """
    from fastinv.models.pipelines import model_from_pipeline  # imports diffusers' pipelines: only here

    if backend != "torch":
        raise FastinvError(
            f"from_pipeline runs the pipeline's own modules on the torch backend, not {backend!r}: "
            "for exported graphs use fastinv.load(folder, backend=..., export_dir=...)"
        )
    model = model_from_pipeline(pipeline, device=device, dtype=dtype, embeddings=embeddings)
    run = {"enabled": fast, "compile": compile, "cuda_graphs": cuda_graphs, "kernels": kernels}
    return _inverter(model, solver, backend, None, prompt_cache_size, run)


def _inverter(
    model: FlowModel,
    solver: str | Path | None,
    backend: str,
    folder: Path | None,
    prompt_cache_size: int,
    run: dict[str, Any],
) -> Inverter:
    """The Inverter of a built `model`: its prompt cache, its RunConfig (`run`: RunConfig.resolve's switches),
    and the velocity that runs: `folder`'s exported graph on a graph backend, else the (compiled) torch
    one."""
    warning = distilled_warning(model)  # a distilled few-step model: one line on what to expect
    if warning is not None:
        model = dataclasses.replace(model, notes=[*model.notes, warning])
    model.prompt_cache = PromptCache(prompt_cache_size)
    config = RunConfig.resolve(model.device, model.dtype, **run)
    if folder is not None:
        velocity = exported_velocity(backend, folder, model, precision_name(model.dtype))
        model = dataclasses.replace(model, velocity=velocity)
        config = dataclasses.replace(config, compile=False, cuda_graphs=False)  # the backend's own
    elif config.compile:
        model = dataclasses.replace(model, velocity=compiled(model.velocity))
    return Inverter(model, solver, backend=backend, export_dir=folder, config=config)
