"""Tests for fastinv.io: image loading (every mode), crop/resize, atomic writes, JSON and latents files."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from skimage import data as skdata

from fastinv.errors import FastinvError
from fastinv.files import atomic_write, load_latents, save_json, save_latents, save_png
from fastinv.images import LoadedImage, load_image, pixels_to_pil

FAST = settings(max_examples=40, deadline=None)


def to_u8(pixels: torch.Tensor) -> np.ndarray:
    """[1,3,H,W] in [-1,1] → H×W×3 uint8 (same rounding as pixels_to_pil)."""
    return np.asarray(pixels_to_pil(pixels))


def rgb_at(loaded: LoadedImage, y: int, x: int) -> list[float]:
    return loaded.pixels[0, :, y, x].tolist()


def assert_one_line_error(excinfo: pytest.ExceptionInfo[FastinvError], *parts: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message and "\r" not in message
    for part in parts:
        assert part in message, (part, message)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()


# --- round trips and basic contract -------------------------------------------------------------------------


def test_rgb_png_round_trips_exactly(tmp_path: Path, astronaut: np.ndarray) -> None:
    path = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    loaded = load_image(path)
    assert loaded.pixels.shape == (1, 3, 512, 512)
    assert loaded.pixels.dtype == torch.float32
    assert loaded.pixels.min() >= -1 and loaded.pixels.max() <= 1
    assert loaded.source == str(path)
    assert loaded.original_size == (512, 512)
    assert loaded.notes == []
    np.testing.assert_array_equal(to_u8(loaded.pixels), astronaut)


def test_array_and_pil_sources(astronaut: np.ndarray) -> None:
    from_array = load_image(astronaut)
    from_pil = load_image(Image.fromarray(astronaut))
    assert from_array.source == "<array>"
    assert from_pil.source == "<PIL image>"
    assert torch.equal(from_array.pixels, from_pil.pixels)
    np.testing.assert_array_equal(to_u8(from_array.pixels), astronaut)


def test_save_png_round_trips(tmp_path: Path, astronaut: np.ndarray) -> None:
    loaded = load_image(astronaut)
    out = save_png(loaded.pixels, tmp_path / "new" / "dir" / "out.png")
    assert out == tmp_path / "new" / "dir" / "out.png"
    with Image.open(out) as img:
        assert img.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(img), astronaut)
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.png"]


def test_pixels_to_pil_clamps_and_accepts_3d() -> None:
    pixels = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 5).expand(3, 1, 5)
    img = pixels_to_pil(pixels)
    assert img.mode == "RGB" and img.size == (5, 1)
    assert np.asarray(img)[0, :, 0].tolist() == [0, 0, 128, 255, 255]
    with pytest.raises(ValueError, match="shape"):
        pixels_to_pil(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        pixels_to_pil(torch.full((3, 2, 2), math.nan))


# --- every pixel mode ---------------------------------------------------------------------------------------


def test_grayscale_l_replicated(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    Image.fromarray(np.array([[0, 51, 255]], dtype=np.uint8)).save(path)
    loaded = load_image(path)
    assert loaded.pixels.shape == (1, 3, 1, 3)
    assert torch.equal(loaded.pixels[0, 0], loaded.pixels[0, 2])
    assert loaded.pixels[0, 1, 0].tolist() == pytest.approx([-1.0, 51 / 127.5 - 1, 1.0], abs=1e-6)
    assert any("grayscale" in n for n in loaded.notes)


def test_bilevel_mode_1(tmp_path: Path) -> None:
    img = Image.new("1", (2, 1), 0)
    img.putpixel((1, 0), 1)
    path = tmp_path / "bw.png"
    img.save(path)
    loaded = load_image(path)
    assert rgb_at(loaded, 0, 0) == [-1.0] * 3
    assert rgb_at(loaded, 0, 1) == [1.0] * 3


def test_palette_without_and_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255])
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    opaque = tmp_path / "p.png"
    img.save(opaque)
    loaded = load_image(opaque)
    assert rgb_at(loaded, 0, 0) == [1.0, -1.0, -1.0]
    assert rgb_at(loaded, 0, 1) == [-1.0, -1.0, 1.0]

    transparent = tmp_path / "p_t.gif"
    img.save(transparent, transparency=1)
    loaded = load_image(transparent)
    assert rgb_at(loaded, 0, 0) == [1.0, -1.0, -1.0]
    assert rgb_at(loaded, 0, 1) == [1.0, 1.0, 1.0]
    assert any("on white" in n for n in loaded.notes)


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    rgba = np.array([[[10, 20, 30, 0], [10, 20, 30, 255], [0, 0, 0, 128]]], dtype=np.uint8)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(path)
    for source in (path, rgba):
        loaded = load_image(source)
        assert rgb_at(loaded, 0, 0) == [1.0, 1.0, 1.0]
        assert to_u8(loaded.pixels)[0, 1].tolist() == [10, 20, 30]
        half = (1 - 128 / 255) * 2 - 1
        assert rgb_at(loaded, 0, 2) == pytest.approx([half] * 3, abs=1e-6)
        assert any("RGBA" in n and "white" in n for n in loaded.notes)


def test_la_and_rgb_with_transparent_color(tmp_path: Path) -> None:
    la = Image.fromarray(np.array([[[0, 0], [0, 255]]], dtype=np.uint8), mode="LA")
    path = tmp_path / "la.png"
    la.save(path)
    loaded = load_image(path)
    assert rgb_at(loaded, 0, 0) == [1.0] * 3
    assert rgb_at(loaded, 0, 1) == [-1.0] * 3

    rgb = Image.fromarray(np.array([[[0, 255, 0], [255, 0, 0]]], dtype=np.uint8))
    path = tmp_path / "trns.png"
    rgb.save(path, transparency=(0, 255, 0))
    loaded = load_image(path)
    assert rgb_at(loaded, 0, 0) == [1.0] * 3
    assert rgb_at(loaded, 0, 1) == [1.0, -1.0, -1.0]


def test_16bit_grayscale_png(tmp_path: Path) -> None:
    path = tmp_path / "gray16.png"
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(path)
    with Image.open(path) as img:
        assert img.mode == "I;16"
    loaded = load_image(path)
    assert loaded.pixels[0, :, 0, 0].tolist() == [-1.0] * 3
    assert loaded.pixels[0, :, 0, 2].tolist() == [1.0] * 3
    assert loaded.pixels[0, 0, 0, 1].item() == pytest.approx(32768 / 65535 * 2 - 1, abs=1e-6)
    assert any("16-bit" in n for n in loaded.notes)


def test_16bit_big_endian_and_32bit_int_modes() -> None:
    values = np.array([0, 65535], dtype=">u2")
    big = Image.frombytes("I;16B", (2, 1), values.tobytes())
    assert load_image(big).pixels[0, 0, 0].tolist() == [-1.0, 1.0]

    int32 = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert int32.mode == "I"
    assert load_image(int32).pixels[0, 0, 0].tolist() == [-1.0, 1.0]

    with pytest.raises(FastinvError) as excinfo:
        load_image(Image.fromarray(np.array([[0, 70000]], dtype=np.int32)))
    assert_one_line_error(excinfo, "<PIL image>", "70000")


def test_float_mode_f_clipped(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[-0.5, 0.25, 2.0]], dtype=np.float32)).save(path)
    loaded = load_image(path)
    assert loaded.pixels[0, 1, 0].tolist() == pytest.approx([-1.0, -0.5, 1.0])
    assert any("clipped" in n for n in loaded.notes)


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_float_mode_f_with_non_finite_values_is_refused(tmp_path: Path, value: float) -> None:
    """Clipping would make ±inf white or black without a word: refused, as a float array's are."""
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.5, value, 0.25]], dtype=np.float32)).save(path)
    with pytest.raises(FastinvError, match="has NaN or infinite pixel values"):
        load_image(path)


