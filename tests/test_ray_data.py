"""`fastinv invert --ray`: a Ray Data run on 2 local workers writes the plain run's files and manifest
(shipped model, 64×64 photos, 2 Euler steps, batches of 2)."""

from __future__ import annotations

import builtins
import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cli_runner import cli
from PIL import Image
from skimage import data

from fastinv.files import load_latents
from fastinv.folders import MANIFEST
from fastinv.outputs import read_output_set

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray's own fields

RUN = ["--method", "euler", "--steps", "2", "--batch-size", "2"]
TIMED = ("seconds_inversion", "seconds_reconstruction", "run_id", "peak_memory_mib")
PRINT = builtins.print


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray for the module (2 CPUs), which `fastinv invert --ray` uses since it is connected."""
    terminate = signal.getsignal(signal.SIGTERM)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminate)  # ray.init's own handler would exit pytest on SIGTERM
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three 64×64 photos and broken.png (garbage bytes)."""
    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "rocket"):
        Image.fromarray(getattr(data, name)()).resize((64, 64)).save(folder / f"{name}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def untimed(record: dict) -> dict:
    """A record without what differs between two processes: times, peak memory, and LPIPS below 1e-6
    (a conv network, whose sums depend on the thread count); PSNR and SSIM stay bit for bit."""
    kept = {k: v for k, v in record.items() if k not in TIMED}
    if kept.get("metrics"):
        kept["metrics"] = {**kept["metrics"], "lpips": pytest.approx(kept["metrics"]["lpips"], rel=1e-6)}
    return kept


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]


def test_a_ray_run_writes_the_plain_runs_files(local_ray: None, photos: Path, tmp_path: Path) -> None:
    plain, on_ray = tmp_path / "plain", tmp_path / "ray"
    code, _, err = cli(["invert", str(photos), "--out", str(plain), *RUN])
    assert code == 2 and "1 of 4 images failed" in err
    code, stdout, err = cli(["invert", str(photos), "--out", str(on_ray), *RUN, "--ray", "local"])
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: 1 of 4 images failed"), err
    assert "on Ray (2 workers)" in stdout
    # PSNR and SSIM bit for bit; LPIPS (a conv network, whose sums depend on the thread count) to 1e-6
    assert [(r["name"], r["status"], r["metrics"], r["error"]) for r in manifest(on_ray)] == [
        (
            r["name"],
            r["status"],
            r["metrics"] and {**r["metrics"], "lpips": pytest.approx(r["metrics"]["lpips"], rel=1e-6)},
            r["error"],
        )
        for r in manifest(plain)
    ]
    assert [r["status"] for r in manifest(on_ray)] == ["ok", "error", "ok", "ok"]
    for stem in ("astronaut", "coffee", "rocket"):
        z_plain, meta_plain = load_latents(plain / f"{stem}.zT.safetensors")
        z_ray, meta_ray = load_latents(on_ray / f"{stem}.zT.safetensors")
        assert torch.equal(z_plain, z_ray)
        assert {k: v for k, v in meta_plain.items() if k != "run_id"} == {
            k: v for k, v in meta_ray.items() if k != "run_id"
        }
        record_plain, record_ray = read_output_set(plain, stem), read_output_set(on_ray, stem)
        assert untimed(record_ray) == untimed(record_plain)
        assert (
            Image.open(plain / f"{stem}.recon.png").tobytes()
            == Image.open(on_ray / f"{stem}.recon.png").tobytes()
        )


def test_a_solver_that_does_not_fit_fails_the_ray_run_once(
    local_ray: None, photos: Path, tiny_solver_dir: Path, tmp_path: Path
) -> None:
    """The tiny SD3's solver on the shipped pixel-space model: one line, as in the plain run (each worker
    loads the method's solver before its first image), not an error line per image. The failure leaves this
    process's builtins.print alone (Ray's bar manager, which prints the actor's error, would replace it)."""
    from ray.experimental import tqdm_ray

    deepinv = ["--method", "deepinv", "--steps", "2", "--solver", str(tiny_solver_dir)]
    image = str(photos / "coffee.png")
    messages = []
    for extra in ([], ["--ray", "local"]):
        code, _, err = cli(["invert", image, "--out", str(tmp_path / f"o{len(extra)}"), *deepinv, *extra])
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
        messages.append(lines[0].removeprefix("error: ").removeprefix("the Ray run failed: "))
    assert messages[0] == messages[1] and "does not fit this model" in messages[0]
    tqdm_ray.instance()  # the manager Ray started for the actor's error, or a new one: as it would start
    assert builtins.print is PRINT
