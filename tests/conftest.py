"""Shared fixtures, written once per test session: tiny random-weight SD3 / FLUX folders, the tiny DeepInv
solver, and the ONNX exports (`fastinv export --check`) of the tiny SD3 with that solver and of the shipped
model. Tracing a graph dominates the cost of a test that needs one, so every such test reads these; the
folders are shared: read them, or copy them before changing anything.

Under pytest-xdist (`-n 2 --dist loadfile`, the README's test line, so a file's module fixtures run once)
these artefacts are still built once per run: the first worker to ask builds one under a file lock in the
directory the workers share, the others wait and read it; each worker runs torch on one thread, so two
workers fill the two cores without oversubscribing.

The Hugging Face offline switches are set before anything imports ``huggingface_hub`` (it reads them at
import time), so no test can reach the network.
"""

import json
import os
import shutil
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import pytest
from filelock import FileLock

WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER is not None:
    import torch

    torch.set_num_threads(1)


SLOW_FILES = (
    "test_serve.py",  # 76–103 s on 2 cores (2026-12-03): Ray Serve with two model replicas
    "test_export_onnx.py",  # 136–138 s: builds the tiny SD3, tiny FLUX and shipped exports the others read
    "test_solver_training.py",  # 25–50 s: torchrun
    "test_ray_data.py",  # 35 s
    "test_hardening.py",  # 30–35 s
    "test_fast_path.py",  # 23–28 s: an inductor compile
    "test_kernels.py",  # 19 s, the benchmark's smoke run in-process
    "test_tensorrt_rtx.py",  # 11–20 s
    "test_bench.py",  # 13–16 s
)
"""The files that take longest: the two longest start together, one per worker (the shared exports early,
on the other worker than the service), then the rest, longest first. Under xdist (`--dist loadfile`) a
worker takes the next file when it is nearly done with its own, so both workers finish together."""


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # xdist's own order (most tests first) would undo SLOW_FILES


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """SLOW_FILES first, in their order; the other files after them, as collected (a stable sort keeps
    each file's own order)."""
    rank = {name: index for index, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))


def make_tiny_sd3(folder: Path, **options: bool) -> None:
    """`tiny_models.make_tiny_sd3`, imported when a fixture first builds a folder: xdist's controller, which
    loads this file too but runs no test, then starts its workers without importing torch or diffusers."""
    from tiny_models import make_tiny_sd3 as make

    make(folder, **options)


def make_tiny_flux(folder: Path, **options: bool) -> None:
    """`tiny_models.make_tiny_flux`, imported on first use (see make_tiny_sd3)."""
    from tiny_models import make_tiny_flux as make

    make(folder, **options)


def _shared(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], str]) -> tuple[Path, str]:
    """(folder, text) of `build(folder)`, which fills the empty `folder` and returns a text to keep: once
    per session, or under xdist once per run for all workers."""
    if WORKER is None:
        folder = factory.mktemp(name)
        return folder, build(folder)
    root = factory.getbasetemp().parent  # the workers' basetemps are its children
    folder, record = root / name, root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not record.exists():
            if folder.exists():  # a worker that failed half-way
                shutil.rmtree(folder)
            folder.mkdir()
            record.write_text(json.dumps(build(folder)))
    return folder, json.loads(record.read_text())