def test_cmyk_converted() -> None:
    loaded = load_image(Image.new("CMYK", (2, 2), (0, 0, 0, 0)))
    assert torch.equal(loaded.pixels, torch.ones(1, 3, 2, 2))
    assert loaded.notes == ["converted CMYK to RGB"]


def test_first_frame_of_animation(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), color) for color in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    loaded = load_image(path)
    assert rgb_at(loaded, 0, 0) == [1.0, -1.0, -1.0]
    assert "used the first of 2 frames" in loaded.notes


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([[0, 255]], dtype=np.uint8), [[-1.0] * 3, [1.0] * 3]),
        (np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8), [[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]]),
        (np.array([[[0, 0, 0, 0], [0, 0, 0, 255]]], dtype=np.uint8), [[1.0] * 3, [-1.0] * 3]),
        (np.array([[0, 65535]], dtype=np.uint16), [[-1.0] * 3, [1.0] * 3]),
        (np.array([[[0.0], [1.0]]], dtype=np.float64), [[-1.0] * 3, [1.0] * 3]),
        (np.array([[[0.5, 0.0, 1.0], [1.0, 1.0, 1.0]]], dtype=np.float32), [[0.0, -1.0, 1.0], [1.0] * 3]),
        (np.array([[[0.0, 0.0], [0.0, 1.0]]], dtype=np.float16), [[1.0] * 3, [-1.0] * 3]),
        (np.array([[False, True]]), [[-1.0] * 3, [1.0] * 3]),
    ],
    ids=["u8-gray", "u8-rgb", "u8-rgba", "u16-gray", "f64-hw1", "f32-rgb", "f16-la", "bool"],
)
def test_numpy_arrays(array: np.ndarray, expected: list[list[float]]) -> None:
    loaded = load_image(array)
    assert loaded.pixels.shape == (1, 3, 1, 2)
    assert loaded.pixels[0, :, 0].T.tolist() == expected


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.zeros((4, 4), dtype=np.int64), "dtype int64"),
        (np.zeros((3, 8, 8), dtype=np.uint8), "(3, 8, 8)"),
        (np.zeros((8,), dtype=np.uint8), "(8,)"),
        (np.full((4, 4, 3), 255.0), "[255, 255]"),
        (np.full((4, 4), np.nan, dtype=np.float32), "NaN"),
    ],
)
def test_bad_arrays(array: np.ndarray, fragment: str) -> None:
    with pytest.raises(FastinvError) as excinfo:
        load_image(array)
    assert_one_line_error(excinfo, "<array>", fragment)


