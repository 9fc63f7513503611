"""`fastinv invert --ray`: the plain run's batches (`fastinv.folders.batches`) on a Ray Data pipeline.

`ray.data.from_items` holds one row per batch, so that Ray inverts exactly the batches the plain run does
(batched and single inversions differ by float rounding) and the files are the same. `map_batches` runs the
rows on a fixed pool of actors (`InvertWorker`): each loads one Inverter once, with the run's options, and
runs its rows through `folders.invert_items`, which publishes each image's files atomically and returns
its outcomes; the driver collects them into the manifest.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastinv.errors import FastinvError, reason
from fastinv.request_checks import check_run_names

if TYPE_CHECKING:  # the drivers of `fastinv serve` and `invert --ray` check and connect without torch
    from fastinv.folders import Item
    from fastinv.pipeline import InversionJob

INSTALL = "pip install 'fastinv[ray]'"
LOCAL = "local"
"""The --ray value that starts a Ray of its own on this machine for the run."""


def check_installed(needed_by: str = "--ray", *modules: str) -> None:
    """A one-line error naming the install command when Ray, or another of the `modules` it brings (e.g.
    Serve's fastapi), is missing (without importing them)."""
    if any(importlib.util.find_spec(module) is None for module in ("ray", *modules)):
        raise FastinvError(f"{needed_by} needs Ray, which is not installed: {INSTALL}")


def check_load_options(load_options: dict[str, Any]) -> None:
    """The one-line errors a worker's `fastinv.load(**load_options)` would raise for a device, dtype or
    kernel backend name no machine runs, or for a missing or malformed model folder, solver folder,
    embeddings file or export folder, raised before Ray starts (no weights are read). Imports the loaders
    (torch) only for the folders it is given."""
    check_run_names(*(load_options.get(name, "auto") for name in ("device", "dtype", "kernels")))
    if load_options.get("model_dir") is not None:
        from fastinv.models.loading import inspect_folder

        inspect_folder(Path(load_options["model_dir"]))
    if load_options.get("solver") is not None:
        from fastinv.solver.model import read_solver_config

        read_solver_config(load_options["solver"])
    embeddings, export_dir = load_options.get("embeddings"), load_options.get("export_dir")
    if embeddings is not None and not Path(embeddings).is_file():
        raise FastinvError(f"prompt embeddings file not found: {embeddings}")
    if export_dir is not None and not Path(export_dir).is_dir():
        raise FastinvError(f"export folder not found: {export_dir}")


@contextmanager
def session(address: str) -> Iterator[None]:
    """Ray for one run: LOCAL starts a local Ray; another value is a cluster's address ("auto", "HOST:PORT",
    "ray://HOST:PORT") to connect to. Either is shut down (disconnected) at the end, on errors and signals
    too. A process already connected to Ray (its own `ray.init`) keeps that connection, whatever `address`."""
    import ray

    if ray.is_initialized():
        yield
        return
    if address != LOCAL:
        _check_reachable(address)
    terminate = signal.getsignal(signal.SIGTERM)
    try:
        try:
            if address == LOCAL:
                ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
            else:
                ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        except Exception as err:  # ConnectionError, or Ray's own for a bad address
            raise FastinvError(f"cannot start or reach Ray ({address}): {reason(err)}") from err
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, terminate)  # ray.init's handler would exit with status 15
        yield
    finally:
        ray.shutdown()


def pool(workers: int | None) -> tuple[int, dict[str, int]]:
    """(actors, resources of each) on the connected Ray: one actor per GPU of the cluster, or where it has
    none one per CPU; `workers` asks for that many instead (at most one per GPU or CPU)."""
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    unit, slots, kind = ({"num_gpus": 1}, gpus, "GPUs") if gpus else ({"num_cpus": 1}, cpus, "CPUs")
    if slots < 1:
        raise FastinvError("the Ray cluster has no CPU or GPU to run on")
    if workers is not None and workers > slots:
        raise FastinvError(f"--workers {workers}: the Ray cluster has {slots} {kind}, one per worker")
    return workers or slots, unit


