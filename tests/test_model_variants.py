"""Model coverage: SD3.5 folders (qk_norm="rms_norm", dual-attention layers) load, sample as diffusers'
pipeline does and invert; variants are read from the configs; distilled few-step models (FLUX.1-schnell,
SD3.5-large-turbo) get a one-line warning; the schnell-like vs dev-like measurement runs.

Random weights: a tiny folder's reconstruction error says the code path works, not how a trained model
inverts (DESIGN §4)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_runner import cli
from diffusers import StableDiffusion3Pipeline
from diffusers.models.normalization import RMSNorm
from scripts import import_script

import fastinv
from fastinv.errors import FastinvError
from fastinv.methods import get_method
from fastinv.models.variants import detect_variant
from fastinv.sampling import sample_euler

DISTILLED = Path(__file__).resolve().parents[1] / "benchmarks" / "distilled.py"


def test_sd35_folder_loads_with_its_switches_and_samples_as_the_pipeline(tiny_sd35_dir: Path) -> None:
    """The loaded transformer has SD3.5's RMS q/k norms and the dual attention of layer 0 (diffusers owns the
    model; fastinv's adapter is SD3's); Euler sampling with CFG equals StableDiffusion3Pipeline's latents."""
    inv = fastinv.load(tiny_sd35_dir, device="cpu", dtype="fp32")
    blocks = inv.model.velocity.network.transformer_blocks
    assert isinstance(blocks[0].attn.norm_q, RMSNorm) and blocks[0].attn2 is not None
    assert blocks[1].attn2 is None
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd35_dir)
    noise = torch.randn(1, inv.model.codec.channels, 8, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = pipe(
            prompt="a cat",
            negative_prompt="",
            num_inference_steps=5,
            guidance_scale=3.0,
            latents=noise.clone(),
            height=64,
            width=96,
            output_type="latent",
        ).images
    sigmas = inv.model.sigmas(5, (8, 12))
    actual, _ = sample_euler(inv.model.velocity, noise, sigmas, inv.model.conditioning("a cat", 3.0))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_sd35_folder_inverts(tiny_sd35_dir: Path) -> None:
    """Euler and warm_fixed_point invert an SD3.5 folder and its reconstruction returns to x0 (closely: the
    weights are random); warm_fixed_point is the closer, as on every model."""
    model = fastinv.load(tiny_sd35_dir, device="cpu").model
    x0 = torch.randn(2, model.codec.channels, 8, 8, generator=torch.Generator().manual_seed(1))
    sigmas, cond = model.sigmas(10, (8, 8)), model.conditioning("a red house", inverting=True)
    errors = {}
    for method in ("euler", "warm_fixed_point"):
        z_T = get_method(method)(model.velocity, x0, sigmas, cond).z_T
        back, _ = sample_euler(model.velocity, z_T, sigmas, cond)
        errors[method] = float((back - x0).pow(2).mean())
    assert errors["warm_fixed_point"] < errors["euler"] < 1e-2, errors


def test_variants_from_configs() -> None:
    """SD3 / SD3.5-medium / SD3.5-large from qk_norm and dual_attention_layers, turbo only from the folder
    name; FLUX dev / schnell from guidance_embeds; wrong types are one-line errors."""
    sd35 = {"qk_norm": "rms_norm", "num_layers": 24, "in_channels": 16}
    assert detect_variant("sd3", {"qk_norm": None, "dual_attention_layers": []}).name == "sd3"
    medium = detect_variant("sd3", sd35 | {"dual_attention_layers": list(range(13))})
    assert medium.name == "sd3.5-medium" and "13 of 24 layers" in medium.evidence
    assert detect_variant("sd3", sd35, None, "stable-diffusion-3.5-large").distilled is None
    turbo = detect_variant("sd3", sd35, None, "stable-diffusion-3.5-large-turbo")
    assert turbo.name == "sd3.5-large-turbo" and turbo.distilled.startswith("warning: an SD3.5-large-turbo")
    assert detect_variant("sd3", {"in_channels": 3}).name == "pixel-sd3"
    assert detect_variant("flux", {"guidance_embeds": True}).name == "flux-dev"
    schnell = detect_variant(
        "flux", {"guidance_embeds": False}, {"shift": 1.0, "use_dynamic_shifting": False}
    )
    assert schnell.name == "flux-schnell" and "shift 1.0 without dynamic shifting" in schnell.evidence
    for family, config in [("flux", {"guidance_embeds": "yes"}), ("sd3", {"qk_norm": 1})]:
        with pytest.raises(FastinvError, match="has the wrong type"):
            detect_variant(family, config)
    with pytest.raises(FastinvError, match="dual_attention_layers must be a list of layer numbers"):
        detect_variant("sd3", {"qk_norm": "rms_norm", "dual_attention_layers": ["all"]})


def test_distilled_models_warn_in_one_line(
    tiny_flux_dir: Path, tiny_flux_dev_dir: Path, tiny_sd35_dir: Path
) -> None:
    """A FLUX.1-schnell-like folder (no guidance embedding) gets one warning note saying what to expect; the
    dev-like and SD3.5 folders get none; `fastinv info --model` names the variant and warns too."""
    notes = fastinv.load(tiny_flux_dir, device="cpu").model.notes
    warnings = [note for note in notes if note.startswith("warning:")]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "FLUX.1-schnell-like" in warnings[0] and "expect a worse reconstruction" in warnings[0]
    for folder in (tiny_flux_dev_dir, tiny_sd35_dir):
        assert not any(n.startswith("warning:") for n in fastinv.load(folder, device="cpu").model.notes)
    code, out, err = cli(["info", "--model", str(tiny_flux_dir)])
    assert code == 0, err
    assert "flux, flux-schnell" in out and warnings[0] in out
    code, out, _ = cli(["info", "--model", str(tiny_sd35_dir)])
    assert "sd3, sd3.5-medium (qk_norm=rms_norm, dual attention in 1 of 2 layers" in " ".join(out.split())


def test_schnell_like_against_dev_like_measurement(
    tiny_flux_dir: Path, tiny_flux_dev_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """benchmarks/distilled.py's measurement on the session folders at 4 steps: one finite row per folder
    and method, the schnell-like folder warned about and the dev-like not."""
    monkeypatch.syspath_prepend(str(DISTILLED.parents[1] / "tests"))
    script = import_script(DISTILLED, monkeypatch)
    rows = script.measure({"schnell-like": tiny_flux_dir, "dev-like": tiny_flux_dev_dir}, steps=(4,))
    assert [(r["folder"], r["method"]) for r in rows] == [
        (folder, method) for folder in ("schnell-like", "dev-like") for method in script.METHODS
    ]
    assert all(0 < r["mse_latent"] < 1 for r in rows)  # inexact, as every method is in 4 steps
    assert {r["folder"]: r["warned_distilled"] for r in rows} == {"schnell-like": True, "dev-like": False}
