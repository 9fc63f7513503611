"""What `fastinv bench` runs: methods × backends × step counts on a set of images, checked before any work."""

from __future__ import annotations

import importlib
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastinv.device import precision_name, resolve_device, resolve_dtype
from fastinv.errors import FastinvError
from fastinv.images import IMAGE_SUFFIXES, image_files
from fastinv.methods import METHODS, get_method, method_options
from fastinv.runtime.backends import BACKENDS, folder_backends, get_backend, spelled
from fastinv.runtime.graph import onnx_file
from fastinv.training.photos import HELD_OUT, load_photo

SKIMAGE = "skimage"
"""--images value for the photos held out of the shipped model's training (fastinv.training.photos)."""
PROMPT = ""
GUIDANCE = 1.0


@dataclass(frozen=True)
class BenchImage:
    """One benchmark image: a held-out skimage photo (path None) or an image file."""

    name: str
    path: Path | None = None

    def load(self) -> np.ndarray | Path:
        """What `Inverter.prepare_image` takes: the photo as uint8 [H, W, 3], or the file's path."""
        return load_photo(self.name) if self.path is None else self.path


@dataclass(frozen=True)
class BenchPlan:
    """A validated benchmark: every method × backend × step count on every image.

    device / precision are resolved ("cpu", "fp32"); export_dir is the folder the ort / trt backends read
    (None: bench exports the ort graphs into out/exports first); fast: the torch backend's fast path
    (None: on for CUDA).
    """

    model: Path | None
    solver: Path | None
    methods: tuple[str, ...]
    backends: tuple[str, ...]
    steps: tuple[int, ...]
    images: tuple[BenchImage, ...]
    image_source: str
    repeats: int
    warmup: int
    device: str
    precision: str
    export_dir: Path | None
    out: Path
    timing_only: bool
    fast: bool | None

    @property
    def default_export_dir(self) -> Path:
        """Where the ort graphs are exported when no export_dir is given."""
        return self.out / "exports"

    def command(self) -> str:
        """The `fastinv bench` command line that repeats this plan, every option spelled out."""
        args = ["fastinv", "bench"]
        args += ["--model", str(self.model)] if self.model else []
        args += ["--solver", str(self.solver)] if self.solver else []
        args += ["--methods", ",".join(self.methods), "--backends", ",".join(self.backends)]
        args += ["--steps", ",".join(map(str, self.steps)), "--images", self.image_source]
        args += ["--max-images", str(len(self.images)), "--repeats", str(self.repeats)]
        args += ["--warmup", str(self.warmup), "--device", self.device, "--dtype", self.precision]
        args += ["--export-dir", str(self.export_dir)] if self.export_dir else []
        args += ["--out", str(self.out)]
        args += ["--timing-only"] if self.timing_only else []
        args += [] if self.fast is None else ["--fast" if self.fast else "--no-fast"]
        return shlex.join(args)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": str(self.model.resolve()) if self.model else "the shipped default model",
            "solver": str(self.solver) if self.solver else None,
            "methods": list(self.methods),
            "method_options": {name: method_options(name) for name in self.methods},  # the defaults
            "backends": list(self.backends),
            "steps": list(self.steps),
            "images": self.image_source,
            "image_names": [image.name for image in self.images],
            "prompt": PROMPT,
            "guidance": GUIDANCE,
            "repeats": self.repeats,
            "warmup": self.warmup,
            "device": self.device,
            "dtype": self.precision,
            "export_dir": str(self.export_dir) if self.export_dir else None,
            "timing_only": self.timing_only,
            "fast": self.fast,
        }


