"""Which weights an exported graph came from: a digest of the safetensors files of a model or solver folder.

`fastinv export` records the digest of the folder it exported in the graph's spec (`GraphSpec.weights`);
a backend refuses a graph whose digest differs from the folder it is asked to serve, so an export folder
exported from other weights with the same config is never used silently. Hashing a multi-GB transformer
takes seconds, so digests are cached in $FASTINV_CACHE_DIR/weights-digests.json by file path, size and
modification time (a changed file is hashed again).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from fastinv.errors import FastinvError
from fastinv.files import save_json

CHUNK = 1 << 24


def _cache_file() -> Path:
    return (
        Path(os.environ.get("FASTINV_CACHE_DIR", Path.home() / ".cache" / "fastinv")) / "weights-digests.json"
    )


def _file_digest(path: Path, cache: dict[str, str]) -> str:
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if key not in cache:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
        cache[key] = digest.hexdigest()
    return cache[key]


def weights_digest(folder: str | Path) -> str:
    """sha256 over the names and sha256s of the folder's *.safetensors files (sorted by name), as hex;
    a one-line error for a folder without any."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FastinvError(f"no safetensors weights in {folder}")
    cache_path = _cache_file()
    try:
        cache = json.loads(cache_path.read_text())
        cache = cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        cache = {}
    before = dict(cache)
    combined = hashlib.sha256()
    try:
        for path in files:
            combined.update(f"{path.name}:{_file_digest(path, cache)}\n".encode())
    except OSError as err:
        raise FastinvError(f"cannot read the weights in {folder}: {err.strerror or err}") from err
    if cache != before:
        with contextlib.suppress(FastinvError):  # a read-only cache only costs the next run a re-hash
            save_json(cache, cache_path)
    return combined.hexdigest()


def expect_weights(source: Path, recorded: str, folder: str | Path | None) -> None:
    """One-line error when the graph at `source` records weights (`recorded`, a digest) other than those of
    `folder`; nothing to check when either is unknown."""
    if not recorded or folder is None:
        return
    if weights_digest(folder) != recorded:
        raise FastinvError(
            f"{source} was exported from other weights than {folder} (same config, different tensors): "
            "export it again from this folder"
        )
