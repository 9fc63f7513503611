"""The Python API for editing tools: load once, then invert and reconstruct images.

inv = fastinv.load("path/to/sd3-folder", device="cuda")
res = inv.invert("photo.png", prompt="a cat", steps=28)  # method "auto": deepinv or warm_fixed_point
rec = inv.reconstruct(res)          # rec.image is a PIL image
print(inv.evaluate(res, rec))       # PSNR / SSIM / LPIPS / MSE

The same calls run on exported graphs: fastinv.load(..., backend="ort" | "trt", export_dir=folder).
On a GPU the torch backend takes the fast path (torch.compile, CUDA graphs, Triton step kernels) unless
fastinv.load(..., fast=False); the run's settings are one RunConfig (`fastinv.run_config`), inv.config.
"""

from __future__ import annotations

import dataclasses
import math
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
from fastinv.models.prompt_cache import PromptCache
from fastinv.results import Edit, Inversion, Reconstruction
from fastinv.run_config import RunConfig
from fastinv.runtime.backends import get_backend
from fastinv.runtime.exports import export_folder, exported_solver, exported_velocity, solver_exported
from fastinv.runtime.fast_path import compiled
from fastinv.runtime.graph import GraphSolver
from fastinv.runtime.weights import expect_weights
from fastinv.sampling import SourceControl, sample_euler
from fastinv.solver.model import TorchSolver, check_solver_fits, load_solver, read_solver_config

ImageSource = str | Path | bytes | Image.Image | np.ndarray
"""An image file (its path or its bytes), a PIL image or an array."""
MAX_STEPS = 10_000


def check_request(
    *, steps: Any = 1, prompt: Any = "", guidance: Any = 1.0, embedded_guidance: Any = None
) -> None:
    """One-line errors, before any work, for the arguments every inversion takes: steps an integer in
    [1, MAX_STEPS], prompt a string, guidance a finite number >= 0, embedded guidance None or the same."""

    def finite(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    if isinstance(steps, bool) or not isinstance(steps, int):
        raise FastinvError(f"steps must be an integer in [1, {MAX_STEPS}], got {steps!r}")
    if not 1 <= steps <= MAX_STEPS:
        raise FastinvError(f"steps must be at least 1 and at most {MAX_STEPS}, got {steps}")
    if not isinstance(prompt, str):
        raise FastinvError(f"prompt must be a string, got {type(prompt).__name__}")
    if not finite(guidance) or guidance < 0:
        raise FastinvError(f"guidance must be a finite number >= 0, got {guidance!r}")
    if embedded_guidance is not None and (not finite(embedded_guidance) or embedded_guidance < 0):
        raise FastinvError(f"embedded guidance must be a finite number >= 0, got {embedded_guidance!r}")


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
        step = self.model.size_multiple
        return load_image(
            image, multiple=step, min_size=step, size=self.model.resolution, max_side=self.model.max_side
        )

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
        with self._lock:
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
        return inversions

    def _regenerate(
        self,
        inversion: Inversion,
        cond: Conditioning,
        control: SourceControl | None,
        callback: StepCallback | None,
    ) -> Reconstruction:
        """Euler sampling from inversion's z_T on its schedule with `cond` (and `control`), decoded."""
        with self._lock:
            clock = Stopwatch(self.model.device)
            latents, nfe = sample_euler(
                self.model.velocity,
                inversion.z_T,
                inversion.sigmas,
                cond,
                callback=callback,
                control=control,
                config=self.config,
            )
            pixels = self.model.codec.decode(latents).cpu()
            seconds = clock.seconds()
        return Reconstruction(latents, pixels, nfe, seconds, pixels_to_pil(pixels), cond.embedded_guidance)

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
        return self._regenerate(inversion, cond, None, callback)

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
        **options: Any,
    ) -> Edit:
        """Invert `image` with `source_prompt` (guidance `inversion_guidance`), then regenerate from z_T with
        `target_prompt` (guidance `guidance`), held to the source by RF-Inversion's controlled ODE
        (`sampling.SourceControl`: strength η over the steps in [start, stop), fractions). An Inversion
        is reused as is (its method, steps and source prompt). strength = 0 is plain regeneration.
        FLUX-dev's embedded guidance: `inversion_embedded_guidance` (default 1) for the inversion,
        `embedded_guidance` (default 3.5) for the regeneration."""
        SourceControl.check(strength, stop, start)  # before any work
        check_request(prompt=target_prompt, guidance=guidance, embedded_guidance=embedded_guidance)
        check_request(
            steps=steps,
            prompt=source_prompt,
            guidance=inversion_guidance,
            embedded_guidance=inversion_embedded_guidance,
        )
        if isinstance(image, Inversion):
            self._check_inversion(image)
            inversion = image
        else:
            inversion = self.invert(
                image,
                prompt=source_prompt,
                method=method,
                steps=steps,
                guidance=inversion_guidance,
                embedded_guidance=inversion_embedded_guidance,
                **options,
            )
        cond = self.model.conditioning(target_prompt, guidance, embedded_guidance)
        control = SourceControl(inversion.x0, strength, stop, start)
        edited = self._regenerate(inversion, cond, control, callback)
        return Edit(inversion, target_prompt, guidance, strength, stop, start, edited)

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
    prompt_cache_size: how many prompts' embeddings the LRU keeps.
    """
    folder = export_folder(backend, export_dir)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    model = load_model(
        model_dir,
        device=torch_device,
        dtype=torch_dtype,
        embeddings=embeddings,
        transformer_weights=folder is None,  # a graph backend runs the exported graph: architecture only
    )
    model.prompt_cache = PromptCache(prompt_cache_size)
    config = RunConfig.resolve(
        torch_device, torch_dtype, enabled=fast, compile=compile, cuda_graphs=cuda_graphs, kernels=kernels
    )
    if folder is not None:
        velocity = exported_velocity(backend, folder, model, precision_name(torch_dtype))
        model = dataclasses.replace(model, velocity=velocity)
        config = dataclasses.replace(config, compile=False, cuda_graphs=False)  # the backend's own
    elif config.compile:
        model = dataclasses.replace(model, velocity=compiled(model.velocity))
    return Inverter(model, solver, backend=backend, export_dir=folder, config=config)
