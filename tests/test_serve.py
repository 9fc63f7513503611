"""`fastinv serve`: the real command (a local Ray, 2 model replicas of the shipped model) over real HTTP.
Concurrent batched inversions equal in-process ones; bad requests are one-line JSON errors; a model replica
killed during a burst costs retryable 503s only, and Serve replaces it; SIGTERM leaves no process behind."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import cli
from PIL import Image
from skimage import data

import fastinv
from fastinv.errors import FastinvError
from fastinv.files import jsonable, load_latents
from fastinv.images import LoadedImage
from fastinv.outputs import inversion_record, mask_record
from fastinv.pipeline import EditJob, InversionJob, edit_image

pytest.importorskip("ray.serve")
requests = pytest.importorskip("requests")
import psutil  # noqa: E402  (Ray ships it; importable once ray is)
import ray  # noqa: E402
from ray import serve  # noqa: E402

from fastinv import replica  # noqa: E402
from fastinv import serve as service  # noqa: E402
from fastinv.serve import EditRequest, InvertRequest  # noqa: E402

STEPS = 3
CLIENT_TIMEOUT_S = 60
START_S = 150
"""How long a test waits for the service, or a replacement replica, to start: under load (three workers on
two cores) a replacement replica took over 88 s after the kill, burst included."""
METHODS = ("euler", "warm_fixed_point")


@dataclass
class Running:
    """The `fastinv serve` process, its URL and the address of the Ray it started."""

    process: subprocess.Popen[str]
    url: str
    stderr: list[str]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    """PNG files: two 64×64 photos and a 96×80 one (resized by the model's fitting)."""
    files = {}
    for name, size in (("astronaut", (64, 64)), ("coffee", (64, 64)), ("rocket", (96, 80))):
        buffer = io.BytesIO()
        Image.fromarray(getattr(data, name)()).resize(size).save(buffer, format="PNG")
        files[name] = buffer.getvalue()
    return files


@pytest.fixture(scope="module")
def inverter() -> fastinv.Inverter:
    return fastinv.load()


@pytest.fixture(scope="module")
def expected(
    inverter: fastinv.Inverter, photos: dict[str, bytes]
) -> dict[tuple[str, str], fastinv.Inversion]:
    """The in-process inversion of each photo by each method, at STEPS steps."""
    return {
        (name, method): inverter.invert(body, method=method, steps=STEPS)
        for name, body in photos.items()
        for method in METHODS
    }


@pytest.fixture(scope="module")
def running(request: pytest.FixtureRequest) -> Iterator[Running]:
    """`fastinv serve --replicas 2` on a free port, with this process connected to the Ray it started (to kill
    a replica and read Serve's status); SIGTERM at the end unless a test has stopped it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fastinv", "serve", "--replicas", "2", "--port", str(free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # RAY_AUTH_MODE=disabled: no token for this process to present when it connects to that Ray
        env=os.environ | {"COLUMNS": "400", "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "disabled"},
    )
    stdout: list[str] = []
    stderr: list[str] = []
    for stream, lines in ((process.stdout, stdout), (process.stderr, stderr)):
        threading.Thread(target=lines.extend, args=(stream,), daemon=True).start()
    try:
        request.getfixturevalue("expected")  # while the service starts
        deadline = time.monotonic() + START_S
        while not any(line.startswith("serving at") for line in stdout):
            assert process.poll() is None and time.monotonic() < deadline, "".join(stderr)[-2000:]
            time.sleep(0.2)
        words = next(line for line in stdout if line.startswith("serving at")).split()
        terminate = signal.getsignal(signal.SIGTERM)
        ray.init(address=words[words.index("Ray") + 2].rstrip(":"), log_to_driver=False)
        signal.signal(signal.SIGTERM, terminate)  # ray.init's own handler would exit pytest on SIGTERM
        yield Running(process, words[2], stderr)
    finally:
        ray.shutdown()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


def png_pixels(text: str) -> np.ndarray:
    """The pixels (int) of a base64 PNG file of an answer."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))), dtype=int)


def post(url: str, body: bytes, **query: object) -> requests.Response:
    params = {key: str(value).lower() if isinstance(value, bool) else value for key, value in query.items()}
    return requests.post(url, data=body, params=params, timeout=CLIENT_TIMEOUT_S)


def error_of(response: requests.Response) -> str:
    """The one-line error of a JSON error answer."""
    assert response.headers["content-type"] == "application/json"
    assert b"\n" not in response.content
    answer = response.json()
    assert list(answer) == ["error"] and answer["error"] and "\n" not in answer["error"], answer
    return answer["error"]


def check_inversion(answer: dict, want: fastinv.Inversion, inverter: fastinv.Inverter, folder: Path) -> None:
    """The answer holds `want`'s z_T (to 1e-5: batched) in a .zT.safetensors file with the CLI's metadata."""
    path = folder / f"{threading.get_ident()}-{time.monotonic_ns()}.zT.safetensors"
    path.write_bytes(base64.b64decode(answer["z_T"]))
    z_T, metadata = load_latents(path)
    assert float((z_T - want.z_T).abs().max()) <= 1e-5
    assert (answer["method"], answer["steps"], answer["nfe"]) == (want.method, STEPS, want.result.nfe)
    record = json.loads(json.dumps(jsonable(inversion_record(inverter.model, want))))
    assert metadata.pop("image") == "<bytes>" and len(metadata.pop("run_id")) == 16
    assert metadata == {key: value for key, value in record.items() if key != "image"}


def test_invert_groups_share_a_call_only_with_one_job_and_size(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def invert_images(
        inverter: object, pictures: list[LoadedImage], job: InversionJob, hook: object
    ) -> list[str]:
        calls.append((job.method, job.steps, job.prompt, [picture.pixels.shape[-1] for picture in pictures]))
        if job.prompt == "boom":
            raise RuntimeError("boom")
        return [f"{job.method}/{job.steps}/{index}" for index in range(len(pictures))]

    monkeypatch.setattr(fastinv.pipeline, "invert_images", invert_images)  # what invert_groups calls
    small, large = (LoadedImage(torch.zeros(1, 3, side, side), "<array>", (side, side)) for side in (8, 16))
    euler = InversionJob(method="euler", steps=2)
    jobs = [
        (small, euler),
        (large, euler),
        (small, InversionJob(method="euler", steps=3)),
        (small, euler),
        (small, InversionJob(prompt="boom", method="euler", steps=2)),
        (small, InversionJob(method="warm_fixed_point", steps=2)),
    ]
    pending = [(picture, job, math.inf) for picture, job in jobs]
    outcomes = replica.invert_groups(None, pending)
    assert calls == [
        ("euler", 2, "", [8, 8]),
        ("euler", 2, "", [16]),
        ("euler", 3, "", [8]),
        ("euler", 2, "boom", [8]),
        ("warm_fixed_point", 2, "", [8]),
    ]
    assert outcomes[:4] == [("euler/2/0", 2), ("euler/2/0", 1), ("euler/3/0", 1), ("euler/2/1", 2)]
    assert isinstance(outcomes[4], RuntimeError) and outcomes[5] == ("warm_fixed_point/2/0", 1)


def test_work_past_its_deadline_stops_between_steps(
    inverter: fastinv.Inverter, photos: dict[str, bytes]
) -> None:
    """A thread cannot be cancelled: a request's inversion, reconstruction or edit stops at the first step
    past its deadline (the gateway's timeout, when it answered 503), and the replica is free again."""
    forwards: list[int] = []
    counting = inverter.model.velocity.network.register_forward_pre_hook(lambda *args: forwards.append(1))
    try:
        picture = inverter.prepare_image(photos["coffee"])
        job = InversionJob(method="euler", steps=1000)
        past, future = time.monotonic() - 1, time.monotonic() + 600
        (outcome,) = replica.invert_groups(inverter, [(picture, job, past)])
        assert isinstance(outcome, service.RequestError) and outcome.status == 503, outcome
        assert "stopped while it was at invert" in str(outcome) and len(forwards) == 1  # euler: 1 per step
        # a group stops only once its last deadline has passed
        short = InversionJob(method="euler", steps=3)
        outcomes = replica.invert_groups(inverter, [(picture, short, past), (picture, short, future)])
        assert [type(o) for o in outcomes] == [tuple, tuple] and outcomes[0][0].result.nfe == 3
        forwards.clear()
        with pytest.raises(service.RequestError, match="stopped while it was at invert"):
            edit_image(inverter, picture, job, EditJob("a cat"), replica.stop_at(past))
        assert len(forwards) == 1
    finally:
        counting.remove()


def test_spelt_out_defaults_are_the_libraries() -> None:
    """The gateway imports no torch, so its queries spell out two defaults of torch-importing modules."""
    from fastinv.masks import DEFAULT_FEATHER
    from fastinv.methods import AUTO

    assert InvertRequest().method == EditRequest("x").method == AUTO
    assert EditRequest("x").mask_feather == DEFAULT_FEATHER


def test_the_driver_and_the_gateway_import_no_torch() -> None:
    """What the `fastinv serve` driver imports to check its options, start Ray and bind the deployments
    (and the gateway, to answer), in a fresh interpreter: no torch, no diffusers (seconds off each start)."""
    code = (
        "import sys, fastinv.cli, fastinv.serve, fastinv.replica\n"
        "from fastinv.ray_data import check_load_options\n"
        "check_load_options({'model_dir': None, 'solver': None})\n"
        "print(sorted({'torch', 'diffusers'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_error_response_maps_failures_to_statuses() -> None:
    from ray.exceptions import ActorDiedError, RayTaskError

    in_replica = RayTaskError(
        "invert", "Traceback …\nFastinvError: no", FastinvError("no")
    ).as_instanceof_cause()
    cases = [
        (FastinvError("bad\ninput"), 400, "bad input"),
        (in_replica, 400, "no"),
        (service.RequestError(413, "too large"), 413, "too large"),
        (ActorDiedError(), 503, "the model replica was lost or is unavailable, retry: ActorDiedError"),
        (RuntimeError("kaput"), 500, "internal error (RuntimeError: kaput)"),
    ]
    for err, status, message in cases:
        response = service.error_response(err)
        assert (response.status_code, json.loads(response.body)) == (status, {"error": message})
        assert (response.headers.get("retry-after") == "1") == (status == 503)


def test_serve_checks_its_options_before_starting_ray(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_ray(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray started")

    monkeypatch.setattr(ray, "init", no_ray)
    with socket.create_server(("127.0.0.1", 0)) as busy:
        taken = busy.getsockname()[1]
        cases = [
            (["--replicas", "0"], "--replicas must be at least 1, got 0"),
            (["--port", "70000"], "--port must be in [1, 65535], got 70000"),
            (["--host", " "], "--host needs an address or host name to listen on"),
            (["--max-batch-size", "0"], "--max-batch-size must be in [1, 1024], got 0"),
            (["--max-batch-size", "1000000000"], "--max-batch-size must be in [1, 1024], got 1000000000"),
            (["--batch-wait-ms", "-1"], "--batch-wait-ms must be in [0, 60000], got -1.0"),
            (["--batch-wait-ms", "nan"], "--batch-wait-ms must be in [0, 60000], got nan"),
            (["--batch-wait-ms", "1e12"], "--batch-wait-ms must be in [0, 60000], got 1000000000000.0"),
            (["--request-timeout", "0"], "--request-timeout must be in (0, 86400] seconds, got 0.0"),
            (["--request-timeout", "1e300"], "--request-timeout must be in (0, 86400] seconds, got 1e+300"),
            (["--backend", "tpu"], "unknown backend 'tpu'"),
            (["--device", "tpu"], "unknown device 'tpu': use cpu, cuda, cuda:N or auto"),
            (["--dtype", "int3"], "unknown dtype 'int3': use auto, fp32, bf16, fp16"),
            (["--kernels", "maybe"], "unknown kernel backend 'maybe': use auto or torch"),
            (["--model", str(tmp_path / "missing")], str(tmp_path / "missing")),
            (["--port", str(taken)], f"cannot listen on 127.0.0.1:{taken}"),
        ]
        for args, message in cases:
            code, _, err = cli(["serve", *args])
            assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_healthz(running: Running) -> None:
    response = requests.get(f"{running.url}/healthz", timeout=CLIENT_TIMEOUT_S)
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_concurrent_requests_are_batched_and_equal_in_process_inversions(
    running: Running,
    photos: dict[str, bytes],
    expected: dict[tuple[str, str], fastinv.Inversion],
    inverter: fastinv.Inverter,
    tmp_path: Path,
) -> None:
    jobs = [(name, method) for name in photos for method in METHODS] * 5  # 30 requests, 16 at a time
    with ThreadPoolExecutor(16) as clients:
        answers = list(
            clients.map(
                lambda job: post(f"{running.url}/v1/invert", photos[job[0]], method=job[1], steps=STEPS), jobs
            )
        )
    assert [answer.status_code for answer in answers] == [200] * len(jobs)
    for job, answer in zip(jobs, answers, strict=True):
        check_inversion(answer.json(), expected[job], inverter, tmp_path)
    assert max(answer.json()["batch"] for answer in answers) > 1


def test_reconstruct_adds_the_reconstruction_and_its_scores(
    running: Running, photos: dict[str, bytes], inverter: fastinv.Inverter, tmp_path: Path
) -> None:
    answer = post(f"{running.url}/v1/invert", photos["coffee"], steps=STEPS, reconstruct=True).json()
    want = inverter.invert(photos["coffee"], steps=STEPS)
    assert answer["method"] == "deepinv"  # auto, with the shipped model's solver
    recon = inverter.reconstruct(want)
    scores = inverter.evaluate(want, recon)
    assert set(answer["metrics"]) == set(scores)
    for key in ("psnr", "ssim", "lpips"):
        assert abs(answer["metrics"][key] - scores[key]) <= 1e-3 * max(1, abs(scores[key]))
    image = png_pixels(answer["reconstruction_png"])
    assert image.shape == (64, 64, 3) and np.abs(image - np.asarray(recon.image, dtype=int)).max() <= 1


def test_bad_requests_get_one_line_json_errors(running: Running, photos: dict[str, bytes]) -> None:
    invert, edit, photo = f"{running.url}/v1/invert", f"{running.url}/v1/edit", photos["coffee"]
    bomb, thin = io.BytesIO(), io.BytesIO()
    Image.new("1", (8000, 8000)).save(bomb, format="PNG")  # 64 megapixels in a few KB
    Image.new("1", (4, 100_000)).save(thin, format="PNG")  # 0.4 megapixels, but 102 once it covers 64×64
    cases = [
        (post(invert, b"not an image"), 400, "cannot read image <bytes>: not a recognized image format"),
        (post(invert, b""), 400, "the request body is empty"),
        (post(invert, bomb.getvalue()), 400, "8000×8000 px (64 megapixels), over the limit of 50 megapixels"),
        (post(invert, photo, method="nope"), 400, "unknown method 'nope'"),
        (post(invert, photo, steps=0), 400, "steps must be at least 1 and at most 10000, got 0"),
        (post(invert, photo, steps="two"), 400, "steps must be an integer, got 'two'"),
        (post(invert, photo, guidance="lots"), 400, "guidance must be a number, got 'lots'"),
        (post(invert, photo, guidance="nan"), 400, "guidance must be a finite number >= 0, got nan"),
        (post(invert, photo, reconstruct="maybe"), 400, "reconstruct must be true or false, got 'maybe'"),
        (post(invert, photo, stepz=2), 400, "unknown query parameter 'stepz'"),
        (post(invert, thin.getvalue()), 400, "4×100000 px: covering 64×64 would scale it to 64×1600000 px"),
        (post(invert, photo, steps="9" * 5000), 400, "steps must be an integer, got '9999999999"),
        (post(edit, photo), 400, "missing query parameter 'target_prompt'"),
        (post(edit, photo, target_prompt="x", strength=2), 400, "edit strength must be a number in [0, 1]"),
        (post(invert, os.urandom(21 * 2**20)), 413, f"over the limit of {20 * 2**20} bytes"),
        (requests.get(invert, timeout=CLIENT_TIMEOUT_S), 405, "Method Not Allowed"),
        (requests.get(f"{running.url}/nowhere", timeout=CLIENT_TIMEOUT_S), 404, "Not Found"),
    ]
    for response, status, message in cases:
        assert response.status_code == status and message in error_of(response), (status, response.text)
        assert len(error_of(response)) < 200  # values are cut short in the message


def test_an_edit(running: Running, photos: dict[str, bytes], inverter: fastinv.Inverter) -> None:
    query = {"target_prompt": "a ginger cat", "method": "euler", "steps": STEPS, "strength": 0.8, "stop": 0.5}
    response = post(f"{running.url}/v1/edit", photos["astronaut"], **query)
    assert response.status_code == 200, response.text
    answer = response.json()
    want = edit_image(
        inverter,
        photos["astronaut"],
        InversionJob(method="euler", steps=STEPS),
        EditJob("a ginger cat", 1.0, 0.8, 0.5),
    )
    record = answer["record"]
    assert (
        record["method"],
        record["steps"],
        record["target_prompt"],
        record["strength"],
        record["stop"],
    ) == (
        "euler",
        STEPS,
        "a ginger cat",
        0.8,
        0.5,
    )
    assert (record["nfe_inversion"], record["nfe_edit"]) == (STEPS, want.edit.edited.nfe)
    assert set(record["metrics"]) == {"reconstruction", "edit"}
    for stage in ("reconstruction", "edit"):  # the service's scores are the in-process edit's
        for name in ("psnr", "ssim"):
            assert record["metrics"][stage][name] == pytest.approx(want.metrics[stage][name], abs=1e-4)
    image = png_pixels(answer["edit_png"])
    assert np.abs(image - np.asarray(want.edit.edited.image, dtype=int)).max() <= 1


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def post_form(url: str, files: dict[str, bytes], **query: object) -> requests.Response:
    """POST a multipart/form-data form of `files` (name → file bytes)."""
    parts = {name: (f"{name}.png", body, "image/png") for name, body in files.items()}
    return requests.post(url, files=parts, params=query, timeout=CLIENT_TIMEOUT_S)


def test_a_masked_edit(running: Running, photos: dict[str, bytes], inverter: fastinv.Inverter) -> None:
    """A form of image and mask: the local edit `fastinv edit --mask` makes, the image kept outside the mask
    (the shipped model is pixel-space: there the edit is the source itself); bad forms are one line."""
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    query = {"target_prompt": "a ginger cat", "method": "euler", "steps": STEPS, "mask_feather": 2}
    url = f"{running.url}/v1/edit"
    response = post_form(url, {"image": photos["coffee"], "mask": png_bytes(mask)}, **query)
    assert response.status_code == 200, response.text
    answer = response.json()
    want = edit_image(
        inverter,
        photos["coffee"],
        InversionJob(method="euler", steps=STEPS),
        EditJob("a ginger cat", mask=png_bytes(mask), mask_feather=2),
    )
    assert answer["record"]["mask"] == json.loads(json.dumps(jsonable(mask_record(want.edit.mask))))
    image = png_pixels(answer["edit_png"])
    assert np.abs(image - np.asarray(want.edit.edited.image, dtype=int)).max() <= 1
    source = np.asarray(Image.open(io.BytesIO(photos["coffee"])).convert("RGB"), dtype=int)
    outside = np.ones((64, 64), bool)
    outside[16:48, 16:48] = False
    assert np.abs(image[outside] - source[outside]).max() <= 1
    assert np.abs(image[24:40, 24:40] - source[24:40, 24:40]).max() > 8  # the edit inside

    cases = [
        ({"mask": png_bytes(mask)}, {}, "the form has no image part"),
        ({"image": photos["coffee"], "extra": b"x"}, {}, "unknown form part 'extra'"),
        ({"image": photos["coffee"], "mask": png_bytes(mask * 0)}, {}, "marks nothing editable"),
        ({"image": photos["coffee"], "mask": b"not an image"}, {}, "cannot read mask"),
        ({"image": photos["coffee"], "mask": png_bytes(mask)}, {"mask_feather": -1}, "mask feather"),
        (
            {"image": photos["coffee"], "mask": png_bytes(mask)},
            {"mask_feather": 10**9},
            "mask feather must be an integer number of pixels in [0, 4096], got 1000000000",
        ),
    ]
    for files, extra, message in cases:
        response = post_form(url, files, **(query | extra))
        assert response.status_code == 400 and message in error_of(response), (message, response.text)
    plain_field = {"image": (None, photos["coffee"])}  # no filename: a plain field
    plain = requests.post(url, files=plain_field, params=query, timeout=CLIENT_TIMEOUT_S)
    assert plain.status_code == 400
    assert "form part 'image' is a plain field: send it as a file" in error_of(plain)


def test_the_readme_client_runs(
    running: Running, photos: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Service (Ray Serve)") :]
    (client,) = re.findall(r"```py\n(.*?)```", section[: section.index("\n## ")], flags=re.DOTALL)
    monkeypatch.chdir(tmp_path)
    Path("photo.png").write_bytes(photos["coffee"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(client.replace("http://127.0.0.1:8000", running.url), {})
    assert printed.getvalue().split()[:3] == ["deepinv", "25", "(1,"]
    assert Path("photo.zT.safetensors").is_file()


def replica_names() -> list[str]:
    prefix = f"SERVE_REPLICA::{service.APP}#Inversions#"
    return sorted(
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(prefix)
    )


def test_a_replica_killed_in_a_burst_costs_retryable_503s_and_is_replaced(
    running: Running,
    photos: dict[str, bytes],
    expected: dict[tuple[str, str], fastinv.Inversion],
    inverter: fastinv.Inverter,
    tmp_path: Path,
) -> None:
    replicas = replica_names()
    assert len(replicas) == 2
    jobs = [(name, method) for name in photos for method in METHODS] * 8  # 48 requests
    with ThreadPoolExecutor(16) as clients:
        futures = [
            clients.submit(post, f"{running.url}/v1/invert", photos[name], method=method, steps=STEPS)
            for name, method in jobs
        ]
        while not any(future.done() for future in futures):
            time.sleep(0.01)
        ray.kill(ray.get_actor(replicas[0], namespace="serve"), no_restart=True)
        killed_at = time.monotonic()
        assert sum(not future.done() for future in futures) >= len(jobs) // 2  # killed mid-burst
        answers = [future.result() for future in futures]  # each within the client's timeout
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) <= {200, 503}, statuses
    for job, answer in zip(jobs, answers, strict=True):
        if answer.status_code == 200:
            check_inversion(answer.json(), expected[job], inverter, tmp_path)
        else:
            assert "retry" in error_of(answer) and answer.headers["retry-after"] == "1"
    print(f"{statuses.count(503)} of {len(jobs)} requests got 503 after the kill")
    while True:
        running_replicas = serve.status().applications[service.APP].deployments["Inversions"].replica_states
        health = requests.get(f"{running.url}/healthz", timeout=CLIENT_TIMEOUT_S)
        if running_replicas.get("RUNNING") == 2 and health.status_code == 200:
            break
        assert time.monotonic() - killed_at < START_S, (running_replicas, health.text)
        time.sleep(0.5)
    print(f"2 replicas running again {time.monotonic() - killed_at:.1f} s after the kill")
    assert replicas[0] not in replica_names()
    answer = post(f"{running.url}/v1/invert", photos["rocket"], method="euler", steps=STEPS)
    assert answer.status_code == 200
    check_inversion(answer.json(), expected[("rocket", "euler")], inverter, tmp_path)


def test_sigterm_stops_serve_and_the_ray_it_started(running: Running) -> None:
    ray.shutdown()  # this process's connection to that Ray
    family = psutil.Process(running.process.pid).children(recursive=True)
    assert family  # Ray's processes: GCS, raylet, workers
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(60) == 128 + signal.SIGTERM
    time.sleep(0.5)  # the stderr reader's last lines
    assert "".join(running.stderr).strip().splitlines()[-1].startswith("error: interrupted by SIGTERM")
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, alive
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{running.url}/healthz", timeout=5)