def invert_batches(
    batches: Sequence[Sequence[Item]],
    load_options: dict[str, Any],
    job: InversionJob,
    out: Path,
    workers: int | None,
    on_outcomes: Callable[[list[dict[str, Any]]], None],
) -> int:
    """Invert `batches` on the connected Ray; `on_outcomes` gets each batch's outcomes as it finishes (in
    the order they finish). `load_options`: `fastinv.load`'s keywords. Returns the number of actors. Turns
    this process's Ray Data progress bars and log off: the CLI shows its own bar and one error line."""
    import ray.data

    # Ray's driver-side bar manager (ray.experimental.tqdm_ray), which it starts to print a failed actor's
    # error even with the bars off, would otherwise replace builtins.print in this process for good
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    actors, unit = pool(workers)
    actors = min(actors, len(batches))
    rows = [{"batch": json.dumps([asdict(item) for item in batch])} for batch in batches]
    arguments = {"load_options": load_options, "job": job, "out": str(out.resolve()), "cwd": os.getcwd()}
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        InvertWorker,
        fn_constructor_kwargs=arguments,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=actors),
        **unit,
    )
    for row in _rows(dataset):
        on_outcomes(json.loads(row["outcomes"]))
    return actors


class InvertWorker:
    """A Ray Data actor: one Inverter, loaded once (`fastinv.load(**load_options)`), inverting the batches
    of the rows it is given into `out`; `cwd` is the driver's working folder, where relative paths start."""

    def __init__(self, load_options: dict[str, Any], job: InversionJob, out: str, cwd: str) -> None:
        if Path(cwd).is_dir():  # a cluster's node may not have it: then paths must be absolute
            os.chdir(cwd)
        from fastinv.api import load

        self.inverter = load(**load_options)
        # as in the plain run, a solver that cannot load fails the run once, not each of its images
        self.inverter.prepare(job.method, **job.options)
        self.job, self.out = job, Path(out)

    def __call__(self, rows: dict[str, Any]) -> dict[str, list[str]]:
        """rows["batch"]: JSON lists of Items → {"outcomes": the JSON list of each batch's outcomes}."""
        from fastinv.folders import Item, invert_items

        outcomes = []
        for batch in rows["batch"]:
            items = [Item(**item) for item in json.loads(batch)]
            outcomes.append(json.dumps(invert_items(self.inverter, items, self.job, self.out)))
        return {"outcomes": outcomes}


def _check_reachable(address: str) -> None:
    """A one-line error, instead of Ray's minute of retries, when a HOST:PORT or ray://HOST:PORT address takes
    no TCP connection; other forms ("auto") are left to Ray."""
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        raise FastinvError(f"cannot reach Ray at {address}: {reason(err)}") from err


def _rows(dataset: Any) -> Iterator[dict[str, Any]]:
    """The dataset's rows as they are computed; a failure inside Ray becomes one line naming its cause."""
    try:
        yield from dataset.iter_rows()
    except Exception as err:
        raise FastinvError(f"the Ray run failed: {failure_cause(err)}") from err


_FASTINV_ERROR = f"{FastinvError.__module__}.{FastinvError.__qualname__}: "


def failure_cause(err: BaseException) -> str:
    """Why a Ray run (or a Serve deployment) failed, on one line: a worker's FastinvError message where the
    exception chain holds one (Ray passes an actor's error on as the text of its traceback), else the last
    line of Ray's message."""
    chain: list[BaseException] = []
    link: BaseException | None = err
    while link is not None and link not in chain:
        chain.append(link)
        link = getattr(link, "cause", None) or link.__cause__  # RayTaskError.cause; Ray Data's wrappers
    texts = [_lines(link) for link in chain]
    for link, lines in zip(chain, texts, strict=True):
        named = [line.removeprefix(_FASTINV_ERROR) for line in lines if line.startswith(_FASTINV_ERROR)]
        if named:
            return named[-1]
        if isinstance(link, FastinvError):
            return reason(link)
    return next((lines[-1] for lines in texts if lines), type(err).__name__)


def _lines(err: BaseException) -> list[str]:
    """The non-empty lines of `err`'s message, without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    return [line.strip() for line in text.splitlines() if line.strip()]