# --- EXIF orientation ---------------------------------------------------------------------------------------


def test_exif_rotated_jpeg_is_transposed(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (255, 0, 0)  # left half red
    stored[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise: the left half ends up on top
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)

    loaded = load_image(path)
    assert loaded.original_size == (20, 40)
    assert loaded.pixels.shape == (1, 3, 40, 20)
    assert rgb_at(loaded, 5, 10) == pytest.approx([1.0, -1.0, -1.0], abs=0.1)
    assert rgb_at(loaded, 35, 10) == pytest.approx([-1.0, -1.0, 1.0], abs=0.1)
    assert "applied EXIF orientation 6" in loaded.notes


# --- cropping to a multiple and fixed size ------------------------------------------------------------------


@FAST
@given(w=st.integers(1, 200), h=st.integers(1, 200), multiple=st.integers(1, 32))
def test_crop_to_multiple_is_divisible_smaller_and_centered(w: int, h: int, multiple: int) -> None:
    ys, xs = np.mgrid[0:h, 0:w]
    array = np.stack([xs, ys, np.zeros_like(xs)], axis=2).astype(np.uint8)
    if w < multiple or h < multiple:
        too_small = f"is {w}×{h} px; this model needs at least {multiple}×{multiple} px"
        with pytest.raises(FastinvError, match=too_small):
            load_image(array, multiple=multiple)
        return
    loaded = load_image(array, multiple=multiple)
    _, _, ch, cw = loaded.pixels.shape
    assert cw % multiple == 0 and ch % multiple == 0
    assert w - multiple < cw <= w and h - multiple < ch <= h
    assert loaded.original_size == (w, h)
    out = to_u8(loaded.pixels)
    left, top = (w - cw) // 2, (h - ch) // 2
    np.testing.assert_array_equal(out, array[top : top + ch, left : left + cw])
    assert bool(loaded.notes) == ((cw, ch) != (w, h))


def test_crop_note_wording() -> None:
    loaded = load_image(np.zeros((384, 513, 3), dtype=np.uint8), multiple=16)
    assert loaded.pixels.shape == (1, 3, 384, 512)
    assert loaded.notes == ["center-cropped 513×384 → 512×384 to a multiple of 16"]


@FAST
@given(
    w=st.integers(1, 120),
    h=st.integers(1, 120),
    tw=st.integers(1, 64),
    th=st.integers(1, 64),
    value=st.integers(0, 255),
)
def test_fixed_size_is_exact(w: int, h: int, tw: int, th: int, value: int) -> None:
    loaded = load_image(np.full((h, w, 3), value, dtype=np.uint8), size=(tw, th), multiple=16)
    assert loaded.pixels.shape == (1, 3, th, tw)
    assert loaded.original_size == (w, h)
    expected = value / 127.5 - 1
    assert torch.allclose(loaded.pixels, torch.full_like(loaded.pixels, expected), atol=1e-4)


def test_fixed_size_matches_lanczos_center_crop(astronaut: np.ndarray) -> None:
    loaded = load_image(astronaut, size=(64, 48))
    assert loaded.pixels.shape == (1, 3, 48, 64)
    reference = np.asarray(Image.fromarray(astronaut).resize((64, 64), Image.Resampling.LANCZOS))[8:56]
    diff = np.abs(to_u8(loaded.pixels).astype(int) - reference.astype(int))
    # PIL's 8-bit resize clips between its two passes, we resize in float: equal up to rare ringing pixels
    assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 1
    assert loaded.notes == ["resized 512×512 → 64×64 (Lanczos) and center-cropped to 64×48"]

    same = load_image(astronaut, size=(512, 512))
    assert same.notes == []
    np.testing.assert_array_equal(to_u8(same.pixels), astronaut)


# --- errors -------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(FastinvError) as excinfo:
        load_image(path)
    assert str(excinfo.value) == f"image not found: {path}"


def test_garbage_truncated_and_directory(tmp_path: Path, astronaut: np.ndarray) -> None:
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image\nat all\n")
    good = tmp_path / "good.png"
    Image.fromarray(astronaut).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:2000])
    for path in (garbage, truncated, tmp_path):
        with pytest.raises(FastinvError) as excinfo:
            load_image(path)
        assert_one_line_error(excinfo, f"cannot read image {path}: ")


