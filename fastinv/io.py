"""Image, JSON and latent-file I/O: load any image as [1,3,H,W] pixels in [-1,1], write outputs atomically.

Every problem with user input is raised as a one-line :class:`FastinvError` naming the file.
"""

import json
import math
import os
import secrets
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image, ImageDraw, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo
from safetensors import safe_open
from safetensors.torch import save_file

from fastinv.errors import FastinvError

LATENTS_FORMAT = "fastinv-latents/1"
LATENTS_KEY = "z_T"

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
    source: str | Path | Image.Image | np.ndarray,
    *,
    multiple: int = 1,
    min_size: int = 1,
    size: tuple[int, int] | None = None,
    max_side: int | None = None,
) -> LoadedImage:
    """Load an image file, PIL image or array as RGB pixels [1,3,H,W] float32 in [-1,1].

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
    else:
        raise TypeError(f"load_image expects a path, PIL image or numpy array, got {type(source).__name__}")

    h, w = raw.shape[:2]
    need = max(min_size, 1 if size is not None else multiple)
    if w < need or h < need:
        raise _error(f"image {name} is {w}×{h} px; this model needs at least {need}×{need} px")

    if size is None and max_side is not None and max(w, h) > max_side:
        scale = max_side / max(w, h)
        size = tuple(max(multiple, math.floor(side * scale / multiple) * multiple) for side in (w, h))
    if size is None:
        cw, ch = w - w % multiple, h - h % multiple
        if (cw, ch) != (w, h):
            raw = _center_crop(raw, cw, ch)
            notes.append(f"center-cropped {w}×{h} → {cw}×{ch} to a multiple of {multiple}")

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


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; the block must create that file.

    On success the file is moved onto ``path`` with os.replace (atomic); if the block raises, the
    temporary file is removed and ``path`` is left untouched. Missing parent directories are created.
    The temporary name keeps the target's suffix, so format sniffing by extension still works.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{secrets.token_hex(4)}.tmp{target.suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def publish_folder(path: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder next to ``path``; the block fills it. On success the staging folder
    replaces ``path`` (an existing folder is first renamed aside, then removed); if the block raises, the
    staging folder is removed and ``path`` is left as it was. Readers see the old folder or the new one,
    never a half-written one (a kill between the two renames leaves the old one under its aside name)."""
    import shutil

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    staging = target.with_name(f".{target.name}.{token}.tmp")
    staging.mkdir()
    try:
        yield staging
        aside = target.with_name(f".{target.name}.{token}.old")
        if target.exists():
            target.rename(aside)
        staging.rename(target)
        shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


Writer = Callable[[Path], object]
"""Writes one file's content to the path it is given (a staging name)."""


def publish_files(files: Mapping[Path, Writer]) -> list[Path]:
    """Write a set of files that belong together: every file is staged under a temporary name first, and
    only when all are written are they renamed onto their targets, in the given order (put the file that
    marks the set complete last). A failure or signal while staging leaves every target as it was and no
    temporary file behind; write faults (disk full, read-only, a folder in the way) are one-line errors."""
    staged: list[tuple[Path, Path]] = []
    try:
        for target, write in files.items():
            target = Path(target)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.stem}.{secrets.token_hex(4)}.tmp{target.suffix}")
                staged.append((tmp, target))
                write(tmp)
            except Exception as exc:  # OSError, or a library's own write error (safetensors)
                raise _error(f"cannot write {target}: {_reason(exc)}") from exc
        for tmp, target in staged:
            try:
                os.replace(tmp, target)
            except OSError as exc:
                raise _error(f"cannot write {target}: {_reason(exc)}") from exc
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    return [target for _, target in staged]


def png_writer(image: Image.Image, text: Mapping[str, str] | None = None) -> Writer:
    """A PNG of `image`, with `text` as tEXt chunks (e.g. a run id)."""
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    return lambda tmp: image.save(tmp, format="PNG", pnginfo=info)


def save_png(pixels: torch.Tensor, path: str | Path) -> Path:
    """Write [3,H,W] or [1,3,H,W] pixels in [-1,1] as an 8-bit RGB PNG, atomically."""
    return save_image(pixels_to_pil(pixels), path)


def save_image(image: Image.Image, path: str | Path) -> Path:
    """Write a PIL image as PNG, atomically."""
    return _write(path, png_writer(image))


