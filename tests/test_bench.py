"""`fastinv bench` end to end on the tiny SD3 (torch and ORT), its ratios on hand-made rows, the
CUDA-event Stopwatch (on a fake CUDA) and the one-line errors."""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import cli
from PIL import Image
from skimage import data

from fastinv.bench import aggregate, interpolate_log_time, summarize
from fastinv.bench.plan import list_images
from fastinv.bench.report import TIMING_ONLY_NOTE
from fastinv.bench.summary import OUTSIDE
from fastinv.errors import FastinvError
from fastinv.images import IMAGE_SUFFIXES
from fastinv.methods.base import Stopwatch


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of two 64 px photos and a file that is not an image."""
    folder = tmp_path_factory.mktemp("photos")
    for name, image in (("b_coffee.jpg", data.coffee()), ("a_astronaut.png", data.astronaut())):
        Image.fromarray(image).resize((64, 64), Image.Resampling.LANCZOS).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def solver_dir(tiny_solver_dir: Path) -> Path:
    return tiny_solver_dir


def _valid_png(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG" and min(image.size) > 100


def test_bench_torch_and_ort_end_to_end(
    tiny_sd3_dir: Path, solver_dir: Path, photos: Path, tmp_path: Path, memoised_export: list[Path]
) -> None:
    """Every backend × method × steps × image is a row or a skip; NFE follows each method's formula; the
    summary ratios are the aggregates' ratios; the ORT graphs are exported first (once, to OUT/exports:
    memoised_export serves the session's export of this model and solver); all files are written."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench"
    methods, backends, steps = ("euler", "renoise", "deepinv", "preciseinv"), ("torch", "ort"), (2, 3)
    args = [
        "bench",
        "--model",
        str(tiny_sd3_dir),
        "--solver",
        str(solver_dir),
        "--methods",
        ",".join(methods),
    ]
    args += ["--backends", ",".join(backends), "--steps", "3,2", "--images", str(photos), "--repeats", "2"]
    # no warm-up inversions (untimed, unrecorded; test_a_backend_that_fails_to_load_is_skipped runs one)
    code, stdout, stderr = cli([*args, "--warmup", "0", "--device", "cpu", "--out", str(out)])
    assert code == 0, stderr
    print(stdout)
    assert f"exported velocity.fp32.onnx, solver.fp32.onnx to {out / 'exports'}" in stdout
    assert "Time ratios" in stdout and f"wrote {out / 'bench.json'}" in stdout

    record = json.loads((out / "bench.json").read_text())
    assert (
        record["command"].startswith("fastinv bench --model") and "--backends torch,ort" in record["command"]
    )
    assert record["config"]["image_names"] == ["a_astronaut.png", "b_coffee.jpg"]
    assert record["config"]["steps"] == [2, 3] and record["hardware"]["torch_threads"] >= 1
    assert {"torch", "diffusers", "onnxruntime", "fastinv"} <= set(record["versions"])
    assert record["backends"]["ort"]["export_dir"] == str(out / "exports")
    assert record["backends"]["torch"]["fast_path"].startswith("eager")
    assert "trained model" in record["fidelity_note"]

    # preciseinv needs gradients: the ORT backend cannot give them, so it is skipped, not a crash
    skipped = {(s["backend"], s["method"], s["steps"]): s["reason"] for s in record["skipped"]}
    assert set(skipped) == {("ort", "preciseinv", 2), ("ort", "preciseinv", 3)}
    assert all("not differentiable" in reason for reason in skipped.values())
    combos = {(r["backend"], r["method"], r["steps"]) for r in record["aggregates"]}
    assert combos | set(skipped) == {(e, m, s) for e in backends for m in methods for s in steps}
    assert len(record["rows"]) == 2 * len(combos)

    for row in record["rows"]:
        assert len(row["seconds"]) == 2 and all(math.isfinite(s) and s > 0 for s in row["seconds"])
        assert row["peak_mib"] > 0 and row["size"] == [64, 64] and math.isfinite(row["psnr"])
        n = row["steps"]
        expected = {"euler": n, "deepinv": n, "renoise": 5 * n}  # renoise: K = 4 iterations by default
        if row["method"] in expected:
            assert row["nfe"] == expected[row["method"]], row
        else:
            assert n + 1 <= row["nfe"] <= n + 1 + 10 * n  # preciseinv: N + 1 + its updates (≤ max_iters/step)

    aggregates = {(r["backend"], r["method"], r["steps"]): r for r in record["aggregates"]}
    for (backend, method, n), agg in aggregates.items():
        times = [
            t
            for r in record["rows"]
            if (r["backend"], r["method"], r["steps"]) == (backend, method, n)
            for t in r["seconds"]
        ]
        assert agg["seconds_median"] == pytest.approx(statistics.median(times))
        spread = (agg["seconds_p20"], agg["seconds_p80"])
        assert spread == pytest.approx(tuple(np.percentile(times, [20, 80])))
    for backend in backends:
        summary = record["summary"][backend]
        ratios = {(r["ratio"], r["steps"]): r["value"] for r in summary["time_ratios"]}
        assert set(ratios) == {(name, n) for name in ("deepinv ÷ euler", "renoise ÷ deepinv") for n in steps}
        by_hand = (
            aggregates[backend, "deepinv", 3]["seconds_median"]
            / aggregates[backend, "euler", 3]["seconds_median"]
        )
        assert ratios["deepinv ÷ euler", 3] == pytest.approx(by_hand)
        same_steps = {(r["baseline"], r["steps"]): r for r in summary["equal_steps"]}
        baselines = {"euler", "renoise"} | ({"preciseinv"} if backend == "torch" else set())
        assert set(same_steps) == {(b, n) for b in baselines for n in steps}
        psnr = aggregates[backend, "deepinv", 2]["psnr"] - aggregates[backend, "renoise", 2]["psnr"]
        assert same_steps["renoise", 2]["psnr"] == pytest.approx(psnr)
        assert {(r["baseline"], r["steps"]) for r in summary["equal_time"]} == set(same_steps)
        for r in summary["equal_time"]:
            assert (r["note"] == OUTSIDE) == (r["psnr"] is None)

    markdown = (out / "bench.md").read_text()
    assert markdown.count("| deepinv | ort |") == 2 and "| preciseinv | ort |" not in markdown
    assert "## Skipped" in markdown and "## DeepInv − baseline at equal time" in markdown
    for name in ("fidelity_vs_time.png", "fidelity_vs_steps.png"):
        _valid_png(out / name)
    assert sorted(p.name for p in (out / "exports").iterdir()) == ["solver.fp32.onnx", "velocity.fp32.onnx"]
    assert memoised_export == [out / "exports"]