def _names(text: str, option: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise FastinvError(f"{option} is empty: give a comma-separated list")
    return list(dict.fromkeys(names))


def parse_methods(text: str) -> tuple[str, ...]:
    """ "all" → every registered method in registry order; else a comma-separated list of method names."""
    if text.strip() == "all":
        return tuple(METHODS)
    names = _names(text, "--methods")
    for name in names:
        get_method(name)
    return tuple(names)


def parse_steps(text: str) -> tuple[int, ...]:
    """ "10,25,50" → (10, 25, 50): distinct step counts ≥ 1, ascending."""
    try:
        steps = sorted({int(part) for part in _names(text, "--steps")})
    except ValueError as err:
        raise FastinvError(
            f"--steps takes comma-separated whole numbers, e.g. 10,25,50; got {text!r}"
        ) from err
    if steps[0] < 1:
        raise FastinvError(f"--steps must all be at least 1, got {text!r}")
    return tuple(steps)


def list_images(source: str, max_images: int | None = None) -> tuple[BenchImage, ...]:
    """The held-out skimage photos ("skimage") or a folder's image files by name; at most max_images."""
    if max_images is not None and max_images < 1:
        raise FastinvError(f"--max-images must be at least 1, got {max_images}")
    if source == SKIMAGE:
        images = tuple(BenchImage(name) for name in HELD_OUT)
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise FastinvError(f"image folder not found: {folder} (give a folder of images, or 'skimage')")
        files = [p for p in image_files(folder) if p.is_file()]
        if not files:
            raise FastinvError(f"no image files in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        images = tuple(BenchImage(p.name, p) for p in files)
    return images[:max_images]


def _require_exporter(backend: str) -> None:
    """onnxscript, which the ONNX exporter (torch.onnx dynamo=True) runs on, or one line."""
    try:
        importlib.import_module("onnxscript")
    except Exception as err:  # ImportError, or a broken install failing on its native libraries
        raise FastinvError(
            f"the {backend} backend needs onnxscript ({type(err).__name__} on import): "
            "pip install -e '.[onnx]'"
        ) from err


def parse_backends(text: str, device: str, precision: str, export_dir: Path | None) -> tuple[str, ...]:
    """A comma-separated list of backends (`fastinv.runtime.backends.BACKENDS`), each checked to run here:
    its package imports; one that bench exports for (ort) needs onnxscript when export_dir is None; a
    CUDA-only one (trt) needs a CUDA device; one that reads a folder bench cannot export (trt) needs an
    export_dir that `fastinv export --format trt` wrote."""
    names = _names(text, "--backends")
    for name in names:
        get_backend(name)
    chosen = [backend for name, backend in BACKENDS.items() if name in names]  # checked in table order
    if export_dir is not None:
        if not any(backend.folder for backend in chosen):
            raise FastinvError(
                f"--export-dir is for the {spelled(folder_backends())} backends; add one to --backends"
            )
        if not export_dir.is_dir():
            raise FastinvError(f"export folder not found: {export_dir}")
        onnx_file(export_dir, "velocity", precision)
    exported = [name for name, backend in BACKENDS.items() if backend.bench_exports]
    for backend in chosen:
        backend.require()
        if backend.bench_exports and export_dir is None:
            _require_exporter(backend.name)
        if backend.cuda_only and not device.startswith("cuda"):
            raise FastinvError(
                f"the {backend.name} backend runs on a CUDA device, not {device}: pass --device cuda"
            )
        if backend.folder and not backend.bench_exports and export_dir is None:
            raise FastinvError(
                f"the {backend.name} backend needs --export-dir: a folder `fastinv export --format "
                f"{backend.name}` wrote (bench exports ONNX graphs for {spelled(exported, 'or')} only)"
            )
    return tuple(names)


def make_plan(
    *,
    model: Path | None = None,
    solver: Path | None = None,
    methods: str = "all",
    backends: str = "torch",
    steps: str = "10,25,50",
    images: str = SKIMAGE,
    max_images: int | None = None,
    repeats: int = 3,
    warmup: int = 1,
    device: str = "auto",
    dtype: str = "auto",
    export_dir: Path | None = None,
    out: Path = Path("fastinv-bench"),
    timing_only: bool = False,
    fast: bool | None = None,
) -> BenchPlan:
    """Parse and check every option (the CLI's strings) into a BenchPlan; one-line FastinvError otherwise."""
    if repeats < 1:
        raise FastinvError(f"--repeats must be at least 1, got {repeats}")
    if warmup < 0:
        raise FastinvError(f"--warmup must be at least 0, got {warmup}")
    if model is not None and not model.is_dir():
        raise FastinvError(f"model folder not found: {model}")
    if solver is not None and not solver.is_dir():
        raise FastinvError(f"solver folder not found: {solver}")
    torch_device = resolve_device(device)
    precision = precision_name(resolve_dtype(dtype, torch_device))
    return BenchPlan(
        model=model,
        solver=solver,
        methods=parse_methods(methods),
        backends=parse_backends(backends, str(torch_device), precision, export_dir),
        steps=parse_steps(steps),
        images=list_images(images, max_images),
        image_source=images,
        repeats=repeats,
        warmup=warmup,
        device=str(torch_device),
        precision=precision,
        export_dir=export_dir,
        out=out,
        timing_only=timing_only,
        fast=fast,
    )