def side_by_side(panels: list[tuple[str, Image.Image]], min_height: int = 192) -> Image.Image:
    """Captioned panels in one row, each scaled by the same integer factor (nearest: pixels stay visible)
    so that the row is at least `min_height` pixels high."""
    scale = max(1, -(-min_height // max(image.height for _, image in panels)))
    caption, gap = 18, 4
    width = sum(image.width * scale for _, image in panels) + gap * (len(panels) - 1)
    height = max(image.height for _, image in panels) * scale + caption
    row = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(row)
    x = 0
    for label, image in panels:
        big = image.convert("RGB").resize(
            (image.width * scale, image.height * scale), Image.Resampling.NEAREST
        )
        row.paste(big, (x, caption))
        draw.text((x + 2, 3), label[: max(4, big.width // 7)], fill="black")
        x += big.width + gap
    return row


def json_writer(obj: Any) -> Writer:
    """Strict JSON of `obj` (indent 2, UTF-8); see save_json."""
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    return lambda tmp: tmp.write_text(text, encoding="utf-8")


def save_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as strict JSON (indent 2, UTF-8), atomically.

    Non-finite floats (inf, -inf, nan) become ``null`` so that any JSON parser can read the file.
    numpy/torch scalars and arrays become numbers and lists; paths become strings.
    """
    return _write(path, json_writer(obj))


def save_latents(path: str | Path, z: torch.Tensor, metadata: Mapping[str, Any]) -> Path:
    """Write ``z`` (any shape; stored as contiguous float32) to safetensors under key "z_T", atomically.

    Each metadata value is stored JSON-encoded (same rules as save_json); the key "format" is
    reserved and set to "fastinv-latents/1".
    """
    return _write(path, latents_writer(z, metadata))


def latents_writer(z: torch.Tensor, metadata: Mapping[str, Any]) -> Writer:
    """The safetensors file save_latents writes."""
    if "format" in metadata:
        raise ValueError("metadata key 'format' is reserved")
    header: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise TypeError(f"metadata keys must be str, got {key!r}")
        header[key] = json.dumps(_jsonable(value), allow_nan=False, ensure_ascii=False)
    header["format"] = LATENTS_FORMAT
    tensor = z.detach().to(device="cpu", dtype=torch.float32).contiguous()
    return lambda tmp: save_file({LATENTS_KEY: tensor}, str(tmp), metadata=header)


def load_latents(path: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read a file written by save_latents: (z_T as float32 CPU tensor, decoded metadata without "format").

    Metadata values that are not valid JSON (files from other tools) are returned as plain strings.
    """
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise _error(f"latents not found: {name}")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            header = dict(f.metadata() or {})
            z = f.get_tensor(LATENTS_KEY) if LATENTS_KEY in keys else None
    except Exception as exc:
        raise _error(f"cannot read latents {name}: not a valid safetensors file ({_reason(exc)})") from exc
    if z is None:
        found = ", ".join(repr(k) for k in keys) or "none"
        raise _error(f"latents file {name} has no '{LATENTS_KEY}' tensor (tensors found: {found})")
    fmt = header.pop("format", None)
    if fmt is not None and fmt != LATENTS_FORMAT:
        raise _error(f"latents file {name} has format {fmt!r}; expected {LATENTS_FORMAT!r}")
    return z.to(torch.float32), {key: _json_or_str(value) for key, value in header.items()}


def _error(message: str) -> FastinvError:
    return FastinvError(" ".join(message.splitlines()))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognized image format"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split()) or type(exc).__name__


def _write(path: str | Path, write: Writer) -> Path:
    """One file through `publish_files`: staged, then renamed; write faults are one-line errors."""
    return publish_files({Path(path): write})[0]


def _open(path: Path, name: str, notes: list[str]) -> Image.Image:
    if not path.exists():
        raise _error(f"image not found: {name}")
    limit = max_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the check below replaces it
            img = Image.open(path)
        with img:
            width, height = img.size  # from the header: nothing decoded yet
            if width * height > limit:
                raise _error(
                    f"image {name} is {width}×{height} px ({width * height / 1e6:.0f} megapixels), over the "
                    f"limit of {limit / 1e6:g} megapixels (FASTINV_MAX_PIXELS raises it)"
                )
            return _prepare(img, notes)
    except FastinvError:
        raise
    except Image.DecompressionBombError as exc:
        raise _error(f"image {name} is over the pixel limit: {exc} (FASTINV_MAX_PIXELS raises it)") from exc
    except Exception as exc:
        raise _error(f"cannot read image {name}: {_reason(exc)}") from exc


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
            raise _error(f"image {name} has integer pixel values {lo}..{hi}, outside 16-bit 0..65535")
        notes.append(f"16-bit grayscale ({mode}) scaled by 1/65535 and replicated to RGB")
        return data.astype(np.uint16)[..., None]
    if mode == "F":
        notes.append("floating-point grayscale (F) clipped to [0, 1] and replicated to RGB")
        return np.clip(np.asarray(img, dtype=np.float32), 0, 1)[..., None]
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
        raise _error(f"cannot read image {name}: unsupported pixel mode {mode} ({_reason(exc)})") from exc
    notes.append(f"converted {mode} to RGB")
    return np.asarray(rgb)


def _check_array(arr: np.ndarray, name: str, notes: list[str]) -> np.ndarray:
    """Validate dtype and layout of an input array; return it as H×W×C."""
    if not (arr.dtype in (np.uint8, np.uint16, np.bool_) or np.issubdtype(arr.dtype, np.floating)):
        expected = "uint8, uint16, bool or float in [0, 1]"
        raise _error(f"cannot read image {name}: unsupported dtype {arr.dtype}; expected {expected}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        layout = "H×W or H×W×C with C in 1..4 (channels last)"
        raise _error(f"cannot read image {name}: shape {tuple(arr.shape)} is not {layout}")
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
            raise _error(f"image {name} has NaN pixel values")
        lo, hi = float(data.min()), float(data.max())
        if lo < -_FLOAT_SLACK or hi > 1 + _FLOAT_SLACK:
            raise _error(f"image {name} has float values in [{lo:g}, {hi:g}]; expected [0, 1]")
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


def _resize_cover(rgb: np.ndarray, size: tuple[int, int], notes: list[str]) -> np.ndarray:
    """Scale H×W×3 float data (Lanczos, per channel in float) to cover size=(W, H), then center-crop to it."""
    tw, th = size
    h, w = rgb.shape[:2]
    if (w, h) == (tw, th):
        return rgb
    scale = max(tw / w, th / h)
    nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
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


def _jsonable(obj: Any) -> Any:
    """Recursively convert to JSON-ready values; non-finite floats become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, Mapping):
        return {key: _jsonable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(value) for value in obj]
    if isinstance(obj, (np.ndarray, np.generic, torch.Tensor)):
        return _jsonable(obj.tolist())
    if isinstance(obj, PurePath):
        return str(obj)
    return obj


def _json_or_str(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