def test_deepinv_without_solver_is_skipped_and_timing_only(tiny_sd3_dir: Path, tmp_path: Path) -> None:
    """No solver/ folder and no --solver: deepinv is skipped with the reason; --timing-only leaves out the
    reconstruction, the metrics and the fidelity ratios, and says so."""
    out = tmp_path / "bench"
    args = [
        "bench",
        "--model",
        str(tiny_sd3_dir),
        "--methods",
        "euler,deepinv",
        "--steps",
        "1",
        "--repeats",
        "1",
    ]
    args += ["--max-images", "1", "--warmup", "0", "--timing-only", "--device", "cpu", "--out", str(out)]
    code, stdout, stderr = cli(args)
    assert code == 0, stderr
    record = json.loads((out / "bench.json").read_text())
    (skip,) = record["skipped"]
    assert (skip["method"], skip["steps"]) == ("deepinv", 1) and "needs a trained solver" in skip["reason"]
    (row,) = record["rows"]
    assert row["image"] == "chelsea" and row["nfe"] == 1 and "psnr" not in row
    assert record["fidelity_note"] == TIMING_ONLY_NOTE and TIMING_ONLY_NOTE in stdout
    assert record["summary"] == {"torch": {"time_ratios": []}}
    _valid_png(out / "time_vs_steps.png")
    assert not (out / "fidelity_vs_time.png").exists()


