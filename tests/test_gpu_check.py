"""benchmarks/gpu_check.sh (the one prepared check for a lent GPU) without a GPU: its dry-run plan, its
refusal on a machine without CUDA, the CUDA-only tests it names, its summary; and a CPU smoke run of
benchmarks/deepinv_scale.py, its DeepInv ÷ Euler step."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from scripts import import_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
HELPER = ROOT / "benchmarks" / "gpu_check.py"
SCALE = ROOT / "benchmarks" / "deepinv_scale.py"
STEPS = ["env", "tests", "fast-path", "kernels", "denoiser", "deepinv-scale"]
STEP_LINE = re.compile(r"^step (\d)/(\d) (\S+) +limit +(\d+) s +output (\S+)$")


def bash(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False, env=env
    )


@pytest.fixture(scope="module")
def helper() -> ModuleType:
    return import_script(HELPER)


def test_dry_run_prints_the_device_command_and_the_plan() -> None:
    done = bash("--dry-run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    steps = [m.groups() for line in lines if (m := STEP_LINE.match(line))]
    assert [name for _, _, name, _, _ in steps] == STEPS
    assert [int(index) for index, *_ in steps] == list(range(1, 7))
    assert {total for _, total, *_ in steps} == {"6"}
    assert sum(int(limit) for *_, limit, _ in steps) <= 8 * 60
    for *_, outputs in steps:
        for output in outputs.split(","):
            assert output.startswith("benchmarks/results/gpu/") and output.endswith(".json"), output
    commands = [line.strip() for line in lines if line.strip().startswith("command:")]
    assert len(commands) == 6
    assert "deepinv_scale.py" in commands[5] and "kernels.py" in commands[3] and "denoiser.py" in commands[4]
    assert 'carry [".whl"]' in done.stdout and "device-wheels.sh" in done.stdout
    pip = (
        "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "
        "/tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/gpu_check.sh"
    )
    assert pip in done.stdout
    assert "benchmarks/results/gpu/summary.md" in done.stdout


def test_only_selects_steps_by_name_or_number() -> None:
    done = bash("--dry-run", "--only", "2,deepinv-scale")
    assert done.returncode == 0, done.stderr
    assert [m.group(3) for line in done.stdout.splitlines() if (m := STEP_LINE.match(line))] == [
        "tests",
        "deepinv-scale",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--only", "nope"], "unknown step 'nope'"), (["--bogus"], "unknown argument '--bogus'")],
)
def test_bad_arguments_are_one_line_errors(args: list[str], message: str) -> None:
    done = bash(*args, "--dry-run")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and message in done.stderr


@pytest.mark.skipif(
    shutil.which("nvidia-smi") is not None and torch.cuda.is_available(), reason="this machine has a GPU"
)
def test_refuses_to_run_without_a_cuda_gpu() -> None:
    done = bash()
    assert done.returncode == 2, done.stdout
    assert done.stdout == "" and done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: no CUDA GPU here") and "--dry-run" in done.stderr


CUDA_SKIP = re.compile(r"pytest\.mark\.skipif\(\s*not torch\.cuda\.is_available\(\)")


def cuda_only_tests(path: Path) -> set[str]:
    """file::name of each test in `path` under a skipif(not torch.cuda.is_available()) marker, written on
    the test or assigned to a name that decorates tests."""
    text = path.read_text()
    found = set()
    for match in CUDA_SKIP.finditer(text):
        line_start = text.rfind("\n", 0, match.start()) + 1
        assigned = re.match(r"(\w+)\s*=\s*$", text[line_start : match.start()])
        if assigned:  # needs_cuda = pytest.mark.skipif(...): the tests it decorates
            pattern = rf"^@{assigned.group(1)}\b[^\n]*\n(?:@[^\n]*\n|\s[^\n]*\n)*def (test_\w+)"
            found |= {f"tests/{path.name}::{name}" for name in re.findall(pattern, text, re.MULTILINE)}
        else:
            test = re.compile(r"^def (test_\w+)", re.MULTILINE).search(text, match.end())
            assert test is not None, f"{path.name}: a CUDA skip marker without a test after it"
            found.add(f"tests/{path.name}::{test.group(1)}")
    return found


def test_every_cuda_only_test_is_in_the_check() -> None:
    """Every test skipped without CUDA is one the script runs, so that a new GPU test is not left out."""
    named = re.search(r"^CUDA_TESTS=\(([^)]*)\)", SCRIPT.read_text(), re.MULTILINE)
    assert named is not None
    listed = set(named.group(1).split())
    found = set().union(*(cuda_only_tests(p) for p in sorted((ROOT / "tests").glob("test_*.py"))))
    assert "tests/test_fast_path.py::test_real_cuda_graphs_equal_eager" in found
    assert found <= listed, found - listed


def test_prompt_embeddings_hold_the_default_prompt() -> None:
    from fastinv.models.prompts import load_prompt_embeddings

    entries = load_prompt_embeddings(ROOT / "benchmarks" / "gpu_check_prompts.safetensors")
    assert list(entries) == [""]
    embeds, pooled = entries[""]
    assert embeds.shape == (1, 16, 384) and pooled is not None and pooled.shape == (1, 384)


def test_summary_writes_a_row_per_step_with_key_figures(helper: ModuleType, tmp_path: Path) -> None:
    kernels = {
        "copy_gb_s": 4000.0,
        "rows": [
            {"variant": "compile", "matches_reference": True},
            {
                "variant": "triton",
                "matches_reference": True,
                "graph_gb_s": 3000.0,
                "beats_compile_graph": True,
                "speedup_vs_compile_graph": 1.25,
            },
        ],
    }
    denoiser = {
        "rows": [
            {"model": "sd3-medium", "batch": 1, "variant": "eager", "ms_median": 40.0, "mfu": 0.4},
            {"model": "sd3-medium", "batch": 1, "variant": "cuda-graph", "ms_median": 32.0, "mfu": 0.5},
        ],
        "failed": [],
    }
    compiled = {
        "rows": [{"model": "sd3-medium", "batch": 1, "variant": "compile", "ms_median": 20.0, "mfu": 0.8}]
    }
    files = {"kernels.json": kernels, "denoiser.json": denoiser, "denoiser_compile.json": compiled}
    for name, record in files.items():
        (tmp_path / name).write_text(json.dumps(record))
    (tmp_path / "scale.log").write_text("loading\nerror: --device cuda but torch sees no CUDA GPU\n")
    rows = [
        ["1", "env", "ok", "0", "3", "15", str(tmp_path / "env.json"), ""],
        ["4", "kernels", "ok", "0", "40", "75", str(tmp_path / "kernels.json"), ""],
        [
            "5",
            "denoiser",
            "ok",
            "0",
            "90",
            "135",
            f"{tmp_path / 'denoiser.json'},{tmp_path / 'denoiser_compile.json'}",
            "",
        ],
        [
            "6",
            "deepinv-scale",
            "failed (exit 1)",
            "1",
            "4",
            "60",
            str(tmp_path / "x.json"),
            str(tmp_path / "scale.log"),
        ],
    ]
    header = "index\tstep\tstatus\treturncode\tseconds\tlimit\toutput\tlog"
    (tmp_path / "steps.tsv").write_text("\n".join([header, *("\t".join(r) for r in rows)]) + "\n")
    helper.summary(helper.parse_args(["summary", "--dir", str(tmp_path), "--total-seconds", "137"]))
    text = (tmp_path / "summary.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [line.split(" | ")[0] for line in table] == [
        "| 1. env",
        "| 4. kernels",
        "| 5. denoiser",
        "| 6. deepinv-scale",
    ]
    assert "no output" in table[0]
    assert (
        "Triton beats compile in 1/1 op-shapes (graph; median 1.25×)" in table[1]
        and "75% of copy" in table[1]
    )
    assert "cuda-graph: 32.0 ms/NFE, MFU 50%, 1.25× eager" in table[2]
    assert "compile: 20.0 ms/NFE, MFU 80%, 2.00× eager" in table[2]
    assert "failed (exit 1)" in table[3] and "log ends: error: --device cuda" in table[3]
    assert "Total: 137 s" in text


def test_deepinv_scale_cpu_smoke_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process (the libraries it imports are mostly loaded already in a suite run), as the CLI runs it."""
    out = tmp_path / "scale.json"
    monkeypatch.syspath_prepend(str(SCALE.parent))  # it imports benchmarks/denoiser.py, as a script would
    script = import_script(SCALE, monkeypatch)
    args = ["--device", "cpu", "--model-config", "tiny", "--steps", "2", "--repeats", "1", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", [str(SCALE), *args])
    script.main()
    record = json.loads(out.read_text())
    assert "cpu smoke run: timings meaningless" in record["note"] and record["solver_preset"] == "sd3-medium"
    rows = {(r["method"], r["steps"]): r for r in record["rows"]}
    assert set(rows) == {("euler", 2), ("deepinv", 2)}
    assert rows["euler", 2]["nfe"] == rows["deepinv", 2]["nfe"] == 2
    assert rows["euler", 2]["solver_calls"] == 0 and rows["deepinv", 2]["solver_calls"] == 2
    for row in rows.values():
        assert row["finite"] and len(row["seconds"]) == 1 and row["s_median"] > 0
    ratio = record["ratios"]["2"]
    assert math.isclose(ratio, rows["deepinv", 2]["s_median"] / rows["euler", 2]["s_median"])
    assert 0 < record["flops"]["solver_fraction"] < 1
    assert record["command"].startswith("python ") and "--model-config tiny" in record["command"]
    assert record["versions"]["torch"] == torch.__version__ and "platform" in record["hardware"]
