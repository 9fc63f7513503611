"""`fastinv export` and `fastinv invert --backend torch|ort|trt` end to end, and the API behind them.

The exports (`fastinv export --check`) of the tiny SD3 with a tiny DeepInv solver and of the shipped model
are the session's (conftest: tiny_sd3_export, shipped_export), shared with the other test modules.
TensorRT is absent here: its CLI paths are checked for their one-line errors (the TensorRT backend itself
runs against a fake tensorrt in test_export_trt.py).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from skimage import data

pytest.importorskip("onnxruntime")

from cli_runner import cli
from fastinv.export import onnx as export_onnx

import fastinv
from fastinv.files import load_latents
from fastinv.runtime.ort import OrtSolver, OrtVelocity

FP32 = export_onnx.TOLERANCE["fp32"]


def rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((64, 64), Image.Resampling.LANCZOS).save(path)
    return path


@pytest.fixture(scope="module")
def sd3_export(tiny_sd3_export: tuple[Path, str]) -> tuple[Path, str]:
    """(folder, stdout) of `fastinv export --check` of the tiny SD3 and its solver (the session's)."""
    return tiny_sd3_export


@pytest.fixture(scope="module")
def solver_dir(tiny_solver_dir: Path) -> Path:
    return tiny_solver_dir


def test_export_check_tiny_sd3_with_solver(sd3_export: tuple[Path, str]) -> None:
    out, stdout = sd3_export
    print(stdout)
    assert sorted(p.name for p in out.iterdir()) == ["solver.fp32.onnx", "velocity.fp32.onnx"]
    for name in ("velocity.fp32.onnx [fp32]", "solver.fp32.onnx [fp32]"):
        line = next(line for line in stdout.splitlines() if line.startswith(name))
        assert "max|ort−torch|/max|torch|" in line and line.endswith("ok")
    assert "exported 2 graph(s) in" in stdout and "peak memory" in stdout


def test_export_shipped_model_then_invert_ort_matches_torch(
    shipped_export: tuple[Path, str], tmp_path: Path
) -> None:
    """The shipped model: export with --check (the session's export), then the same photo through `invert`
    on torch and on ORT (8 steps, CFG 2 → batch-2 calls): z_T and the metrics agree to the fp32 parity
    tolerance."""
    export_dir, stdout = shipped_export
    print(stdout)
    lines = [line for line in stdout.splitlines() if line.startswith("velocity.fp32.onnx [fp32] batch 1")]
    assert lines and all(line.endswith("ok") for line in lines)
    runs = {}
    for backend in ("torch", "ort"):
        out = tmp_path / backend
        args = [
            "invert",
            "--example",
            "--steps",
            "8",
            "--guidance",
            "2",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
        extra = ["--backend", backend] + (["--export-dir", str(export_dir)] if backend == "ort" else [])
        code, stdout, stderr = cli([*args, *extra])
        assert code == 0, stderr
        z_T, _ = load_latents(out / "coffee.zT.safetensors")
        runs[backend] = (z_T, json.loads((out / "coffee.metrics.json").read_text()))
    (torch_z, torch_record), (ort_z, ort_record) = runs["torch"], runs["ort"]
    error = rel(ort_z, torch_z)
    print(f"shipped model, euler 8 steps, CFG 2: z_T max rel err ort vs torch {error:.2e}")
    print({k: (torch_record["metrics"][k], ort_record["metrics"][k]) for k in ("psnr", "ssim", "mse_latent")})
    assert error <= FP32 and (torch_record["backend"], ort_record["backend"]) == ("torch", "ort")
    assert abs(ort_record["metrics"]["psnr"] - torch_record["metrics"]["psnr"]) < 1e-3
    assert ort_record["nfe_inversion"] == torch_record["nfe_inversion"] == 8


def test_deepinv_runs_its_solver_on_ort_from_the_export_dir(
    sd3_export: tuple[Path, str], tiny_sd3_dir: Path, solver_dir: Path, photo: Path, tmp_path: Path
) -> None:
    """With --backend ort, the solver graph in export-dir is used (no solver folder needed) and deepinv's
    z_T matches the torch denoiser + torch solver."""
    export_dir, _ = sd3_export
    torch_run = fastinv.load(tiny_sd3_dir, device="cpu", solver=solver_dir)
    ort_run = fastinv.load(tiny_sd3_dir, device="cpu", backend="ort", export_dir=export_dir)
    assert isinstance(ort_run.model.velocity, OrtVelocity) and ort_run.solver_dir is None
    expected = torch_run.invert(photo, method="deepinv", steps=3)
    actual = ort_run.invert(photo, method="deepinv", steps=3)
    assert isinstance(ort_run.solver, OrtSolver) and actual.options["solver"] == str(
        export_dir / "solver.fp32.onnx"
    )
    assert rel(actual.z_T, expected.z_T) <= FP32

    out = tmp_path / "out"
    args = ["invert", str(photo), "--model", str(tiny_sd3_dir), "--method", "deepinv", "--steps", "2"]
    args += ["--backend", "ort", "--export-dir", str(export_dir)]
    code, stdout, stderr = cli([*args, "--out", str(out)])
    assert code == 0, stderr
    record = json.loads((out / "astronaut.metrics.json").read_text())
    assert record["backend"] == "ort" and record["method_options"]["solver"].endswith("solver.fp32.onnx")
    assert "(ort backend, eager" in stdout


def test_export_dir_errors(
    sd3_export: tuple[Path, str],
    tiny_sd3_dir: Path,
    tiny_flux_dir: Path,
    photo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Missing, mismatched and stale export folders: exit 2 and one line naming the problem."""
    export_dir, _ = sd3_export
    empty = tmp_path / "empty"
    empty.mkdir()
    tiny, ort = ["--model", str(tiny_sd3_dir)], ["--backend", "ort", "--export-dir"]
    cases = {
        ("--backend", "ort"): "the ort backend needs --export-dir",
        ("--export-dir", str(export_dir)): "--export-dir is for the ort and trt backends",
        ("--backend", "gpu", "--export-dir", str(export_dir)): "unknown backend 'gpu'",
        ("--backend", "ort", "--export-dir", str(tmp_path / "absent")): "export folder not found",
        (
            *tiny,
            "--backend",
            "ort",
            "--export-dir",
            str(empty),
        ): r"no velocity.fp32.onnx in .* \(it holds no velocity",
        (*tiny, "--dtype", "fp16", "--backend", "ort", "--export-dir", str(export_dir)): (
            r"no velocity.fp16.onnx in .* \(it holds velocity.fp32.onnx\): export it with "
            r"`fastinv export --precision fp16"
        ),
        ("--model", str(tiny_flux_dir), "--backend", "ort", "--export-dir", str(export_dir)): (
            "was exported for a sd3 model, not flux"
        ),
        (*ort, str(export_dir)): "exported for another model: config differs in",
        ("--backend", "trt", "--export-dir", str(export_dir)): "the trt backend needs TensorRT",
    }
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as if neither TensorRT library were installed
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    for extra, message in cases.items():
        code, _, stderr = cli(["invert", str(photo), "--steps", "1", "--device", "cpu", *extra])
        assert code == 2, (extra, stderr)
        assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
        assert re.search(message, stderr), (message, stderr)


def test_export_errors(
    tiny_sd3_pixel_dir: Path,
    tiny_sd3_dir: Path,
    tiny_solver_dir: Path,
    memoised_export: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bad options and a missing TensorRT are refused before any work; a failed --check exits 2 (checking
    the tiny SD3's graphs, which memoised_export copies from the session's export of the same model)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    out = tmp_path / "out"
    cases = {
        ("--format", "trt"): "the trt backend needs TensorRT (datacenter GPUs: pip install tensorrt) or",
        ("--format", "tflite"): "unknown format 'tflite'",
        ("--precision", "fp8"): "unknown precision 'fp8'",
        ("--batch", "4:2:1"): "--batch '4:2:1': give MIN:OPT:MAX",
    }
    for extra, message in cases.items():
        code, _, stderr = cli(["export", "--model", str(tiny_sd3_pixel_dir), "--out", str(out), *extra])
        assert code == 2 and message in stderr and stderr.count("\n") == 1, stderr
    assert not out.exists()  # refused before any work

    monkeypatch.setitem(export_onnx.TOLERANCE, "fp32", -1.0)  # any error is too large
    args = ["export", "--model", str(tiny_sd3_dir), "--solver", str(tiny_solver_dir), "--out", str(out)]
    code, _, stderr = cli([*args, "--check"])
    assert (
        code == 2 and "error: parity check failed: velocity.fp32.onnx [fp32]" in stderr and "FAILED" in stderr
    )
    assert memoised_export == [out]


def test_info_lists_the_backends_that_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    code, stdout, _ = cli(["info"])
    row = next(line for line in stdout.splitlines() if "backends" in line)
    assert code == 0 and "torch, ort" in row and "trt" not in row


def test_one_ort_inverter_serves_eight_threads(
    sd3_export: tuple[Path, str], tiny_sd3_dir: Path, photo: Path
) -> None:
    """Threads share one Inverter on the ort backend (denoiser and solver graphs): same results as in turn."""
    from concurrent.futures import ThreadPoolExecutor

    folder, _ = sd3_export
    inv = fastinv.load(tiny_sd3_dir, device="cpu", backend="ort", export_dir=folder)
    requests = [(("euler", "deepinv")[i % 2], f"prompt {i % 3}") for i in range(16)]

    def run(request: tuple[str, str]) -> torch.Tensor:
        method, prompt = request
        return inv.invert(photo, prompt=prompt, method=method, steps=2).z_T

    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(run, requests))
    for together, alone in zip(threaded, map(run, requests), strict=True):
        assert torch.equal(together, alone)


def test_cpu_sessions_do_not_spin(sd3_export: tuple[Path, str]) -> None:
    """Two sessions alternate on CPU (denoiser, solver): idle threads must sleep, not spin on the cores."""
    from fastinv.runtime.ort import OrtGraph

    folder, _ = sd3_export
    graph = OrtGraph(folder / "velocity.fp32.onnx", kind="velocity", precision="fp32")
    options = graph.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
