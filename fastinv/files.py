"""Atomic, staged publishing of files, and fastinv's PNG, JSON and latents writers and readers.

`atomic_write` (one file), `publish_files` (a set of files, the last marks it complete) and `publish_folder`
(a whole folder) are the only ways fastinv replaces a file: readers see the old content or the new, never a
half-written file. Write faults are one-line :class:`FastinvError`s naming the file.
"""

import contextlib
import csv
import json
import math
import os
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo
from safetensors import safe_open
from safetensors.torch import save, save_file

from fastinv.errors import one_line, reason
from fastinv.images import pixels_to_pil

LATENTS_FORMAT = "fastinv-latents/1"
LATENTS_KEY = "z_T"


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
                tmp = _staging_name(target)
                staged.append((tmp, target))
                write(tmp)
            except Exception as exc:  # OSError, or a library's own write error (safetensors)
                raise one_line(f"cannot write {target}: {reason(exc)}") from exc
        for tmp, target in staged:
            try:
                os.replace(tmp, target)
            except OSError as exc:
                raise one_line(f"cannot write {target}: {reason(exc)}") from exc
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):  # (a name too long to stage): the first error is the one
                tmp.unlink(missing_ok=True)
        raise
    return [target for _, target in staged]


def _staging_name(target: Path) -> Path:
    """Where `publish_files` stages `target`: a hidden name beside it, unique to this write."""
    return target.with_name(f".{target.stem}.{secrets.token_hex(4)}.tmp{target.suffix}")


STAGING_BYTES = len(_staging_name(Path("x.y")).name) - len("x.y")
"""How much longer than its target's name a file's staging name is (`publish_files`)."""
NAME_MAX_BYTES = 255
"""The longest file name, in bytes (UTF-8), of the file systems fastinv writes to (ext4, APFS, NTFS)."""


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
    text = json.dumps(jsonable(obj), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    return lambda tmp: tmp.write_text(text, encoding="utf-8")


def save_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as strict JSON (indent 2, UTF-8), atomically.

    Non-finite floats (inf, -inf, nan) become ``null`` so that any JSON parser can read the file.
    numpy/torch scalars and arrays become numbers and lists; paths become strings.
    """
    return _write(path, json_writer(obj))


def save_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], path: str | Path) -> Path:
    """Write `rows` as CSV with a header of `columns` (each row's keys), atomically."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)

    return _write(path, write)


def save_latents(path: str | Path, z: torch.Tensor, metadata: Mapping[str, Any]) -> Path:
    """Write ``z`` (any shape; stored as contiguous float32) to safetensors under key "z_T", atomically.

    Each metadata value is stored JSON-encoded (same rules as save_json); the key "format" is
    reserved and set to "fastinv-latents/1".
    """
    return _write(path, latents_writer(z, metadata))


def latents_writer(z: torch.Tensor, metadata: Mapping[str, Any]) -> Writer:
    """The safetensors file save_latents writes."""
    tensor, header = _latents(z, metadata)
    return lambda tmp: save_file({LATENTS_KEY: tensor}, str(tmp), metadata=header)


def latents_bytes(z: torch.Tensor, metadata: Mapping[str, Any]) -> bytes:
    """The safetensors file save_latents writes, as bytes (to send rather than store)."""
    tensor, header = _latents(z, metadata)
    return save({LATENTS_KEY: tensor}, metadata=header)


def _latents(z: torch.Tensor, metadata: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, str]]:
    """(z as contiguous float32 on the CPU, the safetensors header of `metadata`) for save_latents."""
    if "format" in metadata:
        raise ValueError("metadata key 'format' is reserved")
    header: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise TypeError(f"metadata keys must be str, got {key!r}")
        header[key] = json.dumps(jsonable(value), allow_nan=False, ensure_ascii=False)
    header["format"] = LATENTS_FORMAT
    return z.detach().to(device="cpu", dtype=torch.float32).contiguous(), header


def load_latents(path: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read a file written by save_latents: (z_T as float32 CPU tensor, decoded metadata without "format").

    Metadata values that are not valid JSON (files from other tools) are returned as plain strings.
    """
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise one_line(f"latents not found: {name}")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            header = dict(f.metadata() or {})
            z = f.get_tensor(LATENTS_KEY) if LATENTS_KEY in keys else None
    except Exception as exc:
        raise one_line(f"cannot read latents {name}: not a valid safetensors file ({reason(exc)})") from exc
    if z is None:
        found = ", ".join(repr(k) for k in keys) or "none"
        raise one_line(f"latents file {name} has no '{LATENTS_KEY}' tensor (tensors found: {found})")
    fmt = header.pop("format", None)
    if fmt is not None and fmt != LATENTS_FORMAT:
        raise one_line(f"latents file {name} has format {fmt!r}; expected {LATENTS_FORMAT!r}")
    return z.to(torch.float32), {key: _json_or_str(value) for key, value in header.items()}


def _write(path: str | Path, write: Writer) -> Path:
    """One file through `publish_files`: staged, then renamed; write faults are one-line errors."""
    return publish_files({Path(path): write})[0]


def jsonable(obj: Any) -> Any:
    """`obj` as JSON-ready values, recursively (save_json's rules): non-finite floats become None, numpy and
    torch values numbers and lists, paths strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, Mapping):
        return {key: jsonable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(value) for value in obj]
    if isinstance(obj, (np.ndarray, np.generic, torch.Tensor)):
        return jsonable(obj.tolist())
    if isinstance(obj, PurePath):
        return str(obj)
    return obj


def _json_or_str(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
