"""The DeepInv solver networks (paper and warm-start designs), checkpoints, presets, the deepinv method."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from tiny_models import (
    FLUX_CLIP_DIM,
    FLUX_LATENT_CHANNELS,
    SD3_JOINT_DIM,
    SD3_LATENT_CHANNELS,
    SD3_POOLED_DIM,
)

import fastinv
from fastinv.conditioning import Conditioning
from fastinv.errors import FastinvError
from fastinv.methods import invert_deepinv
from fastinv.methods.base import in_window, sigma_batch, upward_steps
from fastinv.sampling import sample_euler
from fastinv.schedule import flow_sigmas
from fastinv.solver import PRESETS, DeepInvSolver, TorchSolver, WarmStartSolver, load_solver, preset

TINY = {
    "in_channels": SD3_LATENT_CHANNELS,
    "patch_size": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 8,
    "left_layers": 1,
    "right_layers": 1,
    "text_dim": SD3_JOINT_DIM,
    "pooled_dim": SD3_POOLED_DIM,
    "sample_size": 8,
}


def tiny_solver(seed: int = 0, trained: bool = True) -> DeepInvSolver:
    """A tiny solver; `trained` gives the zero-initialised output projection random weights (Δ ≠ 0)."""
    torch.manual_seed(seed)
    solver = DeepInvSolver(**TINY).eval()
    if trained:
        torch.nn.init.normal_(solver.proj_out.weight, std=0.05)
    return solver


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.fromarray(data.astronaut()).resize((64, 64), Image.Resampling.LANCZOS))


def _inputs(batch: int = 2, height: int = 8, width: int = 8) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    v, z, x0 = (torch.randn(batch, SD3_LATENT_CHANNELS, height, width, generator=g) for _ in range(3))
    text = torch.randn(batch, 5, SD3_JOINT_DIM, generator=g)
    pooled = torch.randn(batch, SD3_POOLED_DIM, generator=g)
    return v, z, x0, text, pooled, torch.full((batch,), 0.3), torch.full((batch,), 0.5)


def test_untrained_solver_returns_the_velocity() -> None:
    """The output projection starts at zero: ε̂ = v, so training starts from plain inversion."""
    v, *rest = _inputs()
    assert torch.equal(tiny_solver(trained=False)(v, *rest), v)


@pytest.mark.parametrize(("height", "width"), [(8, 8), (4, 12), (16, 6)])
def test_solver_works_at_any_resolution(height: int, width: int) -> None:
    """No layer depends on the training resolution (the reference's z0 Linear did)."""
    v, *rest = _inputs(height=height, width=width)
    out = tiny_solver()(v, *rest)
    assert out.shape == v.shape and torch.isfinite(out).all() and not torch.equal(out, v)


def test_solver_uses_every_input() -> None:
    solver, inputs = tiny_solver(), _inputs()
    reference = solver(*inputs)
    for index in range(1, len(inputs)):
        changed = list(inputs)
        changed[index] = inputs[index] + 0.5
        assert not torch.allclose(solver(*changed), reference), f"input {index} is ignored"


def test_solver_is_per_sample() -> None:
    """Batch entries do not mix: the batch result equals the per-sample results."""
    solver, inputs = tiny_solver(), _inputs(batch=3)
    batched = solver(*inputs)
    for b in range(3):
        single = solver(*(t[b : b + 1] for t in inputs))
        torch.testing.assert_close(batched[b : b + 1], single, rtol=1e-5, atol=1e-5)


def test_checkpoint_round_trip_is_safetensors_only(tmp_path: Path) -> None:
    solver = tiny_solver()
    solver.save_pretrained(tmp_path / "solver")
    assert sorted(p.name for p in (tmp_path / "solver").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    loaded = load_solver(tmp_path / "solver")
    v, z, x0, text, pooled, sigma, sigma_next = _inputs()
    text, pooled = text[:1].expand(2, -1, -1), pooled[:1].expand(2, -1)
    cond = Conditioning("", text[:1], pooled[:1])
    expected = solver(v, z, x0, text, pooled, sigma, sigma_next)
    torch.testing.assert_close(loaded(v, z, x0, sigma, sigma_next, cond), expected)
    assert not any(p.requires_grad for p in loaded.network.parameters())


def test_load_solver_errors(tmp_path: Path) -> None:
    with pytest.raises(FastinvError, match="solver folder not found"):
        load_solver(tmp_path / "missing")
    tiny_solver().save_pretrained(tmp_path / "pickled", safe_serialization=False)
    with pytest.raises(FastinvError, match="only safetensors"):
        load_solver(tmp_path / "pickled")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    with pytest.raises(FastinvError, match="is not a DeepInv solver"):
        load_solver(tmp_path / "other")


def test_presets() -> None:
    warm = {"default-model", "default-model-lean", "sd3-medium", "flux"}
    assert set(PRESETS) == warm | {"default-model-paper", "sd3-medium-ref", "sd3-medium-paper", "flux-paper"}
    assert {name for name, p in PRESETS.items() if p.network is WarmStartSolver} == warm
    ref = preset("sd3-medium-ref").config
    assert ref["num_attention_heads"] * ref["attention_head_dim"] == 1536
    assert (ref["left_layers"], ref["right_layers"], ref["patch_size"]) == (5, 5, 2)
    assert preset("flux-paper").config["pooled_dim"] == 768
    assert preset("flux", layers=4).config["layers"] == 4
    assert preset("default-model").config["patch_size"] == 4  # the shipped denoiser's patch
    lean = preset("default-model-lean").config
    assert (lean["patch_size"], lean["num_attention_heads"] * lean["attention_head_dim"]) == (8, 64)
    with pytest.raises(FastinvError, match="unknown solver preset"):
        preset("sdxl")
    with pytest.raises(FastinvError, match="unknown solver setting"):
        preset("flux", right_layers=3)
    with pytest.raises(FastinvError, match="solver setting layers must be a positive integer"):
        preset("flux", layers=0)


class LinearField:
    """v(z, σ) = a·z + σ·b: the implicit inversion step has a closed form."""

    def __init__(self, a: float, b: torch.Tensor) -> None:
        self.a, self.b, self.calls, self.batches = a, b, 0, []

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        self.calls += 1
        self.batches.append(z.shape[0])
        return self.a * z + sigma.view(-1, 1, 1, 1) * self.b


class OracleSolver:
    """Solves ε = v(z + h·ε, σ_next) exactly for the linear field: what a perfect solver would learn."""

    warm_start = False

    def __init__(self, field: LinearField) -> None:
        self.field = field

    def __call__(self, v, z, x0, sigma, sigma_next, cond, f_prev=None):
        h = (sigma_next - sigma).view(-1, 1, 1, 1)
        return (self.field.a * z + sigma_next.view(-1, 1, 1, 1) * self.field.b) / (1 - self.field.a * h)


COND = Conditioning(prompt="", prompt_embeds=torch.zeros(1, 1, 1))


def test_deepinv_with_the_exact_fixed_point_inverts_exactly() -> None:
    """If ε̂ is the fixed point, Euler sampling from z_T retraces the inversion back to x0."""
    field = LinearField(0.7, torch.randn(1, 2, 4, 4))
    x0 = torch.randn(2, 2, 4, 4)
    sigmas = flow_sigmas({"shift": 3.0}, 7)
    res = invert_deepinv(field, x0, sigmas, COND, solver=OracleSolver(field))
    torch.testing.assert_close(sample_euler(field, res.z_T, sigmas, COND)[0], x0, rtol=1e-5, atol=1e-5)
    euler = fastinv.methods.invert_euler(field, x0, sigmas, COND)
    assert (sample_euler(field, euler.z_T, sigmas, COND)[0] - x0).abs().max() > 1e-2
    assert res.nfe == 7 and field.batches[0] == 2


def test_blend_window_is_strict_at_both_ends() -> None:
    """The authors test start·T < k < end·T on the inversion step k = T − 1 − i: at T = 20 the window
    (0.05, 0.4) is k = 2..7, not 1..7."""
    assert [19 - i for i in range(20) if in_window(i, 20, (0.05, 0.4))] == [7, 6, 5, 4, 3, 2]
    assert [9 - i for i in range(10) if in_window(i, 10, (0.2, 0.6))] == [5, 4, 3]


def test_deepinv_update_rule_and_blend() -> None:
    """z_{k+1} = z_k + h·S(v(z_k, σ_next), ...) with the optional 0.9/0.1 blend inside its window."""
    field = LinearField(0.5, torch.randn(1, 2, 4, 4))

    class Solver:
        warm_start = False

        def __call__(self, v, z, x0, sigma, sigma_next, cond, f_prev=None):
            return 1.1 * v + 0.1 * x0 + sigma.view(-1, 1, 1, 1)

    solver = Solver()
    x0, sigmas = torch.randn(1, 2, 4, 4), flow_sigmas({"shift": 1.0}, 10)
    for blend in (0.0, 0.1):
        z, steps = x0.clone(), 10
        for i, sigma, sigma_next in upward_steps(sigmas):
            s, s_next = sigma_batch(sigma, z), sigma_batch(sigma_next, z)
            z_next = z + float(sigma_next - sigma) * solver(field(z, s_next, COND), z, x0, s, s_next, COND)
            k = steps - 1 - i  # inversion step k from sampling index i: 0 is the first step up from x0
            z = (1 - blend) * z_next + blend * z if 0.05 * steps < k < 0.4 * steps else z_next
        res = invert_deepinv(field, x0, sigmas, COND, solver=solver, blend=blend)
        torch.testing.assert_close(res.z_T, z)
    with pytest.raises(FastinvError, match="needs a trained solver"):
        invert_deepinv(field, x0, sigmas, COND)


def test_deepinv_on_sd3_with_cfg_calls_the_solver_once_per_step(
    tiny_sd3_dir: Path, photo: np.ndarray
) -> None:
    """CFG doubles the denoiser batch (one call of 2B); the solver sees B."""
    inv = fastinv.load(tiny_sd3_dir, device="cpu")
    network = tiny_solver()
    batches: list[int] = []
    network.register_forward_pre_hook(lambda _, args: batches.append(args[0].shape[0]))
    res = inv.invert(
        photo, prompt="a cat", guidance=3.0, method="deepinv", steps=4, solver=TorchSolver(network)
    )
    assert res.result.nfe == 4 and batches == [1] * 4
    assert torch.isfinite(res.z_T).all()


def test_inverter_uses_the_folders_solver_and_checks_it(
    tiny_sd3_dir: Path, photo: np.ndarray, tmp_path: Path
) -> None:
    inv = fastinv.load(tiny_sd3_dir, device="cpu")
    with pytest.raises(FastinvError, match="needs a trained solver"):
        inv.invert(photo, method="deepinv", steps=2)
    tiny_solver().save_pretrained(tmp_path / "good")
    res = fastinv.load(tiny_sd3_dir, device="cpu", solver=tmp_path / "good").invert(
        photo, method="deepinv", steps=2
    )
    assert res.options["solver"] == str(tmp_path / "good")
    DeepInvSolver(**(TINY | {"text_dim": 32})).save_pretrained(tmp_path / "wrong")
    with pytest.raises(FastinvError, match="does not fit this model: text width 32 vs 48"):
        inv.invert(photo, method="deepinv", steps=2, solver=tmp_path / "wrong")


def test_deepinv_on_flux_latents(tiny_flux_dir: Path, photo: np.ndarray) -> None:
    """FLUX's adapter keeps latents [B, C, H, W] outside itself: patch 2 in the solver is FLUX's packing."""
    solver = DeepInvSolver(**(TINY | {"in_channels": FLUX_LATENT_CHANNELS, "pooled_dim": FLUX_CLIP_DIM}))
    torch.nn.init.normal_(solver.proj_out.weight, std=0.05)
    inv = fastinv.load(tiny_flux_dir, device="cpu")
    res = inv.invert(photo, prompt="a dog", method="deepinv", steps=3, solver=TorchSolver(solver.eval()))
    euler = inv.invert(photo, prompt="a dog", method="euler", steps=3)
    assert res.result.nfe == 3 and res.z_T.shape == euler.z_T.shape
    assert torch.isfinite(res.z_T).all() and not torch.allclose(res.z_T, euler.z_T)


# --- the warm-start design --------------------------------------------------------------------------------

WARM_TINY = {
    "in_channels": SD3_LATENT_CHANNELS,
    "patch_size": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 8,
    "layers": 2,
    "sample_size": 8,
}


def tiny_warm_solver(seed: int = 0, trained: bool = True) -> WarmStartSolver:
    torch.manual_seed(seed)
    solver = WarmStartSolver(**WARM_TINY).eval()
    if trained:
        torch.nn.init.normal_(solver.proj_out.weight, std=0.05)
    return solver


def _warm_inputs(batch: int = 2, height: int = 8, width: int = 8) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(2)
    v, z, x0, f_prev = (torch.randn(batch, SD3_LATENT_CHANNELS, height, width, generator=g) for _ in range(4))
    return v, z, x0, f_prev, torch.full((batch,), 0.3), torch.full((batch,), 0.5)


def test_untrained_warm_solver_returns_the_velocity() -> None:
    v, *rest = _warm_inputs()
    torch.testing.assert_close(tiny_warm_solver(trained=False)(v, *rest), v, rtol=0, atol=0)


@pytest.mark.parametrize(("height", "width"), [(8, 8), (4, 12), (16, 6)])
def test_warm_solver_works_at_any_resolution(height: int, width: int) -> None:
    v, *rest = _warm_inputs(height=height, width=width)
    out = tiny_warm_solver()(v, *rest)
    assert out.shape == v.shape and torch.isfinite(out).all() and not torch.equal(out, v)


def test_warm_solver_uses_every_input_and_is_per_sample() -> None:
    solver, inputs = tiny_warm_solver(), _warm_inputs(batch=3)
    reference = solver(*inputs)
    for index in range(1, len(inputs)):
        changed = list(inputs)
        changed[index] = inputs[index] + 0.25
        assert not torch.allclose(solver(*changed), reference), f"input {index} is ignored"
    for b in range(3):
        single = solver(*(t[b : b + 1] for t in inputs))
        torch.testing.assert_close(reference[b : b + 1], single, rtol=1e-5, atol=1e-5)


def test_warm_solver_checkpoint_and_loader(tmp_path: Path) -> None:
    solver = tiny_warm_solver()
    solver.save_pretrained(tmp_path / "solver")
    loaded = load_solver(tmp_path / "solver")
    assert loaded.warm_start and isinstance(loaded.network, WarmStartSolver)
    v, z, x0, f_prev, sigma, sigma_next = _warm_inputs()
    torch.testing.assert_close(loaded(v, z, x0, sigma, sigma_next, COND, f_prev), solver(*_warm_inputs()))
    with pytest.raises(FastinvError, match="needs f_prev"):
        loaded(v, z, x0, sigma, sigma_next, COND)


@pytest.mark.parametrize(
    ("key", "value"),
    [("patch_size", 0), ("layers", "2"), ("in_channels", True), ("attention_head_dim", 10**6)],
)
def test_solver_config_fields_are_validated(tmp_path: Path, key: str, value: object) -> None:
    tiny_warm_solver().save_pretrained(tmp_path / "solver")
    path = tmp_path / "solver" / "config.json"
    config = json.loads(path.read_text()) | {key: value}
    path.write_text(json.dumps(config))
    with pytest.raises(FastinvError, match=f"{key} must be an integer in"):
        load_solver(tmp_path / "solver")


def test_deepinv_warm_start_steps() -> None:
    """Warm start: v at z_k + h·ε̂_{k−1} (ε̂_{−1} = 0), the solver given ε̂_{k−1}; N NFE; by hand."""
    field = LinearField(0.6, torch.randn(1, 2, 4, 4))
    seen: list[torch.Tensor] = []

    class Solver:
        warm_start = True

        def __call__(self, v, z, x0, sigma, sigma_next, cond, f_prev=None):
            seen.append(f_prev.clone())
            return 0.9 * v + 0.05 * f_prev + 0.01 * x0

    x0, sigmas = torch.randn(2, 2, 4, 4), flow_sigmas({"shift": 2.0}, 6)
    z, eps = x0.clone(), torch.zeros_like(x0)
    for _, sigma, sigma_next in upward_steps(sigmas):
        h = float(sigma_next - sigma)
        v = field(z + h * eps, sigma_batch(sigma_next, z), COND)
        eps = 0.9 * v + 0.05 * eps + 0.01 * x0
        z = z + h * eps
    res = invert_deepinv(field, x0, sigmas, COND, solver=Solver())
    torch.testing.assert_close(res.z_T, z)
    assert res.nfe == 6 and torch.equal(seen[0], torch.zeros_like(x0))


def test_untrained_warm_solver_is_one_warm_correction_per_step() -> None:
    """An untrained warm-start solver inverts as warm_fixed_point with one correction, except that the first
    step stops at Euler's guess at the target σ (N NFE instead of N + 1)."""
    field = LinearField(0.6, torch.zeros(1, SD3_LATENT_CHANNELS, 4, 4))
    x0, sigmas = torch.randn(1, SD3_LATENT_CHANNELS, 4, 4), flow_sigmas({}, 5)
    res = invert_deepinv(field, x0, sigmas, COND, solver=TorchSolver(tiny_warm_solver(trained=False)))
    z, f = x0.clone(), None
    for _, sigma, sigma_next in upward_steps(sigmas):
        h, s_next = float(sigma_next - sigma), sigma_batch(sigma_next, z)
        f = field(z, s_next, COND) if f is None else field(z + h * f, s_next, COND)
        z = z + h * f
    torch.testing.assert_close(res.z_T, z)
