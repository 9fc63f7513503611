"""`fastinv invert` / `fastinv info` end to end on tiny folders, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from fastinv.cli import main
from fastinv.files import load_latents
from fastinv.outputs import read_output_set


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    astronaut = folder / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((72, 64), Image.Resampling.LANCZOS).save(astronaut)
    coffee = folder / "coffee.jpg"
    Image.fromarray(data.coffee()).resize((64, 48), Image.Resampling.LANCZOS).save(coffee)
    return [astronaut, coffee]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.parametrize("fixture", ["tiny_sd3_dir", "tiny_flux_dir", "tiny_flux_dev_dir"])
def test_invert_writes_outputs(
    fixture: str, photos: list[Path], tmp_path: Path, request: pytest.FixtureRequest, capsys
) -> None:
    model_dir = request.getfixturevalue(fixture)
    out = tmp_path / "out"
    code, stdout, _ = run(
        [
            "invert",
            *map(str, photos),
            "--model",
            str(model_dir),
            "--steps",
            "4",
            "--prompt",
            "a photo",
            "--guidance",
            "2.0",
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0
    assert "PSNR dB" in stdout and "astronaut.png" in stdout
    for photo in photos:
        record = json.loads((out / f"{photo.stem}.metrics.json").read_text())
        # the default method, auto, is warm_fixed_point on a folder without a solver: N + 1 NFE
        assert record["nfe_inversion"] == 5 and record["nfe_reconstruction"] == 4
        assert np.isfinite(record["metrics"]["psnr"]) and -1 <= record["metrics"]["ssim"] <= 1
        metrics = record["metrics"]
        # PSNR on [0, 1] pixels is 10·log10(4 / MSE on [-1, 1] pixels): the record's figures agree
        assert metrics["psnr"] == pytest.approx(10 * math.log10(4 / metrics["mse_pixel"]), rel=1e-4)
        assert math.isfinite(metrics["mse_latent"]) and metrics["mse_latent"] > 0
        z_T, meta = load_latents(out / f"{photo.stem}.zT.safetensors")
        assert meta["method"] == "warm_fixed_point" and meta["prompt"] == "a photo"
        assert len(meta["sigmas"]) == 5
        width, height = meta["size"]
        assert Image.open(out / f"{photo.stem}.recon.png").size == (width, height)
        assert z_T.ndim == 4 and z_T.shape[0] == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_invert_pixel_model_with_notes(
    tiny_sd3_pixel_dir: Path, photos: list[Path], tmp_path: Path, capsys
) -> None:
    big = tmp_path / "big.png"
    Image.fromarray(data.chelsea()).save(big)
    code, stdout, _ = run(
        [
            "invert",
            str(big),
            "--model",
            str(tiny_sd3_pixel_dir),
            "--steps",
            "2",
            "--out",
            str(tmp_path / "o"),
            "--embeddings",
            str(_empty_prompt_file(tiny_sd3_pixel_dir, tmp_path)),
        ],
        capsys,
    )
    assert code == 0 and "pixel-space model" in stdout and "resized" in stdout


def _empty_prompt_file(model_dir: Path, tmp_path: Path) -> Path:
    import torch

    from fastinv.models import load_model
    from fastinv.models.prompts import save_prompt_embeddings

    config = load_model(model_dir, embeddings=None).velocity.network.config
    embeds = torch.zeros(1, 4, config.joint_attention_dim)
    return save_prompt_embeddings(
        tmp_path / "p.safetensors", {"": (embeds, torch.zeros(1, config.pooled_projection_dim))}
    )


def test_invert_with_method_options(tiny_sd3_dir: Path, photos: list[Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["invert", str(photos[0]), "--model", str(tiny_sd3_dir), "--steps", "2", "--out", str(out)]
    code, stdout, _ = run(
        [*args, "--method", "renoise", "--set", "iterations=2", "--set", "average_last=1"], capsys
    )
    assert code == 0 and "renoise" in stdout
    record = json.loads((out / f"{photos[0].stem}.metrics.json").read_text())
    assert record["method_options"] == {"iterations": 2, "average_last": 1} and record["nfe_inversion"] == 6


def test_info(capsys) -> None:
    code, stdout, _ = run(["info"], capsys)
    assert code == 0 and "euler" in stdout
    assert all(package in stdout for package in ("torch", "diffusers", "accelerate"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "steps must be at least 1"),
        (["--method", "magic"], "unknown method 'magic'"),
        (["--method", "euler", "--set", "iterations=3"], "method 'euler' has no option iterations"),
        (["--set", "iterations=3"], "--set needs an explicit --method"),
        (["--device", "cuda"], "sees no CUDA GPU"),
        (["--dtype", "fp8"], "unknown dtype 'fp8'"),
        (["--model", "/nonexistent/model"], "model folder not found: /nonexistent/model"),
        (["EXTRA:missing.png"], "image not found: missing.png"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    args: list[str], message: str, tiny_sd3_dir: Path, photos: list[Path], tmp_path: Path, capsys
) -> None:
    images = [str(photos[0])]
    options = ["--model", str(tiny_sd3_dir), "--out", str(tmp_path / "out"), "--steps", "2"]
    for arg in args:
        if arg.startswith("EXTRA:"):
            name = arg.removeprefix("EXTRA:")
            images.append(name if name.endswith(".png") else str(tmp_path / f"{name}.png"))
        else:
            options.append(arg)
    code, _, stderr = run(["invert", *images, *options], capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("name", "message"), [("garbage", "cannot read image"), ("tiny", "needs at least")])
def test_an_unreadable_image_fails_alone(
    name: str, message: str, tiny_sd3_dir: Path, photos: list[Path], tmp_path: Path, capsys
) -> None:
    """Reported in the manifest and in one error line at the end (exit 2); the other image is written."""
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    Image.new("RGB", (8, 8)).save(tmp_path / "tiny.png")
    out = tmp_path / "out"
    images = [str(photos[0]), str(tmp_path / f"{name}.png")]
    code, _, stderr = run(
        ["invert", *images, "--model", str(tiny_sd3_dir), "--out", str(out), "--steps", "2"], capsys
    )
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: 1 of 2 images failed")
    assert message in lines[0]
    assert read_output_set(out, photos[0].stem) is not None and read_output_set(out, name) is None


def test_python_m_fastinv_entry_point() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "fastinv", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and "invert" in done.stdout
