"""`fastinv.memory.PeakMemory`: the CPU sampler sees a short allocation, falls back to getrusage without
/proc, and reads torch's max allocated on CUDA (a monkeypatched one here)."""

from __future__ import annotations

import mmap
import time
from pathlib import Path

import pytest
import torch

from fastinv import memory
from fastinv.memory import PeakMemory


def test_peak_memory_on_cpu_sees_a_short_allocation() -> None:
    before = memory.current_rss_mib()
    assert before is not None and before > 0
    with PeakMemory(torch.device("cpu")) as peak:
        # 32 MiB of fresh pages, touched: an anonymous map, never memory the allocator already holds
        block = mmap.mmap(-1, 32 * 2**20)
        block.write(b"\1" * len(block))
        time.sleep(0.05)
        block.close()
    assert peak.mib >= before + 16
    assert "sampled" in PeakMemory.kind(torch.device("cpu"))


def test_peak_memory_without_proc_falls_back_to_the_process_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "STATM", Path("/nonexistent/statm"))
    with PeakMemory(torch.device("cpu")) as peak:
        pass
    assert peak.mib == pytest.approx(memory.process_peak_rss_mib(), rel=0.1) and peak.mib > 0
    assert "getrusage" in PeakMemory.kind(torch.device("cpu"))


def test_peak_memory_on_cuda_reads_max_allocated(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: calls.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 3 * 2**20)
    device = torch.device("cuda", 0)
    with PeakMemory(device) as peak:
        pass
    assert peak.mib == 3.0 and calls == [("reset", device)]
