"""Per-call timings for the benchmark scripts (denoiser, kernels): one clock rule for both."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import torch


def time_calls(call: Callable[[], Any], repeats: int, device: torch.device, warmup: int = 0) -> list[float]:
    """Milliseconds of each of `repeats` back-to-back calls of `call`, after `warmup` untimed calls.

    On CUDA the times come from events recorded between calls on the current stream (no host sync in the
    loop, so host overhead counts only where the GPU waits for it); elsewhere from time.perf_counter.
    """
    for _ in range(warmup):
        call()
    if device.type != "cuda":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1e3)
        return times
    events = [torch.cuda.Event(enable_timing=True) for _ in range(repeats + 1)]
    torch.cuda.synchronize(device)
    events[0].record()
    for event in events[1:]:
        call()
        event.record()
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) for start, end in itertools.pairwise(events)]
