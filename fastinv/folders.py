"""Many images in one `fastinv invert` run: which files the arguments name (files, folders, glob patterns)
and their output names, which of them OUT already holds (resume), inverting a batch of them with one error
per unreadable image, and OUT/manifest.jsonl.

The plain run and the Ray Data run (`fastinv.ray_data`) both cut the pending images into the same batches
(`batches`) and run each through `invert_items`, so both write the same files.
"""

from __future__ import annotations

import glob
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastinv.api import Inverter
from fastinv.conditioning import INVERSION_EMBEDDED_GUIDANCE
from fastinv.errors import FastinvError, reason
from fastinv.files import NAME_MAX_BYTES, STAGING_BYTES, publish_files
from fastinv.images import IMAGE_SUFFIXES, image_files, is_image_file, not_found
from fastinv.methods import AUTO, auto_method, method_options
from fastinv.models import DEFAULT_MODEL
from fastinv.outputs import INVERSION_FILES, read_output_set, recorded_path
from fastinv.pipeline import InversionJob, StepHook, invert_batch_to_files

MANIFEST = "manifest.jsonl"
MANIFEST_FIELDS = ("image", "name", "status", "seconds", "metrics", "peak_memory_mib", "error")
"""The keys of each manifest line; status is "ok", "skipped" (resume) or "error"; peak_memory_mib: the higher
of the image's inversion and reconstruction peaks (`outputs.peak_memory_record`), null unless "ok"."""
MANIFEST_INTERVAL_S = 1.0
"""The manifest is rewritten at most this often while a run goes on, and always at its end."""
_LOOKED_FOR = f"looked for {', '.join(sorted(IMAGE_SUFFIXES))}"


@dataclass(frozen=True)
class Item:
    """One input image of a run: its position in the run, its path as given, its output name (file stem)."""

    index: int
    image: str
    name: str


def expand_inputs(arguments: Iterable[str | Path], out: Path) -> list[Path]:
    """The image files `arguments` name, in order, each once: a file as is (any format PIL reads); a folder's
    image files (`fastinv.images.image_files`: by suffix, not recursive, sorted); a glob pattern's image files
    (sorted; `**` recurses). Folders and patterns never yield files inside `out`. A missing file, a FIFO or
    device named as an argument, or a folder or pattern without image files, is a one-line error; a broken
    link or FIFO that a folder or pattern yields is an image that fails on its own (see `_images`)."""
    found: dict[Path, Path] = {}  # resolved → as given
    out = out.resolve()
    for argument in arguments:
        path = Path(argument)
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = _images(image_files(path), out, f"no image files in {path}")
        elif path.exists():
            raise FastinvError(f"not a regular file or folder: {argument}")
        elif any(char in str(argument) for char in "*?["):
            matches = sorted(_glob(str(argument)))
            files = _images(matches, out, f"no image files match {str(argument)!r}")
        else:
            raise FastinvError(not_found(path, str(argument)))
        for file in files:
            found.setdefault(file.resolve(), file)
    return list(found.values())


def _glob(pattern: str) -> list[Path]:
    """The paths `pattern` matches, as `glob.glob` finds them (hidden files only where the pattern names
    them), except that `**` does not follow symbolic links to folders: a link to a parent would loop."""
    if "**" not in pattern:
        return [Path(match) for match in glob.glob(pattern)]
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root, rest = Path(*parts[:fixed]) if fixed else Path(), parts[fixed:]
    hidden = any(part.startswith(".") for part in rest)
    return [
        path
        for path in root.glob("/".join(rest))
        if hidden or not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]


def _images(paths: Iterable[Path], out: Path, nothing: str) -> list[Path]:
    """The image files among `paths` that are not inside `out`; none is the error `nothing`. Entries named
    like images that are not regular files (a broken link, a FIFO) are kept: each is an "error" outcome of
    its own, not silently left out; folders named like images are left out."""
    images = [path for path in paths if is_image_file(path) and not path.is_dir()]
    kept = [path for path in images if out not in path.resolve().parents]
    if not kept:
        inside = f"; the {len(images)} inside --out {out} are not taken" if images else ""
        raise FastinvError(f"{nothing} ({_LOOKED_FOR}{inside})")
    return kept


def output_names(images: Sequence[Path]) -> dict[Path, str]:
    """Each image's output name, its file stem. Two images with one stem are a one-line error: a name must
    not depend on what else a run holds, or a resumed run would not find its outputs."""
    stems: dict[str, Path] = {}
    for image in images:
        if image.stem in stems:
            raise FastinvError(f"{stems[image.stem]} and {image} would write the same outputs; rename one")
        stems[image.stem] = image
    return {image: stem for stem, image in stems.items()}