def test_methods_are_timed_side_by_side(
    tiny_sd3_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At equal steps the methods alternate image by image after their warm-ups (so drift lands on all of
    them), and the rows still come out in method order."""
    import fastinv.bench.run as bench_run

    calls: list[tuple[str, int]] = []
    invert = bench_run.invert_image

    def recording(inverter, picture, job):
        calls.append((job.method, id(picture)))
        return invert(inverter, picture, job)

    monkeypatch.setattr(bench_run, "invert_image", recording)
    out = tmp_path / "bench"
    args = ["bench", "--model", str(tiny_sd3_dir), "--methods", "euler,fireflow", "--steps", "1"]
    args += ["--repeats", "1", "--max-images", "2", "--warmup", "1", "--timing-only", "--device", "cpu"]
    code, _, stderr = cli([*args, "--out", str(out)])
    assert code == 0, stderr
    first, second = calls[0][1], calls[4][1]
    assert calls == [
        ("euler", first),
        ("fireflow", first),
        ("euler", first),
        ("fireflow", first),
        ("euler", second),
        ("fireflow", second),
    ]
    assert first != second
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert [(r["method"], r["image"]) for r in rows] == [
        ("euler", "chelsea"),
        ("euler", "coffee"),
        ("fireflow", "chelsea"),
        ("fireflow", "coffee"),
    ]


def test_a_backend_that_fails_to_load_is_skipped(tiny_sd3_dir: Path, tmp_path: Path) -> None:
    """A broken graph in --export-dir: every ort combination is skipped with the load error's line, and the
    torch backend's results are still written."""
    pytest.importorskip("onnxruntime")
    broken = tmp_path / "exports"
    broken.mkdir()
    (broken / "velocity.fp32.onnx").write_text("not a graph")
    out = tmp_path / "bench"
    args = ["bench", "--model", str(tiny_sd3_dir), "--methods", "euler", "--steps", "1,2", "--repeats", "1"]
    args += ["--backends", "torch,ort", "--export-dir", str(broken), "--max-images", "1", "--timing-only"]
    code, _, stderr = cli([*args, "--device", "cpu", "--out", str(out)])
    assert code == 0, stderr
    record = json.loads((out / "bench.json").read_text())
    assert [(r["backend"], r["steps"]) for r in record["rows"]] == [("torch", 1), ("torch", 2)]
    assert [(s["backend"], s["steps"]) for s in record["skipped"]] == [("ort", 1), ("ort", 2)]
    assert all("cannot read ONNX graph" in s["reason"] for s in record["skipped"])
    assert list(record["backends"]) == ["torch"]


def _agg(
    method: str,
    steps: int,
    seconds: float,
    psnr: float | None,
    backend: str = "torch",
    cost: float | None = None,
) -> dict:
    return {
        "backend": backend,
        "method": method,
        "steps": steps,
        "cost": (1.1 * steps if method == "deepinv" else steps) if cost is None else cost,
        "seconds_median": seconds,
        "psnr": psnr,
        "ssim": None if psnr is None else psnr / 100,
        "lpips": None,
    }


def test_interpolate_log_time() -> None:
    points = [(1.0, 20.0), (2.0, 24.0), (4.0, 30.0)]
    assert interpolate_log_time(points, 2.0) == pytest.approx(24.0)
    assert interpolate_log_time(points, math.sqrt(2)) == pytest.approx(22.0)  # halfway in log time
    assert interpolate_log_time(points[::-1], 2 * math.sqrt(2)) == pytest.approx(27.0)  # order-free
    assert interpolate_log_time(points, 0.99) is None and interpolate_log_time(points, 4.01) is None
    assert interpolate_log_time([(1.0, 20.0), (2.0, None)], 1.5) is None  # a missing metric: no value


def test_summary_on_hand_made_rows() -> None:
    """Time ratios at equal steps; equal-time differences against the baseline interpolated in log time,
    n/a outside its measured time range; ratios only for the methods that ran."""
    rows = [
        _agg("euler", 10, 1.0, 20.0),
        _agg("euler", 25, 2.0, 24.0),
        _agg("euler", 50, 4.0, 30.0),
        _agg("deepinv", 10, 1.5, 22.0),
        _agg("deepinv", 25, 2 * math.sqrt(2), 27.0),
        _agg("deepinv", 50, 8.0, 35.0),
        _agg("euler", 10, 0.5, 20.0, backend="ort"),
        _agg("gnri", 10, 3.0, 25.0, cost=50.0),  # dominated by euler at 50 steps (as cheap, better)
    ]
    summary = summarize(rows)
    torch_summary = summary["torch"]
    assert [(r["ratio"], r["steps"], r["value"]) for r in torch_summary["time_ratios"]] == [
        ("deepinv ÷ euler", 10, 1.5),
        ("deepinv ÷ euler", 25, math.sqrt(2)),
        ("deepinv ÷ euler", 50, 2.0),
    ]
    assert [(r["baseline"], r["steps"], r["psnr"]) for r in torch_summary["equal_steps"]] == [
        ("euler", 10, 2.0),
        ("euler", 25, 3.0),
        ("euler", 50, 5.0),
        ("gnri", 10, -3.0),
    ]
    at_time = {r["steps"]: r for r in torch_summary["equal_time"] if r["baseline"] == "euler"}
    euler_at_1_5 = 20.0 + 4.0 * math.log(1.5) / math.log(2.0)
    assert at_time[10]["baseline_psnr"] == pytest.approx(euler_at_1_5)
    assert at_time[10]["psnr"] == pytest.approx(22.0 - euler_at_1_5) and at_time[10]["note"] is None
    assert at_time[10]["ssim"] == pytest.approx((22.0 - euler_at_1_5) / 100) and at_time[10]["lpips"] is None
    assert at_time[25]["psnr"] == pytest.approx(0.0)  # 2√2 s: halfway between 2 s and 4 s in log time
    assert at_time[50]["note"] == OUTSIDE and at_time[50]["psnr"] is None  # 8 s > euler's 4 s
    at_cost = [
        (r["steps"], r["baseline"], r["baseline_steps"], r["margin"]) for r in torch_summary["equal_cost"]
    ]
    assert at_cost == [(10, "euler", 10, 2.0), (25, "euler", 25, 3.0), (50, "euler", 50, 5.0)]
    front = [(r["method"], r["steps"]) for r in torch_summary["pareto"]]
    assert front == [
        ("euler", 10),
        ("deepinv", 10),
        ("euler", 25),
        ("deepinv", 25),
        ("euler", 50),
        ("deepinv", 50),
    ]
    ort = summary["ort"]  # no deepinv on ort
    assert (ort["time_ratios"], ort["equal_steps"], ort["equal_time"], ort["equal_cost"]) == ([], [], [], [])
    assert [(r["method"], r["steps"]) for r in ort["pareto"]] == [("euler", 10)]
    assert summarize(rows, fidelity=False)["torch"].keys() == {"time_ratios"}


def test_aggregate_median_spread_and_means() -> None:
    def row(image: str, seconds: list[float], psnr: float, nfe: int) -> dict:
        base = {"backend": "torch", "method": "preciseinv", "steps": 2, "image": image, "nfe": nfe}
        return base | {"seconds": seconds, "peak_mib": 10.0 + nfe, "psnr": psnr, "ssim": 0.5, "lpips": None}

    (agg,) = aggregate([row("a", [1.0, 2.0, 3.0], 20.0, 4), row("b", [4.0, 5.0, 6.0], 30.0, 5)])
    assert agg["seconds_median"] == 3.5 and agg["images"] == 2
    assert (agg["seconds_p20"], agg["seconds_p80"]) == pytest.approx(
        tuple(np.percentile(range(1, 7), [20, 80]))
    )
    assert agg["nfe"] == 4.5 and agg["peak_mib"] == 15.0
    assert (agg["psnr"], agg["ssim"], agg["lpips"], agg["mse_pixel"]) == (25.0, 0.5, None, None)


class FakeEvent:
    """torch.cuda.Event stand-in: records at the 'GPU time' of its stream when recorded."""

    clock = 0.0
    log: list[str] = []  # noqa: RUF012 — shared on purpose: the test reads it

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.at: float | None = None

    def record(self, stream: object) -> None:
        assert stream == "stream"
        self.at = FakeEvent.clock
        FakeEvent.log.append("record")

    def synchronize(self) -> None:
        FakeEvent.log.append("synchronize")

    def elapsed_time(self, end: FakeEvent) -> float:
        assert self.at is not None and end.at is not None
        return (end.at - self.at) * 1e3  # ms, as CUDA reports


def test_stopwatch_times_cuda_with_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CUDA device: an event at construction, one at seconds() (synchronised), elapsed in seconds;
    no host synchronisation of the device."""
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: "stream")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: pytest.fail("host sync"))
    FakeEvent.clock, FakeEvent.log[:] = 1.0, []
    watch = Stopwatch(torch.device("cuda"))
    FakeEvent.clock = 1.25
    assert watch.seconds() == pytest.approx(0.25)
    assert FakeEvent.log == ["record", "record", "synchronize"]
    cpu = Stopwatch(torch.device("cpu"))
    assert 0 <= cpu.seconds() < 1


def test_bench_images_follow_the_shared_image_rule(tmp_path: Path) -> None:
    """--images FOLDER takes the files `fastinv.images.is_image_file` accepts (IMAGE_SUFFIXES), by name."""
    for name in ("b.PNG", "a.webp", "c.gif", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "d.png").mkdir()  # a folder, not an image
    assert [image.name for image in list_images(str(tmp_path))] == ["a.webp", "b.PNG"]
    looked_for = f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
    with pytest.raises(FastinvError, match=re.escape(looked_for)):
        list_images(str(tmp_path / "d.png"))


def test_bench_errors_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad options are one `error:` line, exit 2, and nothing written."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as if neither TensorRT library were installed
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    out = tmp_path / "out"
    cases = {
        ("--methods", "euler,magic"): "unknown method 'magic'",
        ("--backends", "torch,gpu"): "unknown backend 'gpu'",
        ("--backends", "trt"): "the trt backend needs TensorRT",
        ("--export-dir", str(tmp_path)): "--export-dir is for the ort and trt backends",
        ("--backends", "ort", "--export-dir", str(tmp_path / "absent")): "export folder not found",
        ("--backends", "ort", "--export-dir", str(empty)): r"no velocity.fp32.onnx in",
        ("--steps", "10,x"): "--steps takes comma-separated whole numbers",
        ("--steps", "0,5"): "--steps must all be at least 1",
        ("--steps", ","): "--steps is empty",
        ("--images", str(tmp_path / "absent")): "image folder not found",
        ("--images", str(empty)): "no image files in",
        ("--max-images", "0"): "--max-images must be at least 1",
        ("--repeats", "0"): "--repeats must be at least 1",
        ("--warmup", "-1"): "--warmup must be at least 0",
        ("--model", str(tmp_path / "absent")): "model folder not found",
        ("--device", "tpu"): "unknown device 'tpu'",
    }
    for extra, message in cases.items():
        code, _, stderr = cli(["bench", "--device", "cpu", *extra, "--out", str(out)])
        assert code == 2, (extra, stderr)
        assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
        assert message in stderr, (message, stderr)
    assert not out.exists()
