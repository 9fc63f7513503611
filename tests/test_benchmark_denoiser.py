"""benchmarks/denoiser.py, the GPU benchmark of the denoiser's time per NFE, exercised on CPU.

The smoke run (--device cpu --tiny) goes through the same code as the GPU run, on tiny SD3 / FLUX-dev
transformers. The CUDA-graph variant, which needs CUDA, runs in-process with a CPU stand-in for CapturedStep
that keeps its bookkeeping (warm-up call, capture, replays that add to the NFE counter without calling it).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from scripts import import_script

from fastinv.runtime.fast_path import CapturedStep

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "denoiser.py"
SMOKE = ("--device", "cpu", "--tiny")
TINY_MODELS = ("sd3-tiny", "flux-tiny")
POSITIVE = ("ms_median", "ms_p20", "ms_p80", "first_call_s", "tflops", "mfu", "speedup_vs_eager")


@pytest.fixture(scope="module")
def denoiser() -> ModuleType:
    """The benchmark script imported as a module."""
    return import_script(BENCHMARK)


def main(module: ModuleType, monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", [str(BENCHMARK), *args])
    module.main()


def check_rows(record: dict[str, Any], variants: list[str], batches: list[int]) -> None:
    """One row per tiny model × batch × variant, in that order, with finite positive timings and FLOPs."""
    expected = [(m, b, v) for m in TINY_MODELS for b in batches for v in variants]
    assert [(r["model"], r["batch"], r["variant"]) for r in record["rows"]] == expected
    flops = {model["name"]: model["flops_per_forward"] for model in record["models"]}
    for row in record["rows"]:
        for key in POSITIVE:
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
        assert row["ms_p20"] <= row["ms_median"] <= row["ms_p80"]
        assert row["flops"] == flops[row["model"]] * row["batch"] > 0
        assert row["peak_memory_gib"] is None  # CUDA only


def test_cpu_smoke_run(
    denoiser: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    out = tmp_path / "x.json"
    main(denoiser, monkeypatch, *SMOKE, "--repeats", "2", "--batches", "1,2", "--out", str(out))
    stdout = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["complete"] and not record["failed"]
    assert "random weights: timing only" in record["note"]
    assert "cpu smoke run: timings meaningless" in record["note"]
    assert record["device"] == "cpu" and record["dtype"] == "float32"
    assert record["variants"] == ["eager"]
    assert record["skipped"] == {
        "compile": "compile is skipped on CPU unless --compile-cpu",
        "compile+cuda-graph": "CUDA graphs need CUDA",
        "cuda-graph": "CUDA graphs need CUDA",
    }
    assert "CUDA graphs need CUDA" in stdout  # the table says why those variants are missing
    check_rows(record, ["eager"], [1, 2])
    for row in record["rows"]:
        assert len(row["ms"]) == 2 and row["capture_s"] is None
        assert row["speedup_vs_eager"] == 1 and row["rel_diff_vs_eager"] == 0
    assert record["matmul"]["tflops"] > 0
    assert record["versions"]["torch"] == torch.__version__


def test_cuda_without_a_gpu_is_a_one_line_error(
    denoiser: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # sys.exit(str): the interpreter writes the string to stderr as one line and exits with status 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        main(denoiser, monkeypatch, "--device", "cuda", "--out", str(tmp_path / "x.json"))
    message = exit_.value.code
    assert isinstance(message, str) and "\n" not in message
    assert message.startswith("error: --device cuda but torch") and "sees no CUDA GPU" in message
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([*SMOKE], "a smoke run needs --out"),
        ([*SMOKE, "--out", str(BENCHMARK.parent / "results" / "denoiser.json")], "needs --out"),
        (["--device", "cpu", "--out", "x.json"], "--device cpu runs only --tiny"),
        ([*SMOKE, "--out", "x.json", "--models", "sd3-medium"], "unknown model sd3-medium"),
        ([*SMOKE, "--out", "x.json", "--repeats", "1"], "--repeats ≥ 2"),
    ],
)
def test_bad_arguments(
    denoiser: ModuleType, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit, match=message):
        main(denoiser, monkeypatch, *args)


class ReplayCapturedStep(CapturedStep):
    """CapturedStep on CPU: the warm-up runs on the current stream, capture runs `fn` once, replay reruns it
    on the captured input buffers into the output buffer, without counting (a replay calls no Python)."""

    def warm_up(self, inputs: tuple[torch.Tensor, ...]) -> Any:
        return self.fn(*inputs)

    def capture(self) -> None:
        self.graph = True
        self.outputs = self.fn(*self.inputs)

    def replay(self) -> None:
        calls = self.counter.calls
        self.outputs.copy_(self.fn(*self.inputs))
        self.counter.calls = calls


def test_graph_variant_on_a_cpu_stand_in(
    denoiser: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(denoiser, "CapturedStep", ReplayCapturedStep)
    monkeypatch.setattr(denoiser, "skip_reason", lambda variant, device, compile_cpu: None)
    out = tmp_path / "x.json"
    args = ["--variants", "eager,cuda-graph", "--repeats", "3", "--warmup", "0", "--out", str(out)]
    main(denoiser, monkeypatch, *SMOKE, *args)
    record = json.loads(out.read_text())
    check_rows(record, ["eager", "cuda-graph"], [1])
    for row in record["rows"]:
        assert (row["capture_s"] is None) == (row["variant"] == "eager")
        assert row["rel_diff_vs_eager"] < 1e-6  # the replayed velocity is the eager one


def test_a_failing_variant_is_reported_and_the_others_still_run(
    denoiser: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_compiler(holder: Any) -> Any:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(denoiser, "compiled", no_compiler)
    monkeypatch.setattr(denoiser, "CapturedStep", ReplayCapturedStep)
    monkeypatch.setattr(denoiser, "skip_reason", lambda variant, device, compile_cpu: None)
    out = tmp_path / "x.json"
    with pytest.raises(SystemExit, match="4 variant"):
        args = ["--variants", "eager,compile,compile+cuda-graph", "--repeats", "2", "--out", str(out)]
        main(denoiser, monkeypatch, *SMOKE, *args)
    record = json.loads(out.read_text())
    assert record["complete"]
    check_rows(record, ["eager"], [1])
    assert record["failed"] == [  # the graph variant does not fall back to the uncompiled transformer
        {"model": model, "batch": 1, "variant": variant, "error": "RuntimeError: no C++ compiler"}
        for model in TINY_MODELS
        for variant in ("compile", "compile+cuda-graph")
    ]


@pytest.mark.parametrize(
    ("name", "fixture"), [("sd3-tiny", "tiny_sd3_transformer_only_dir"), ("flux-tiny", "tiny_flux_dev_dir")]
)
def test_tiny_configs_are_the_test_models(
    denoiser: ModuleType, request: pytest.FixtureRequest, name: str, fixture: str
) -> None:
    (spec,) = [s for s in denoiser.TINY if s.name == name]
    config = json.loads((request.getfixturevalue(fixture) / "transformer" / "config.json").read_text())
    assert {k: config[k] for k in spec.config} == {
        k: list(v) if isinstance(v, tuple) else v for k, v in spec.config.items()
    }


def test_summary_is_the_median_and_the_20th_and_80th_percentiles(denoiser: ModuleType) -> None:
    times = [5.0, 1.0, 4.0, 2.0, 3.0, 9.0, 7.0]
    expected = dict(zip(("ms_p20", "ms_median", "ms_p80"), np.percentile(times, [20, 50, 80]), strict=True))
    assert denoiser.summary(times) == pytest.approx(expected)
