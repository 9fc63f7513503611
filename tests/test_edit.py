"""Editing (RF-Inversion's controlled sampling), batched inversion, the prompt LRU and thread safety."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from test_solver import tiny_solver

import fastinv
from fastinv.cli import main
from fastinv.errors import FastinvError
from fastinv.metrics import psnr
from fastinv.models.prompt_cache import PromptCache
from fastinv.sampling import SourceControl, sample_euler

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _photo(name: str, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    return np.asarray(Image.fromarray(getattr(data, name)()).resize(size, Image.Resampling.LANCZOS))


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [_photo(name) for name in PHOTOS]


@pytest.fixture(scope="module")
def inverter(tiny_sd3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> fastinv.Inverter:
    """Tiny SD3 with a tiny solver folder (loaded lazily, on the first deepinv request)."""
    folder = tmp_path_factory.mktemp("edit_solver")
    tiny_solver().save_pretrained(folder)
    return fastinv.load(tiny_sd3_dir, device="cpu", solver=folder)


def test_same_prompt_without_control_is_the_reconstruction(
    inverter: fastinv.Inverter, photos: list[np.ndarray]
) -> None:
    inversion = inverter.invert(photos[0], prompt="a photo", steps=4)
    reconstruction = inverter.reconstruct(inversion)
    for strength, stop in ((0.0, 0.25), (0.9, 0.0)):
        edited = inverter.edit(inversion, target_prompt="a photo", strength=strength, stop=stop)
        assert torch.equal(edited.edited.latents, reconstruction.latents)
    fresh = inverter.edit(photos[0], source_prompt="a photo", target_prompt="a photo", steps=4, strength=0.0)
    assert torch.equal(fresh.edited.latents, reconstruction.latents)


def test_full_control_lands_on_the_source(inverter: fastinv.Inverter, photos: list[np.ndarray]) -> None:
    """η = 1 on every step follows u = (z − x0)/σ: z − x0 shrinks by σ_next/σ, so σ_N = 0 lands on x0."""
    inversion = inverter.invert(photos[1], steps=5)
    edited = inverter.edit(inversion, target_prompt="a cat", strength=1.0, stop=1.0)
    torch.testing.assert_close(edited.edited.latents, inversion.x0, rtol=0, atol=1e-5)


def test_control_is_one_step_of_the_paper_formula(inverter: fastinv.Inverter) -> None:
    """One controlled step equals v + η·((z − x0)/σ − v) applied with Euler, written out by hand."""
    model = inverter.model
    cond = model.conditioning("a cat", guidance_scale=2.0)
    z, x0 = torch.randn(2, model.codec.channels, 8, 8, generator=torch.Generator().manual_seed(0)).chunk(2)
    sigmas = torch.tensor([1.0, 0.6], dtype=torch.float64)
    got, _ = sample_euler(model.velocity, z, sigmas, cond, control=SourceControl(x0, strength=0.7, stop=1.0))
    v = model.velocity(z, torch.ones(1), cond)
    expected = z + (0.6 - 1.0) * (v + 0.7 * ((z - x0) / 1.0 - v))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_control_window_truncates_as_the_authors_pipeline() -> None:
    """FluxRFInversionPipeline: int(start·N) ≤ i < min(int(stop·N), N); round() would take 3 steps of 10 at
    0.25 and 2 of 7 at 0.3 where the authors take 2."""
    x0 = torch.zeros(1)
    assert SourceControl(x0, 0.9, stop=0.25).window(10) == range(0, 2)
    assert SourceControl(x0, 0.9, stop=0.3).window(7) == range(0, 2)
    assert SourceControl(x0, 0.9, stop=0.5, start=0.2).window(10) == range(2, 5)
    assert SourceControl(x0, 0.9, stop=1.0).window(4) == range(0, 4)
    assert SourceControl(x0, 0.0, stop=1.0).window(4) == range(0)


def test_control_window_skips_the_steps_before_start(inverter: fastinv.Inverter) -> None:
    """With start = 0.5 of 2 steps the first step is plain Euler and the second is controlled."""
    model = inverter.model
    cond = model.conditioning("a cat")
    z, x0 = torch.randn(2, model.codec.channels, 8, 8, generator=torch.Generator().manual_seed(1)).chunk(2)
    sigmas = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    control = SourceControl(x0, strength=1.0, stop=1.0, start=0.5)
    got, _ = sample_euler(model.velocity, z, sigmas, cond, control=control)
    mid = z - 0.5 * model.velocity(z, torch.ones(1), cond)
    expected = mid - 0.5 * ((mid - x0) / 0.5)  # η = 1: the straight path to x0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("strength", "stop", "start"),
    [
        (-0.1, 0.25, 0.0),
        (1.5, 0.25, 0.0),
        (0.9, -1.0, 0.0),
        (0.9, 2.0, 0.0),
        (0.9, 0.25, 0.5),
        (0.9, 0.25, -0.1),
    ],
)
def test_bad_control_is_a_one_line_error(strength: float, stop: float, start: float) -> None:
    bad = "strength" if not 0 <= strength <= 1 else "stop" if not 0 <= stop <= 1 else "start"
    value = {"strength": strength, "stop": stop, "start": start}[bad]
    with pytest.raises(FastinvError, match=rf"^edit {bad} must be .*, got {value}$"):
        SourceControl(torch.zeros(1), strength, stop, start)


@pytest.mark.parametrize("method", ["euler", "deepinv"])
def test_a_batch_of_four_equals_four_single_calls(
    inverter: fastinv.Inverter, photos: list[np.ndarray], method: str
) -> None:
    batch = inverter.invert_batch(photos, prompt="a photo", method=method, steps=3)
    singles = [inverter.invert(photo, prompt="a photo", method=method, steps=3) for photo in photos]
    for together, alone in zip(batch, singles, strict=True):
        assert together.z_T.shape == alone.z_T.shape == (1, inverter.model.codec.channels, 8, 8)
        assert together.result.nfe == alone.result.nfe == 3
        torch.testing.assert_close(together.z_T, alone.z_T, rtol=1e-4, atol=1e-5)


def test_batches_group_sizes_and_keep_the_order(inverter: fastinv.Inverter, photos: list[np.ndarray]) -> None:
    images = [photos[0], _photo("coffee", (96, 64)), photos[2], _photo("rocket", (96, 64))]
    batch = inverter.invert_batch(images, steps=2, keep_trajectory=True)
    assert [tuple(inv.z_T.shape[-2:]) for inv in batch] == [(8, 8), (8, 12), (8, 8), (8, 12)]
    assert all(len(inv.result.trajectory) == 3 and inv.result.trajectory[0].shape[0] == 1 for inv in batch)
    torch.testing.assert_close(batch[2].z_T, inverter.invert(images[2], steps=2).z_T, rtol=1e-4, atol=1e-5)
    with pytest.raises(FastinvError, match="no images"):
        inverter.invert_batch([], steps=2)


def test_threads_give_the_sequential_results(inverter: fastinv.Inverter, photos: list[np.ndarray]) -> None:
    """8 threads × 4 requests (mixed photos, prompts, methods, and the lazily loaded solver) on one
    Inverter equal the same requests run one after another."""
    requests = [
        (photos[(t + r) % 4], f"prompt {r % 3}", ("euler", "deepinv")[(t * 4 + r) % 2])
        for t in range(8)
        for r in range(4)
    ]

    def run(request: tuple[np.ndarray, str, str]) -> torch.Tensor:
        photo, prompt, method = request
        inversion = fresh.invert(photo, prompt=prompt, method=method, steps=3)
        return fresh.reconstruct(inversion).latents

    fresh = fastinv.Inverter(inverter.model, inverter.solver_dir)  # its solver is not loaded yet
    start = threading.Barrier(8)

    def worker(t: int) -> list[torch.Tensor]:
        start.wait()
        return [run(request) for request in requests[t * 4 : t * 4 + 4]]

    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = [latents for chunk in pool.map(worker, range(8)) for latents in chunk]
    sequential = [run(request) for request in requests]
    for a, b in zip(threaded, sequential, strict=True):
        assert torch.equal(a, b)


def test_prompt_cache_is_a_bounded_lru() -> None:
    encoded: list[str] = []

    def encode(prompt: str) -> tuple[torch.Tensor, None]:
        encoded.append(prompt)
        return torch.full((1, 1, 1), float(len(encoded))), None

    cache = PromptCache(size=2)
    for prompt in ("a", "b", "a", "c", "a", "b"):
        cache.get(prompt, encode)
    assert encoded == ["a", "b", "c", "b"]  # "b" was least recently used when "c" came in
    assert (cache.hits, cache.misses, len(cache)) == (2, 4, 2) and "c" not in cache
    with pytest.raises(FastinvError, match="at least 1"):
        PromptCache(size=0)


def test_prompt_cache_encodes_once_under_threads() -> None:
    calls = []

    def encode(prompt: str) -> tuple[torch.Tensor, None]:
        calls.append(prompt)
        return torch.zeros(1, 1, 1), None

    cache = PromptCache()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: cache.get("same", encode), range(64)))
    assert calls == ["same"]


def test_load_sizes_the_prompt_cache(tiny_sd3_dir: Path) -> None:
    inv = fastinv.load(tiny_sd3_dir, device="cpu", prompt_cache_size=1)
    for prompt in ("a", "b", "a"):
        inv.model.encode_prompt(prompt)
    assert inv.model.prompt_cache.misses == 3 and len(inv.model.prompt_cache) == 1


def test_cli_edit_writes_source_edit_and_side_by_side(
    tiny_sd3_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "astronaut.png"
    Image.fromarray(_photo("astronaut")).save(image)
    args = ["edit", str(image), "--target-prompt", "a cat", "--source-prompt", "a person"]
    args += ["--model", str(tiny_sd3_dir), "--steps", "3", "--device", "cpu", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
        raise SystemExit(0)
    assert exit_info.value.code == 0, capsys.readouterr().err
    out = tmp_path / "out"
    source, edited = Image.open(out / "astronaut.source.png"), Image.open(out / "astronaut.edit.png")
    assert source.size == edited.size == (64, 64)
    assert Image.open(out / "astronaut.side_by_side.png").width > 3 * 64
    record = json.loads((out / "astronaut.edit.json").read_text())
    assert record["target_prompt"] == "a cat" and record["prompt"] == "a person"
    assert record["nfe_edit"] == 3
    # the edit is scored against the source: the written 8-bit PNGs give the same PSNR to rounding
    pixels = [
        torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
        for im in (source, edited)
    ]
    assert record["metrics"]["edit"]["psnr"] == pytest.approx(psnr(*pixels), abs=0.05)


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--strength", "2"], "strength"), (["--stop", "-1"], "stop"), (["--steps", "0"], "steps")],
)
def test_cli_edit_errors(
    tiny_sd3_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    image = tmp_path / "x.png"
    Image.fromarray(_photo("astronaut")).save(image)
    with pytest.raises(SystemExit) as exit_info:
        main(["edit", str(image), "--target-prompt", "a cat", "--model", str(tiny_sd3_dir), *extra])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "fastinv-edit").exists()  # nothing written


def test_flux_dev_inversion_and_regeneration_guidance_are_separate(
    tiny_flux_dev_dir: Path, tiny_sd3_dir: Path, photos: list[np.ndarray]
) -> None:
    """FLUX-dev: inversion at 1 and edits at 3.5 unless set; the reconstruction matches the inversion's value
    (the only exact inverse); every value is recorded. Models without the input record None."""
    inverter = fastinv.load(tiny_flux_dev_dir, device="cpu")
    inversion = inverter.invert(photos[0], steps=3)
    assert inversion.cond.embedded_guidance == 1.0
    assert inverter.reconstruct(inversion).embedded_guidance == 1.0
    other = inverter.reconstruct(inversion, embedded_guidance=3.5)
    assert other.embedded_guidance == 3.5
    assert not torch.equal(other.latents, inverter.reconstruct(inversion).latents)
    edit = inverter.edit(photos[0], target_prompt="a cat", steps=3, inversion_embedded_guidance=2.0)
    assert edit.inversion.cond.embedded_guidance == 2.0 and edit.edited.embedded_guidance == 3.5
    again = inverter.edit(inversion, target_prompt="a cat", embedded_guidance=5.0)
    assert again.edited.embedded_guidance == 5.0
    sd3 = fastinv.load(tiny_sd3_dir, device="cpu")
    assert sd3.invert(photos[0], steps=2, embedded_guidance=2.0).cond.embedded_guidance is None
