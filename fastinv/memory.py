"""Peak memory of a block of code: max allocated on CUDA, the process's sampled RSS on CPU."""

from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path
from types import TracebackType

import torch

STATM = Path("/proc/self/statm")
MIB = 2**20
SAMPLE_SECONDS = 0.002
"""How often the CPU sampler reads the RSS."""


def current_rss_mib() -> float | None:
    """This process's resident set size now, in MiB (from /proc/self/statm); None where there is none."""
    try:
        resident_pages = int(STATM.read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / MIB


def process_peak_rss_mib() -> float:
    """The highest RSS this process ever had, in MiB (getrusage; kilobytes on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 2**10


class PeakMemory:
    """`with PeakMemory(device) as memory: ...`, then `memory.mib`: the block's peak memory in MiB.

    CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats (tensors torch allocated, weights
    included; not the caching allocator's reserve, not ONNX Runtime's or TensorRT's own memory).
    CPU: the process's RSS (weights, buffers, every library) sampled every SAMPLE_SECONDS by a thread, plus
    once at entry and exit; without /proc, getrusage's peak RSS of the whole process so far. `kind` says
    which.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mib = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def kind(device: torch.device) -> str:
        """What `mib` measures on `device`, for result files."""
        if device.type == "cuda":
            return (
                "torch.cuda.max_memory_allocated during the inversion (MiB): torch's allocator only, so the "
                "memory ONNX Runtime and TensorRT allocate for themselves is not counted"
            )
        if current_rss_mib() is None:
            return "peak RSS of the whole process so far (getrusage ru_maxrss, MiB), not per inversion"
        every = f"{SAMPLE_SECONDS * 1e3:g} ms"
        return f"peak RSS of the process during the inversion (/proc/self/statm sampled every {every}, MiB)"

    def _sample(self) -> None:
        rss = current_rss_mib()
        if rss is not None:
            self.mib = max(self.mib, rss)

    def _sampler(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._sample()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif current_rss_mib() is not None:
            self._sample()
            self._thread = threading.Thread(target=self._sampler, name="fastinv-rss-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / MIB
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._sample()
        else:
            self.mib = process_peak_rss_mib()