def name_problem(item: Item) -> str | None:
    """Why `item`'s outputs cannot be written, checked before any work: a file name that is not valid UTF-8
    (records and the manifest are UTF-8 JSON), or an output name too long to stage; else None."""
    try:
        item.image.encode("utf-8")
    except UnicodeEncodeError:
        return "its file name is not valid UTF-8, which the records and the manifest need: rename it"
    longest = max(len(f"{item.name}{suffix}".encode()) for suffix in INVERSION_FILES) + STAGING_BYTES
    if longest > NAME_MAX_BYTES:
        room = NAME_MAX_BYTES - longest + len(item.name.encode())
        return f"its output names would be too long: rename it to at most {room} bytes before the suffix"
    return None


def printable(path: str) -> str:
    """`path` as valid text: bytes that are not UTF-8 (kept by Python as surrogates) as \\x escapes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def batches(items: Sequence[Item], size: int) -> list[list[Item]]:
    """`items` cut into consecutive batches of `size` (the last may be shorter)."""
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


@dataclass(frozen=True)
class Settings:
    """What an output set must have been made with to be kept by a resumed run: the model folder, the
    method ("auto" resolved as the model folder says) and its options, the solver of a method that takes one
    (--solver, else the model folder's solver/), steps, prompt, guidance and embedded guidance, and the image
    file. Paths are compared, not contents. Backend, device and dtype are not: they are resolved where the
    model loads, which a Ray run's driver does not do."""

    model: str
    method: str
    options: dict[str, Any]
    solver: str | None
    steps: int
    prompt: str
    guidance: float
    embedded_guidance: float

    @classmethod
    def of(cls, job: InversionJob, model: Path | None, solver: Path | None) -> Settings:
        """The settings of a run of `job` on `model` (None: the shipped one) with `solver` (--solver)."""
        folder = DEFAULT_MODEL if model is None else Path(model)
        # `auto` as Inverter.resolve_method resolves it without loading the model; an export-only solver
        # (no solver folder) reads as none here, so such sets are re-run rather than wrongly kept
        own = folder / "solver"  # the folder's solver, which Inverter loads without --solver
        has_solver = solver is not None or (own / "config.json").is_file()
        method = auto_method(has_solver) if job.method == AUTO else job.method
        options = _json(dict(job.options))
        named = options.pop("solver", None)
        if named is None and "solver" in method_options(method):
            named = str(solver if solver is not None else own)
        embedded = INVERSION_EMBEDDED_GUIDANCE if job.embedded_guidance is None else job.embedded_guidance
        return cls(str(folder), method, options, named, job.steps, job.prompt, job.guidance, embedded)

    def made(self, record: dict[str, Any], image: str) -> bool:
        """Whether the metrics record `record` of an output set was made of `image` with these settings.
        The record's paths are read from its working folder and this run's from this one, so a relative
        path means the same file in both runs; a record without a working folder, whose relative paths
        could name other files, is re-run."""
        options = record.get("method_options") or {}
        if not isinstance(options, dict):  # a damaged record: re-run
            return False
        options = dict(options)
        solver = options.pop("solver", None)
        return (
            _same_path(record, record.get("model"), self.model)
            and record.get("method") == self.method
            and _json(options) == self.options
            and _same_solver(record, solver, self.solver)
            and record.get("steps") == self.steps
            and record.get("prompt") == self.prompt
            and record.get("guidance") == self.guidance
            and record.get("embedded_guidance") in (None, self.embedded_guidance)  # None: the model has none
            and _same_path(record, record.get("image"), image)
        )


def _same_solver(record: dict[str, Any], recorded: Any, solver: str | None) -> bool:
    """Whether `record`'s solver is `solver` (None: the method takes none): the same folder, or an exported
    solver graph (a file, where a solver is a folder), which the backend loaded for that folder."""
    if solver is None or recorded is None:
        return recorded is solver
    named = recorded_path(record, recorded)
    return named is not None and (named.is_file() or named.resolve() == Path(solver).resolve())


def _same_path(record: dict[str, Any], recorded: Any, path: str) -> bool:
    """Whether a path `record` names (`outputs.recorded_path`) is `path`, taken from this working folder."""
    named = recorded_path(record, recorded)
    return named is not None and named.resolve() == Path(path).resolve()


def completed(out: Path, item: Item, settings: Settings) -> dict[str, Any] | None:
    """The "skipped" outcome of `item` when `out` holds its complete output set made with `settings`; None
    when it must be (re-)run: files missing, mixed from two runs, unreadable, or made otherwise."""
    try:
        record = read_output_set(out, item.name)
    except FastinvError:
        return None
    if record is None or not isinstance(record.get("metrics"), dict) or not settings.made(record, item.image):
        return None
    return outcome(item, "skipped", metrics=record["metrics"])


def outcome(
    item: Item,
    status: str,
    *,
    seconds: float | None = None,
    metrics: dict[str, Any] | None = None,
    peak_memory_mib: float | None = None,
    error: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What became of one image: its manifest line (MANIFEST_FIELDS), its index, and for the CLI's table
    `details` (size, NFE, seconds of each stage, notes) of an image inverted now."""
    scores = None if metrics is None else {key: metrics.get(key) for key in ("psnr", "ssim", "lpips")}
    return {
        "index": item.index,
        "image": printable(item.image),
        "name": printable(item.name),
        "status": status,
        "seconds": seconds,
        "metrics": scores,
        "peak_memory_mib": peak_memory_mib,
        "error": error,
        "details": details,
    }


def invert_items(
    inverter: Inverter, items: Sequence[Item], job: InversionJob, out: Path, hook: StepHook | None = None
) -> list[dict[str, Any]]:
    """Steps 1–5 for one batch (`pipeline.invert_batch_to_files`): the outcomes, in item order. An image that
    cannot be read is an "error" outcome and the others go on; a failed inversion fails its whole batch."""
    done: dict[int, dict[str, Any]] = {}
    pictures = {}
    for item in items:
        try:
            pictures[item] = inverter.prepare_image(item.image)
        except FastinvError as err:
            done[item.index] = outcome(item, "error", error=reason(err))
    if pictures:
        try:
            records = invert_batch_to_files(
                inverter, list(pictures.values()), job, out, [item.name for item in pictures], hook
            )
        except FastinvError as err:
            done |= {item.index: outcome(item, "error", error=reason(err)) for item in pictures}
        else:
            done |= {
                item.index: _inverted(item, record) for item, record in zip(pictures, records, strict=True)
            }
    return [done[item.index] for item in items]


def _inverted(item: Item, record: dict[str, Any]) -> dict[str, Any]:
    """The "ok" outcome of `item` from the metrics record `write_outputs` published."""
    invert_s, reconstruct_s = record["seconds_inversion"], record["seconds_reconstruction"]
    details = {
        "size": record["size"],
        "nfe": record["nfe_inversion"],
        "seconds_inversion": invert_s,
        "seconds_reconstruction": reconstruct_s,
        "notes": record["image_notes"],
    }
    peaks = [mib for mib in record["peak_memory_mib"].values() if mib is not None]
    return outcome(
        item,
        "ok",
        seconds=invert_s + reconstruct_s,
        metrics=record["metrics"],
        peak_memory_mib=max(peaks, default=None),
        details=details,
    )


class Manifest:
    """OUT/manifest.jsonl of one run: one JSON line (MANIFEST_FIELDS) per image finished so far, in input
    order. Each rewrite publishes the whole file atomically (`files.publish_files`), at most every
    MANIFEST_INTERVAL_S while outcomes arrive and at `write`; nothing is written before the first outcome."""

    def __init__(self, out: Path) -> None:
        self.path = out / MANIFEST
        self.outcomes: dict[int, dict[str, Any]] = {}
        self._written = -math.inf

    def add(self, outcomes: Iterable[dict[str, Any]]) -> None:
        """Record outcomes; rewrite the file if it was last written MANIFEST_INTERVAL_S ago or more."""
        self.outcomes |= {record["index"]: record for record in outcomes}
        if time.monotonic() - self._written >= MANIFEST_INTERVAL_S:
            self.write()

    def write(self) -> None:
        """Publish the file with every outcome so far (none yet: nothing)."""
        if not self.outcomes:
            return
        lines = [
            json.dumps(
                _finite({key: record[key] for key in MANIFEST_FIELDS}), allow_nan=False, ensure_ascii=False
            )
            for _, record in sorted(self.outcomes.items())
        ]
        text = "\n".join(lines) + "\n"
        publish_files({self.path: lambda tmp: tmp.write_text(text, encoding="utf-8")})
        self._written = time.monotonic()

    def by_status(self, status: str) -> list[dict[str, Any]]:
        """The outcomes with `status`, in input order."""
        return [record for _, record in sorted(self.outcomes.items()) if record["status"] == status]


def _json(value: Any) -> Any:
    """`value` as JSON gives it back (tuples become lists), to compare options with a record's."""
    return json.loads(json.dumps(value))


def _finite(value: Any) -> Any:
    """`value` with non-finite floats (an infinite PSNR) as None, for strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    return value
