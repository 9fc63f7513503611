"""Decoding images into model pixels: an image file (a path or its bytes), PIL image or array → [1,3,H,W]
float32 in [-1,1].

Every problem with user input is raised as a one-line :class:`FastinvError` naming the file.
`is_image_file` / `image_files` (one suffix set, IMAGE_SUFFIXES) decide which files of a folder are images.
"""

import io
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from fastinv.errors import FastinvError, one_line, reason

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
"""File suffixes (lower case) that fastinv takes as images when it reads a folder."""


def is_image_file(path: str | Path) -> bool:
    """Whether `path` names an image by its suffix (case-insensitive; see IMAGE_SUFFIXES)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def image_files(folder: str | Path) -> list[Path]:
    """The entries of `folder` that `is_image_file` accepts, sorted by path."""
    return sorted(p for p in Path(folder).iterdir() if is_image_file(p))


DEFAULT_MAX_PIXELS = 50_000_000
"""The largest image (W·H) fastinv decodes unless FASTINV_MAX_PIXELS says otherwise: a small compressed
file can decode to gigabytes (a 140 KB PNG of 144 megapixels took 4.6 GB), so the size is checked from the
header, before decoding."""


def max_pixels() -> int:
    """The decode limit: $FASTINV_MAX_PIXELS (a positive integer) or DEFAULT_MAX_PIXELS."""
    text = os.environ.get("FASTINV_MAX_PIXELS")
    if text is None:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise FastinvError(f"FASTINV_MAX_PIXELS must be a positive integer, got {text!r}")
    return value


_FLOAT_SLACK = 1e-3  # float arrays may overshoot [0, 1] by this much (rounding noise) and are then clipped


@dataclass
class LoadedImage:
    """An image ready for a model.

    pixels: [1,3,H,W] float32 in [-1,1], CPU.
    source: the file path, or "<array>" / "<PIL image>" for in-memory input.
    original_size: (W, H) after EXIF orientation, before any crop or resize.
    notes: sentences describing every conversion applied, in order.
    """

    pixels: torch.Tensor
    source: str
    original_size: tuple[int, int]
    notes: list[str] = field(default_factory=list)


def load_image(
    source: str | Path | bytes | Image.Image | np.ndarray,
    *,
    multiple: int = 1,
    min_size: int = 1,
    size: tuple[int, int] | None = None,
    max_side: int | None = None,
) -> LoadedImage:
    """Load an image file (a path, or the file's bytes), PIL image or array as RGB pixels [1,3,H,W] float32
    in [-1,1].

    Any PIL-readable file (EXIF orientation applied, first frame of animations). Transparency is
    composited onto white; grayscale is replicated; 16-bit data ('I;16*', and 'I' with values in
    0..65535) is scaled by 1/65535; 'F' data is clipped to [0,1]. Arrays: H×W or H×W×C (C = 1..4: gray,
    gray+alpha, RGB, RGBA) of uint8, uint16, bool, or float in [0,1].

    With ``size=(W, H)`` the image is scaled (Lanczos, antialiased) so that it covers W×H, then
    center-cropped to exactly W×H. Otherwise each side is center-cropped down to a multiple of
    ``multiple``; the image is resized only when a side exceeds ``max_side``: then it is scaled down,
    aspect kept, to the largest multiple-of-``multiple`` size within ``max_side``.

    Raises FastinvError if the file is missing or unreadable, or a side is below ``min_size`` (or,
    without ``size``, below ``multiple``).
    """
    if multiple < 1 or min_size < 1:
        raise ValueError(f"multiple and min_size must be >= 1, got multiple={multiple}, min_size={min_size}")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"size must be (W, H) with positive sides, got {size!r}")

    notes: list[str] = []
    if isinstance(source, np.ndarray):
        name = "<array>"
        raw = _check_array(source, name, notes)
    elif isinstance(source, Image.Image):
        name = "<PIL image>"
        raw = _pil_to_raw(_prepare(source, notes), name, notes)
    elif isinstance(source, (str, PurePath)):
        name = str(source)
        raw = _pil_to_raw(_open(Path(source), name, notes), name, notes)
    elif isinstance(source, bytes):
        name = "<bytes>"
        raw = _pil_to_raw(_open(io.BytesIO(source), name, notes), name, notes)
    else:
        raise TypeError(
            f"load_image expects a path, bytes, PIL image or numpy array, got {type(source).__name__}"
        )

    h, w = raw.shape[:2]
    need = max(min_size, 1 if size is not None else multiple)
    if w < need or h < need:
        raise one_line(f"image {name} is {w}×{h} px; this model needs at least {need}×{need} px")

    if size is None and max_side is not None and max(w, h) > max_side:
        scale = max_side / max(w, h)
        size = tuple(max(multiple, math.floor(side * scale / multiple) * multiple) for side in (w, h))
    if size is None:
        cw, ch = w - w % multiple, h - h % multiple
        if (cw, ch) != (w, h):
            raw = _center_crop(raw, cw, ch)
            notes.append(f"center-cropped {w}×{h} → {cw}×{ch} to a multiple of {multiple}")

    if size is not None:  # a thin image covers the size only scaled up along its long side too
        nw, nh = _cover_size(w, h, size)
        if nw * nh > max_pixels():
            raise one_line(
                f"image {name} is {w}×{h} px: covering {size[0]}×{size[1]} would scale it to {nw}×{nh} px, "
                f"over the limit of {max_pixels() / 1e6:g} megapixels (FASTINV_MAX_PIXELS raises it)"
            )
    rgb = _to_rgb_float(raw, name)
    if size is not None:
        rgb = _resize_cover(rgb, size, notes)

    pixels = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None] * 2 - 1
    return LoadedImage(pixels=pixels, source=name, original_size=(w, h), notes=notes)


def pixels_to_pil(pixels: torch.Tensor) -> Image.Image:
    """Convert [3,H,W] or [1,3,H,W] pixels in [-1,1] (clamped) to an 8-bit RGB PIL image (rounded)."""
    t = pixels.detach()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"expected pixels of shape [3,H,W] or [1,3,H,W], got {list(pixels.shape)}")
    t = t.to(device="cpu", dtype=torch.float32)
    if torch.isnan(t).any():
        raise ValueError("pixels contain NaN")
    u8 = ((t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(u8.permute(1, 2, 0).contiguous().numpy())


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognized image format"
    return reason(exc)


def not_found(path: Path, name: str) -> str:
    """The error for an image file `path` (given as `name`) that does not exist: it may be a broken link."""
    return f"image not found: {name}" + (" (a broken symbolic link)" if path.is_symlink() else "")


def _open(file: Path | io.BytesIO, name: str, notes: list[str]) -> Image.Image:
    if isinstance(file, Path) and not file.exists():
        raise one_line(not_found(file, name))
    if isinstance(file, Path) and not file.is_file():  # a FIFO or device: reading it could block forever
        raise one_line(f"cannot read image {name}: not a regular file")
    limit = max_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the check below replaces it
            img = Image.open(file)
        with img:
            width, height = img.size  # from the header: nothing decoded yet
            if width * height > limit:
                raise one_line(
                    f"image {name} is {width}×{height} px ({width * height / 1e6:.0f} megapixels), over the "
                    f"limit of {limit / 1e6:g} megapixels (FASTINV_MAX_PIXELS raises it)"
                )
            return _prepare(img, notes)
    except FastinvError:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own limit, which FASTINV_MAX_PIXELS does not move
        raise one_line(f"image {name} is over PIL's pixel limit (Image.MAX_IMAGE_PIXELS): {exc}") from exc
    except Exception as exc:
        raise one_line(f"cannot read image {name}: {_reason(exc)}") from exc


def _prepare(img: Image.Image, notes: list[str]) -> Image.Image:
    """Decode the current frame and apply EXIF orientation."""
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        notes.append(f"used the first of {frames} frames")
    img.load()
    orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    if orientation in range(2, 9):
        img = ImageOps.exif_transpose(img)
        notes.append(f"applied EXIF orientation {orientation}")
    return img


def _pil_to_raw(img: Image.Image, name: str, notes: list[str]) -> np.ndarray:
    """H×W×C array (C = 1..4) of uint8, uint16 or float32 in [0,1] holding the image's data."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        data = np.asarray(img)
        lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise one_line(f"image {name} has integer pixel values {lo}..{hi}, outside 16-bit 0..65535")
        notes.append(f"16-bit grayscale ({mode}) scaled by 1/65535 and replicated to RGB")
        return data.astype(np.uint16)[..., None]
    if mode == "F":
        data = np.asarray(img, dtype=np.float32)
        if not np.isfinite(data).all():  # clipping would turn ±inf into white or black unseen
            raise one_line(f"image {name} has NaN or infinite pixel values")
        notes.append("floating-point grayscale (F) clipped to [0, 1] and replicated to RGB")
        return np.clip(data, 0, 1)[..., None]
    if img.has_transparency_data:
        what = mode if mode in ("RGBA", "LA", "PA", "RGBa", "La") else f"{mode} with transparency"
        notes.append(f"converted {what} to RGB on white")
        return np.asarray(img if mode in ("RGBA", "LA") else img.convert("RGBA"))
    if mode == "RGB":
        return np.asarray(img)
    if mode == "L":
        notes.append("replicated grayscale (L) to RGB")
        return np.asarray(img)[..., None]
    try:
        rgb = img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise one_line(f"cannot read image {name}: unsupported pixel mode {mode} ({_reason(exc)})") from exc
    notes.append(f"converted {mode} to RGB")
    return np.asarray(rgb)


def _check_array(arr: np.ndarray, name: str, notes: list[str]) -> np.ndarray:
    """Validate dtype and layout of an input array; return it as H×W×C."""
    if not (arr.dtype in (np.uint8, np.uint16, np.bool_) or np.issubdtype(arr.dtype, np.floating)):
        expected = "uint8, uint16, bool or float in [0, 1]"
        raise one_line(f"cannot read image {name}: unsupported dtype {arr.dtype}; expected {expected}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        layout = "H×W or H×W×C with C in 1..4 (channels last)"
        raise one_line(f"cannot read image {name}: shape {tuple(arr.shape)} is not {layout}")
    if arr.dtype == np.uint16:
        notes.append("16-bit array scaled by 1/65535")
    channels = arr.shape[2]
    if channels in (2, 4):
        notes.append(f"converted {'LA' if channels == 2 else 'RGBA'} array to RGB on white")
    if channels in (1, 2):
        notes.append("replicated grayscale array to RGB")
    return arr


def _to_rgb_float(raw: np.ndarray, name: str) -> np.ndarray:
    """H×W×C raw data → H×W×3 float32 in [0,1]: scale, composite alpha onto white, replicate gray."""
    if raw.dtype == np.uint8:
        data = raw.astype(np.float32) / 255
    elif raw.dtype == np.uint16:
        data = raw.astype(np.float32) / 65535
    elif raw.dtype == np.bool_:
        data = raw.astype(np.float32)
    else:
        data = raw.astype(np.float32)
        if np.isnan(data).any():
            raise one_line(f"image {name} has NaN pixel values")
        lo, hi = float(data.min()), float(data.max())
        if lo < -_FLOAT_SLACK or hi > 1 + _FLOAT_SLACK:
            raise one_line(f"image {name} has float values in [{lo:g}, {hi:g}]; expected [0, 1]")
        data = np.clip(data, 0, 1)
    channels = data.shape[2]
    if channels in (2, 4):
        alpha = data[..., -1:]
        data = data[..., :-1] * alpha + (1 - alpha)
    if data.shape[2] == 1:
        data = np.repeat(data, 3, axis=2)
    return data


def _center_crop(arr: np.ndarray, w: int, h: int) -> np.ndarray:
    top, left = (arr.shape[0] - h) // 2, (arr.shape[1] - w) // 2
    return arr[top : top + h, left : left + w]


def _cover_size(w: int, h: int, size: tuple[int, int]) -> tuple[int, int]:
    """The size (W, H) that w×h is scaled to, aspect kept, to cover size=(W, H)."""
    scale = max(size[0] / w, size[1] / h)
    return max(size[0], round(w * scale)), max(size[1], round(h * scale))


def _resize_cover(rgb: np.ndarray, size: tuple[int, int], notes: list[str]) -> np.ndarray:
    """Scale H×W×3 float data (Lanczos, per channel in float) to cover size=(W, H), then center-crop to it."""
    tw, th = size
    h, w = rgb.shape[:2]
    if (w, h) == (tw, th):
        return rgb
    nw, nh = _cover_size(w, h, size)
    if (nw, nh) == (w, h):
        notes.append(f"center-cropped {w}×{h} → {tw}×{th}")
        return _center_crop(rgb, tw, th)
    planes = [Image.fromarray(np.ascontiguousarray(rgb[..., c])) for c in range(3)]
    resized = [np.asarray(plane.resize((nw, nh), Image.Resampling.LANCZOS)) for plane in planes]
    rgb = np.clip(np.stack(resized, axis=2), 0, 1)
    if (nw, nh) == (tw, th):
        notes.append(f"resized {w}×{h} → {tw}×{th} (Lanczos)")
        return rgb
    notes.append(f"resized {w}×{h} → {nw}×{nh} (Lanczos) and center-cropped to {tw}×{th}")
    return _center_crop(rgb, tw, th)