def _folder(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """The folder `build(folder)` fills, shared as `_shared` says."""

    def fill(folder: Path) -> str:
        build(folder)
        return ""

    return _shared(factory, name, fill)[0]


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Full SD3 pipeline folder: transformer, VAE, scheduler, 2x CLIP + T5 with their tokenizers."""
    return _folder(tmp_path_factory, "tiny_sd3", make_tiny_sd3)


@pytest.fixture(scope="session")
def tiny_sd3_transformer_only_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SD3 folder with transformer, VAE and scheduler; the text components are ``null`` entries."""
    return _folder(
        tmp_path_factory, "tiny_sd3_transformer_only", lambda f: make_tiny_sd3(f, text_encoders=False)
    )


@pytest.fixture(scope="session")
def tiny_sd3_pixel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pixel-space SD3 folder: 3-channel transformer and scheduler only (no VAE, no text components)."""
    return _folder(
        tmp_path_factory,
        "tiny_sd3_pixel",
        lambda f: make_tiny_sd3(f, text_encoders=False, pixel_space=True),
    )


@pytest.fixture(scope="session")
def tiny_sd35_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SD3.5-medium-like folder: the tiny SD3 with ``qk_norm="rms_norm"`` and one dual-attention layer."""
    return _folder(tmp_path_factory, "tiny_sd35", lambda f: make_tiny_sd3(f, sd35=True))


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FLUX.1-schnell-like folder (no guidance embedding) with CLIP + T5."""
    return _folder(tmp_path_factory, "tiny_flux", make_tiny_flux)


@pytest.fixture(scope="session")
def tiny_flux_dev_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FLUX.1-dev-like folder (``guidance_embeds=True``) with CLIP + T5."""
    return _folder(tmp_path_factory, "tiny_flux_dev", lambda f: make_tiny_flux(f, guidance_embeds=True))


@pytest.fixture(scope="session")
def tiny_solver_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`test_solver.tiny_solver()` (trained-looking, the tiny SD3's widths) saved as a solver folder."""
    from test_solver import tiny_solver

    return _folder(tmp_path_factory, "tiny_solver", lambda f: tiny_solver().save_pretrained(f))


def _export(factory: pytest.TempPathFactory, name: str, args: list[str]) -> tuple[Path, str]:
    pytest.importorskip("onnxruntime")
    from cli_runner import cli

    def export(out: Path) -> str:
        code, stdout, stderr = cli(["export", *args, "--out", str(out), "--check"])
        assert code == 0, stderr
        return stdout

    return _shared(factory, name, export)


@pytest.fixture(scope="session")
def tiny_sd3_export(
    tiny_sd3_dir: Path, tiny_solver_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """(folder, stdout) of `fastinv export --check` of the tiny SD3 and the tiny solver: velocity.fp32.onnx
    and solver.fp32.onnx. Shared: do not write into the folder."""
    args = ["--model", str(tiny_sd3_dir), "--solver", str(tiny_solver_dir)]
    return _export(tmp_path_factory, "export_tiny_sd3", args)


@pytest.fixture(scope="session")
def tiny_flux_export(tiny_flux_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(folder, stdout) of `fastinv export --check` of the tiny FLUX-schnell-like folder (no solver):
    velocity.fp32.onnx. Shared: do not write into the folder."""
    return _export(tmp_path_factory, "export_tiny_flux", ["--model", str(tiny_flux_dir)])


@pytest.fixture(scope="session")
def shipped_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(folder, stdout) of `fastinv export --check` of the shipped default model (its velocity graph and its
    solver's). Shared: do not write into the folder."""
    return _export(tmp_path_factory, "export_shipped", [])


@pytest.fixture
def memoised_export(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Memoised `fastinv.export.onnx.export_model` (what `fastinv export` and `fastinv bench` call): asked
    for what a session export wrote (tiny_sd3_export: the tiny SD3 with the tiny solver; tiny_flux_export:
    the tiny FLUX, no solver; same model source and weights, same solver weights, fp32), it copies those
    graphs (what tracing them again would write) to the folder it is given; asked for anything else, it
    exports. For tests of what happens around an export; the session exports themselves are the real ones.
    Returns the folders it was asked to write, one per call."""
    from fastinv.export import onnx as export_onnx

    from fastinv.models.base import FlowModel
    from fastinv.runtime.spec import read_spec
    from fastinv.runtime.weights import weights_digest
    from fastinv.solver.model import load_solver

    real, calls = export_onnx.export_model, []

    def cached(model: FlowModel, solver_dir: Path | None) -> Path | None:
        """The session export folder holding `model`'s graphs (and `solver_dir`'s), if one does."""
        weights = weights_digest(model.weights_dir) if model.weights_dir is not None else None
        solver = weights_digest(solver_dir) if solver_dir is not None else None
        for name in ("tiny_sd3_export", "tiny_flux_export"):
            folder = request.getfixturevalue(name)[0]  # session fixtures: built once, here on first use
            velocity = read_spec(folder / "velocity.fp32.onnx")
            exported = folder / "solver.fp32.onnx"
            if (model.name, weights) == (velocity.source, velocity.weights) and solver == (
                read_spec(exported).weights if exported.exists() else None
            ):
                return folder
        return None

    building: list[bool] = []  # set while `cached` builds a session export: that export is the real one

    def export_model(
        model: FlowModel, solver_dir: Path | None, out: Path, *, precision: str = "fp32"
    ) -> dict:
        if building:
            return real(model, solver_dir, out, precision=precision)
        out = Path(out)
        calls.append(out)
        building.append(True)
        try:
            folder = cached(model, solver_dir) if precision == "fp32" else None
        finally:
            building.pop()
        if folder is None:
            return real(model, solver_dir, out, precision=precision)
        out.mkdir(parents=True, exist_ok=True)
        written = {}
        for name in ("velocity.fp32.onnx", "solver.fp32.onnx"):
            if (folder / name).exists():
                shutil.copyfile(folder / name, out / name)
                written[out / name] = model if name.startswith("velocity") else load_solver(solver_dir)
        return written

    monkeypatch.setattr(export_onnx, "export_model", export_model)
    return calls
