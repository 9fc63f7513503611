"""The trained model shipped inside the package: loads with no arguments, inverts the shipped photo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import fastinv
from fastinv.cli import main
from fastinv.models import DEFAULT_MODEL, EXAMPLE_IMAGE
from fastinv.models.codecs import IdentityCodec
from fastinv.models.minilm import SentenceEncoderPrompts


@pytest.fixture(scope="module")
def inverter() -> fastinv.Inverter:
    return fastinv.load(device="cpu")


def test_shipped_folder_is_small_and_safetensors() -> None:
    weights = sorted(DEFAULT_MODEL.rglob("*.safetensors"))
    assert [w.relative_to(DEFAULT_MODEL).as_posix() for w in weights] == [
        "solver/diffusion_pytorch_model.safetensors",
        "transformer/diffusion_pytorch_model.safetensors",
    ]
    assert sum(w.stat().st_size for w in weights) <= 50 * 2**20
    assert not list(DEFAULT_MODEL.rglob("*.bin")) and not list(DEFAULT_MODEL.rglob("*.pt"))
    assert (DEFAULT_MODEL / "README.md").is_file()
    assert EXAMPLE_IMAGE.is_file()


def test_load_without_arguments(inverter: fastinv.Inverter) -> None:
    model = inverter.model
    assert model.family == "sd3" and model.resolution == (64, 64)
    assert isinstance(model.codec, IdentityCodec) and isinstance(model.prompt_encoder, SentenceEncoderPrompts)
    assert Path(model.name) == DEFAULT_MODEL


def test_trained_model_inverts_better_with_more_steps(inverter: fastinv.Inverter) -> None:
    """On the trained model (not a random one), Euler round-trip PSNR rises with the step count."""
    psnrs = []
    for steps in (5, 20):
        res = inverter.invert(EXAMPLE_IMAGE, steps=steps)
        psnrs.append(inverter.evaluate(res, inverter.reconstruct(res))["psnr"])
    assert psnrs[1] > psnrs[0] + 3, psnrs


def test_shipped_solver_beats_training_free_methods_on_the_held_out_example(
    inverter: fastinv.Inverter,
) -> None:
    """The trained DeepInv solver (the default for --method deepinv) on a photo it never saw, 10 steps: far
    above Euler (same NFE) and above warm_fixed_point (one more NFE; what the untrained solver computes)."""
    assert inverter.solver_dir == DEFAULT_MODEL / "solver"
    scores = {}
    for method in ("euler", "warm_fixed_point", "deepinv"):
        res = inverter.invert(EXAMPLE_IMAGE, method=method, steps=10)
        assert res.result.nfe == (11 if method == "warm_fixed_point" else 10)
        scores[method] = inverter.evaluate(res, inverter.reconstruct(res))["psnr"]
    assert scores["deepinv"] > 30 and scores["deepinv"] > scores["warm_fixed_point"] + 5, scores
    assert scores["deepinv"] > scores["euler"] + 10, scores


def test_cfg_changes_samples(inverter: fastinv.Inverter) -> None:
    model = inverter.model
    z = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.7])
    plain = model.velocity(z, sigma, model.conditioning("a ginger cat"))
    guided = model.velocity(z, sigma, model.conditioning("a ginger cat", guidance_scale=4.0))
    assert not torch.allclose(plain, guided)


def test_cli_with_no_model_and_the_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["invert", "--example", "--steps", "3", "--out", str(tmp_path), "--device", "cpu"])
        raise SystemExit(0)
    assert exit_info.value.code == 0
    record = json.loads((tmp_path / "coffee.metrics.json").read_text())
    assert record["size"] == [64, 64] and record["model"] == str(DEFAULT_MODEL)
    assert any("resized" in note for note in record["image_notes"])
    assert "coffee.jpg" in capsys.readouterr().out
