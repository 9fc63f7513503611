"""`fastinv reconstruct ZT.safetensors`: the image regenerated from a saved z_T and its metadata alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import cli
from PIL import Image
from safetensors.torch import save_file

from fastinv.files import load_latents, save_latents

STEM = "photo"
DROP = object()
"""A metadata change that removes the key."""


def _invert(folder: Path, out: Path, *extra: str) -> Path:
    """`fastinv invert` of a fixed 64×64 photo with `folder`'s model into `out`; returns the z_T file."""
    image = out.parent / f"{STEM}.png"
    pixels = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(image)
    args = ["invert", str(image), "--model", str(folder), "--method", "euler", "--steps", "3", *extra]
    code, _, stderr = cli([*args, "--out", str(out)])
    assert code == 0, stderr
    return out / f"{STEM}.zT.safetensors"


@pytest.fixture(scope="module")
def sd3_latents(tiny_sd3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The z_T file of a tiny-SD3 inversion with a prompt and CFG (its set of files beside it)."""
    out = tmp_path_factory.mktemp("sd3_inverted") / "out"
    return _invert(tiny_sd3_dir, out, "--prompt", "a red cat", "--guidance", "2")


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _reconstruct(latents: Path, out: Path, *extra: str) -> tuple[int, str]:
    """(exit code, stderr) of `fastinv reconstruct LATENTS --out OUT`."""
    code, _, stderr = cli(["reconstruct", str(latents), "--out", str(out), *extra])
    return code, stderr


def _check_equals_invert(latents: Path, out: Path) -> dict:
    """Reconstruct `latents` into `out`: its PNG equals the invert's .recon.png pixel for pixel, and its
    record names the z_T file's run; returns the record."""
    code, stderr = _reconstruct(latents, out)
    assert code == 0, stderr
    inverted = latents.parent
    assert np.array_equal(_pixels(out / f"{STEM}.reconstruct.png"), _pixels(inverted / f"{STEM}.recon.png"))
    record = json.loads((out / f"{STEM}.reconstruct.json").read_text())
    invert_record = json.loads((inverted / f"{STEM}.metrics.json").read_text())
    assert record["latents_run_id"] == invert_record["run_id"]
    assert record["nfe_reconstruction"] == invert_record["nfe_reconstruction"] == 3
    with Image.open(out / f"{STEM}.reconstruct.png") as image:
        assert image.text["run_id"] == record["run_id"] != record["latents_run_id"]
    return record


def test_equals_what_invert_reconstructs(sd3_latents: Path, tmp_path: Path) -> None:
    record = _check_equals_invert(sd3_latents, tmp_path / "recon")
    assert (record["prompt"], record["guidance"], record["steps"]) == ("a red cat", 2.0, 3)


def test_flux_dev_keeps_the_embedded_guidance(tiny_flux_dev_dir: Path, tmp_path: Path) -> None:
    latents = _invert(tiny_flux_dev_dir, tmp_path / "out", "--embedded-guidance", "2.5")
    record = _check_equals_invert(latents, tmp_path / "recon")
    assert record["embedded_guidance"] == 2.5


def test_model_override(
    sd3_latents: Path, tiny_sd3_dir: Path, tiny_sd3_pixel_dir: Path, tmp_path: Path
) -> None:
    """--model: the model where it is now; a model the z_T does not fit is a one-line error."""
    moved = tmp_path / "moved.zT.safetensors"
    z_T, metadata = load_latents(sd3_latents)
    save_latents(moved, z_T, metadata | {"model": str(tmp_path / "gone")})
    code, stderr = _reconstruct(moved, tmp_path / "recon")
    assert code == 2 and "model folder not found" in stderr and "pass --model DIR" in stderr
    assert _reconstruct(moved, tmp_path / "recon", "--model", str(tiny_sd3_dir))[0] == 0
    assert np.array_equal(
        _pixels(tmp_path / "recon" / "moved.reconstruct.png"),
        _pixels(sd3_latents.parent / f"{STEM}.recon.png"),
    )
    code, stderr = _reconstruct(sd3_latents, tmp_path / "pixel", "--model", str(tiny_sd3_pixel_dir))
    assert code == 2 and "does not fit" in stderr, stderr


def test_a_relative_model_is_found_from_another_folder(
    sd3_latents: Path, tiny_sd3_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The metadata records the working folder of the invert, where a relative model path starts: the z_T
    reconstructs, without --model, from any folder."""
    assert load_latents(sd3_latents)[1]["working_folder"] == str(Path.cwd())  # where _invert ran
    relative = tmp_path / "relative.zT.safetensors"
    z_T, metadata = load_latents(sd3_latents)
    where = {"model": tiny_sd3_dir.name, "working_folder": str(tiny_sd3_dir.parent)}
    save_latents(relative, z_T, metadata | where)
    monkeypatch.chdir(tmp_path)
    assert _reconstruct(relative, tmp_path / "recon")[0] == 0
    assert np.array_equal(
        _pixels(tmp_path / "recon" / "relative.reconstruct.png"),
        _pixels(sd3_latents.parent / f"{STEM}.recon.png"),
    )


def _garbled(good: Path, folder: Path) -> dict[str, Path]:
    """z_T files that are bad in one way each, made from `good`."""
    z_T, metadata = load_latents(good)
    files: dict[str, Path] = {"z_T file not found": folder / "missing.zT.safetensors"}
    text = folder / "text.zT.safetensors"
    text.write_text("not a safetensors file")
    files["not a valid safetensors file"] = text
    png = folder / "image.png"
    png.write_bytes(good.read_bytes())
    files["is not a .safetensors file"] = png
    changes = {
        "metadata has no sigmas": {"sigmas": DROP},
        "steps must be an integer": {"steps": "three"},
        "guidance must be a finite number >= 0": {"guidance": -1.0},
        "prompt must be a string": {"prompt": 7},
        "sigmas must be a list of steps + 1 = 4 numbers": {"sigmas": metadata["sigmas"][:-1]},
        "sigmas must decrease strictly": {"sigmas": metadata["sigmas"][::-1]},
        "model must be a folder path": {"model": ["x"]},
        "working_folder must be an absolute folder path": {"working_folder": "photos"},
    }
    for reason, change in changes.items():
        values = {key: value for key, value in (metadata | change).items() if value is not DROP}
        files[reason] = folder / f"{len(files)}.zT.safetensors"
        save_latents(files[reason], z_T, values)
    header = {key: json.dumps(value) for key, value in metadata.items()} | {"sigmas": "[1.0, 0.5"}
    files["sigmas must be a list"] = folder / "unparsed.zT.safetensors"  # not JSON: read as a string
    save_file({"z_T": z_T}, str(files["sigmas must be a list"]), metadata=header)
    for reason, tensor in {
        "z_T holds NaN or inf": z_T * float("nan"),
        "z_T must be [1, C, h, w]": z_T[0],
    }.items():
        files[reason] = folder / f"{len(files)}.zT.safetensors"
        save_latents(files[reason], tensor, metadata)
    files["no 'z_T' tensor"] = folder / "other.safetensors"
    save_file({"weights": torch.zeros(2)}, str(files["no 'z_T' tensor"]))
    return files


def test_bad_input_is_one_error_line(sd3_latents: Path, tmp_path: Path) -> None:
    for reason, path in _garbled(sd3_latents, tmp_path).items():
        code, stderr = _reconstruct(path, tmp_path / "recon")
        assert code == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1, (reason, stderr)
        assert reason in stderr, (reason, stderr)
    assert not (tmp_path / "recon").exists()  # nothing written for bad input
    (tmp_path / "file").write_text("")
    code, stderr = _reconstruct(sd3_latents, tmp_path / "file")
    assert code == 2 and "is a file, not a folder" in stderr
