"""`fastinv bench`: every inversion method × backend × step count on the same images, in one run.

Per combination: warm time per image (median and spread over repeats, after warm-up; CUDA events on GPU),
NFE, peak memory (RSS on CPU, max allocated on CUDA) and reconstruction PSNR / SSIM / LPIPS / MSE; then the
ratios DeepInv is judged by (its time against Euler's and ReNoise's, its fidelity against each baseline at
equal steps and at equal time). Written as bench.json, bench.md and plots by `fastinv.bench.report`.

plan = make_plan(methods="euler,deepinv", steps="10,25", out=Path("out"))   # checks every option first
record = build_record(plan, run_bench(plan, console))
write_report(record, plan.out)
"""

from fastinv.bench.plan import BenchPlan, make_plan
from fastinv.bench.report import build_record, report_tables, write_report
from fastinv.bench.run import BenchResult, run_bench
from fastinv.bench.summary import aggregate, interpolate_log_time, summarize

__all__ = [
    "BenchPlan",
    "BenchResult",
    "aggregate",
    "build_record",
    "interpolate_log_time",
    "make_plan",
    "report_tables",
    "run_bench",
    "summarize",
    "write_report",
]