def test_too_small(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    Image.new("RGB", (10, 12)).save(path)
    with pytest.raises(FastinvError) as excinfo:
        load_image(path, multiple=16)
    assert str(excinfo.value) == f"image {path} is 10×12 px; this model needs at least 16×16 px"
    with pytest.raises(FastinvError) as excinfo:
        load_image(path, min_size=11, size=(64, 64))
    assert_one_line_error(excinfo, str(path), "10×12", "11×11")
    assert load_image(path, size=(64, 64), multiple=16).pixels.shape == (1, 3, 64, 64)
    with pytest.raises(FastinvError) as excinfo:
        load_image(np.zeros((0, 5), dtype=np.uint8))
    assert_one_line_error(excinfo, "<array>", "5×0")


def test_programmer_errors_are_not_fastinv_errors() -> None:
    with pytest.raises(ValueError, match="multiple and min_size must be >= 1, got multiple=0"):
        load_image(np.zeros((4, 4), dtype=np.uint8), multiple=0)
    with pytest.raises(ValueError, match=r"size must be \(W, H\) with positive sides, got \(0, 4\)"):
        load_image(np.zeros((4, 4), dtype=np.uint8), size=(0, 4))
    with pytest.raises(TypeError, match="expects a path, bytes, PIL image or numpy array, got int"):
        load_image(42)  # type: ignore[arg-type]


# --- atomic writes ------------------------------------------------------------------------------------------


def test_atomic_write_success(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.txt"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".txt" and tmp != target
        tmp.write_text("hello")
        assert not target.exists()
    assert target.read_text() == "hello"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_atomic_write_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.bin"
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_write_failure_keeps_old_target(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(KeyError), atomic_write(target) as tmp:
        tmp.write_text("new")
        raise KeyError("x")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_save_into_a_file_path_is_fastinv_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(FastinvError) as excinfo:
        save_json({}, blocker / "out.json")
    assert_one_line_error(excinfo, str(blocker / "out.json"))


# --- JSON ---------------------------------------------------------------------------------------------------


def test_save_json_non_finite_become_null(tmp_path: Path) -> None:
    obj = {
        "nan": math.nan,
        "list": [math.inf, -math.inf, 1.5, "ünïcode"],
        "np": np.float32(2.5),
        "arr": np.arange(3),
        "tensor": torch.tensor([1.0, math.nan]),
        "path": Path("x/y.png"),
        "tuple": (1, None, True),
    }
    out = save_json(obj, tmp_path / "r.json")
    text = out.read_text(encoding="utf-8")
    assert text.startswith('{\n  "nan": null')

    def reject(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    assert json.loads(text, parse_constant=reject) == {
        "nan": None,
        "list": [None, None, 1.5, "ünïcode"],
        "np": 2.5,
        "arr": [0, 1, 2],
        "tensor": [1.0, None],
        "path": "x/y.png",
        "tuple": [1, None, True],
    }


def test_save_json_unserializable_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        save_json({"x": object()}, tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []


# --- latents ------------------------------------------------------------------------------------------------


def test_latents_round_trip(tmp_path: Path) -> None:
    z = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    metadata = {
        "prompt": 'an astronaut, "quoted" and ünïcode',
        "steps": 28,
        "guidance": 3.5,
        "sigmas": [1.0, 0.75, 0.0],
        "nested": {"model": "sd3", "size": [1024, 1024]},
        "flag": True,
        "nothing": None,
        "numeric_string": "12",
    }
    path = save_latents(tmp_path / "lat" / "z.safetensors", z, metadata)
    z2, meta2 = load_latents(path)
    assert torch.equal(z2, z) and z2.dtype == torch.float32
    assert meta2 == metadata
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata()
        assert list(f.keys()) == ["z_T"]
    assert raw["format"] == "fastinv-latents/1"
    assert raw["steps"] == "28" and json.loads(raw["sigmas"]) == [1.0, 0.75, 0.0]


def test_latents_stored_as_contiguous_float32(tmp_path: Path) -> None:
    z = torch.randn(8, 4, dtype=torch.bfloat16, requires_grad=True).t()
    path = save_latents(tmp_path / "z.safetensors", z, {"bad": math.inf})
    z2, meta = load_latents(path)
    assert z2.dtype == torch.float32 and z2.is_contiguous()
    assert torch.equal(z2, z.detach().float())
    assert meta == {"bad": None}
    with pytest.raises(ValueError, match="reserved"):
        save_latents(tmp_path / "y.safetensors", z, {"format": "x"})


def test_latents_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(FastinvError) as excinfo:
        load_latents(missing)
    assert str(excinfo.value) == f"latents not found: {missing}"

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(FastinvError) as excinfo:
        load_latents(garbage)
    assert_one_line_error(excinfo, f"cannot read latents {garbage}: ", "safetensors")

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(FastinvError) as excinfo:
        load_latents(other)
    assert_one_line_error(excinfo, str(other), "'z_T'", "'x'")

    wrong = tmp_path / "wrong.safetensors"
    save_file({"z_T": torch.zeros(2)}, str(wrong), metadata={"format": "other/9"})
    with pytest.raises(FastinvError) as excinfo:
        load_latents(wrong)
    assert_one_line_error(excinfo, str(wrong), "other/9")


def test_max_side_shrinks_to_multiples_keeping_aspect() -> None:
    img = load_image(np.zeros((300, 451, 3), np.uint8), multiple=16, max_side=256)
    assert img.pixels.shape[-2:] == (160, 256)
    assert any("resized" in note for note in img.notes)
    small = load_image(np.zeros((100, 120, 3), np.uint8), multiple=16, max_side=256)
    assert small.pixels.shape[-2:] == (96, 112)
