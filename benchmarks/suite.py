"""How long the README's test line takes on this machine, against issue 18's target (≤ 180 s on 2 cores),
with two figures of the machine's own speed, so that runs on different days or machines can be compared.

python benchmarks/suite.py [--runs 1] [--out benchmarks/results] [--root CHECKOUT]

The line is read from README.md's "## Tests" block (what CI runs) and run from the repository root
`--runs` times, unchanged; pytest also writes JUnit XML (asked through PYTEST_ADDOPTS), from which come
the outcome counts and each test file's seconds: setup + call + teardown of its tests, summed, so a module
fixture counts with the first test that asks for it. CPU seconds are the whole machine's over the run
(/proc/stat: user + nice + system + irq + softirq of every core, so Ray's daemons and the torchrun world
count too), and steal is the time the hypervisor gave other guests. The machine's speed: a Python loop of
10⁶ additions (best of 5, seconds) and single-thread fp32 matmul at 1024² (best of 5, GFLOP/s). Writes
suite.json; a failing line is one error line and exit status 2, with nothing written.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import torch
from rich.console import Console
from rich.table import Table

from fastinv.bench.report import environment
from fastinv.files import save_json

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 180.0
console = Console()


def fail(message: str) -> NoReturn:
    """End with one error line and exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def readme_test_line(readme: Path) -> str:
    """The command in the README's "## Tests" block (tests/test_readme.py checks CI runs this line)."""
    found = re.search(r"## Tests\n\n```bash\n(.+?)\n```", readme.read_text()) if readme.is_file() else None
    if found is None:
        fail(f"{readme} has no '## Tests' section with a one-line bash block")
    return found.group(1)


def python_loop_seconds(n: int = 10**6, repeats: int = 5) -> float:
    """Seconds of the fastest of `repeats` Python loops of `n` integer additions."""
    best = math.inf
    for _ in range(repeats):
        start, total = time.perf_counter(), 0
        for i in range(n):
            total += i
        best = min(best, time.perf_counter() - start)
    return best


def matmul_gflops(size: int = 1024, repeats: int = 5) -> float:
    """GFLOP/s (2·size³ per product) of the fastest of `repeats` fp32 matmuls on one CPU thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
        a @ a  # warm-up
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return 2 * size**3 / best / 1e9


def machine_cpu_seconds() -> tuple[float, float] | None:
    """(busy, steal) CPU seconds of all cores since boot, from /proc/stat; None where there is none."""
    try:
        fields = [int(f) for f in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def read_junit(path: Path) -> tuple[Counter[str], dict[str, float]]:
    """(outcome counts, seconds per test file, slowest first) of pytest's JUnit XML at `path`."""
    outcomes: Counter[str] = Counter()
    files: Counter[str] = Counter()
    for case in ET.parse(path).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        outcome = next((tag for tag in ("error", "failure", "skipped") if tag in tags), "passed")
        outcomes[outcome] += 1
        # classname is the module's dotted path (then a class name, if any): tests.test_io[.TestX]
        parts = case.get("classname", "").split(".")
        module = next((i for i, part in enumerate(parts) if part.startswith("test_")), len(parts) - 1)
        files["/".join(parts[: module + 1]) + ".py"] += float(case.get("time", 0.0))
    return outcomes, {name: round(seconds, 2) for name, seconds in files.most_common()}


def run_line(line: str, cwd: Path) -> dict[str, Any]:
    """Run `line` under bash in `cwd` once: wall and CPU seconds, pytest's own figure, outcomes, per-file
    seconds. A failing line is an error line and exit status 2."""
    with tempfile.TemporaryDirectory(prefix="fastinv-suite-") as tmp:
        junit = Path(tmp) / "junit.xml"
        options = f"{os.environ.get('PYTEST_ADDOPTS', '')} --junitxml={shlex.quote(str(junit))}".strip()
        env = {**os.environ, "PYTEST_ADDOPTS": options}
        before, start = machine_cpu_seconds(), time.perf_counter()
        done = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True)
        wall, after = time.perf_counter() - start, machine_cpu_seconds()
        if done.returncode != 0 or not junit.is_file():
            tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
            fail(f"the test line failed (exit status {done.returncode}): {tail[0]}")
        outcomes, files = read_junit(junit)
    reported = re.findall(r" in ([\d.]+)s", done.stdout)
    cpu = steal = None
    if before is not None and after is not None:
        cpu, steal = round(after[0] - before[0], 1), round(after[1] - before[1], 1)
    return {
        "wall_seconds": round(wall, 1),
        "pytest_seconds": float(reported[-1]) if reported else None,
        "machine_cpu_seconds": cpu,
        "steal_seconds": steal,
        "outcomes": dict(outcomes),
        "file_seconds": files,
    }


def print_tables(line: str, runs: list[dict[str, Any]], files: int = 8) -> None:
    """One row per run, then the `files` slowest test files (of the first run) with their seconds per run."""
    table = Table(title=f"{line}: target ≤ {TARGET_SECONDS:.0f} s")
    for column in ("run", "wall s", "pytest s", "CPU s", "steal s", "passed", "skipped", "failed"):
        table.add_column(column, justify="right")
    for index, run in enumerate(runs, 1):
        counts = run["outcomes"]
        failed = counts.get("failure", 0) + counts.get("error", 0)
        figures = (
            run["wall_seconds"],
            run["pytest_seconds"],
            run["machine_cpu_seconds"],
            run["steal_seconds"],
        )
        table.add_row(
            str(index), *map(str, (*figures, counts.get("passed", 0), counts.get("skipped", 0), failed))
        )
    console.print(table)
    slowest = Table(title="slowest test files (setup + call + teardown, s)")
    slowest.add_column("file")
    for index in range(1, len(runs) + 1):
        slowest.add_column(f"run {index}", justify="right")
    for name in list(runs[0]["file_seconds"])[:files]:
        slowest.add_row(name, *(str(run["file_seconds"].get(name, "")) for run in runs))
    console.print(slowest)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1, help="times to run the line (≥ 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose README line to run")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, not {args.runs}")
    line = readme_test_line(args.root / "README.md")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.root, capture_output=True, text=True)
    runs = [run_line(line, args.root) for _ in range(args.runs)]
    loop, gflops = round(python_loop_seconds(), 3), round(matmul_gflops(), 1)
    print_tables(line, runs)
    console.print(f"machine: a Python loop of 10⁶ additions {loop} s; 1-thread matmul {gflops} GFLOP/s")
    record = {
        "command": shlex.join(["python", "benchmarks/suite.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "line": line,
        "commit": commit.stdout.strip() if commit.returncode == 0 else None,
        "target_seconds": TARGET_SECONDS,
        "met": all(run["wall_seconds"] <= TARGET_SECONDS for run in runs),
        "timing": "wall: time.perf_counter around the line; CPU and steal: /proc/stat, all cores",
        **environment(torch.device("cpu")),
        "machine_speed": {"python_loop_1e6_seconds": loop, "matmul_gflops": gflops},
        "runs": runs,
    }
    console.print(f"wrote {save_json(record, args.out / 'suite.json')}")  # makes the folder
    return record


if __name__ == "__main__":
    main()
