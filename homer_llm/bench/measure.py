"""Timers, memory meters and the matmul-rate probe, for CUDA and for the CPU.

CUDA: time with CUDA events (synchronised), memory as ``torch.cuda.max_memory_allocated`` (the
bytes held by live tensors, not the allocator's reserve). CPU: time with ``perf_counter``, memory
as the process's peak resident set size (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``;
where that is not writable, a background thread samples ``VmRSS`` every millisecond).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

import torch

logger = logging.getLogger(__name__)

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def free_memory(device: torch.device, full: bool = True) -> None:
    """Drop unreachable tensors and, on CUDA, return cached blocks to the driver.

    ``full=False`` skips the cyclic garbage collection (seconds on a loaded machine with
    transformers imported); tensors dropped by reference count are freed either way.
    """
    if full:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``fn`` once; return (seconds, its result). CUDA: events around the call, then sync."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) / 1000.0, out
    start_s = time.perf_counter()
    out = fn()
    return time.perf_counter() - start_s, out


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Current resident set size of this process (0 where /proc is unavailable)."""
    kib = _status_kib("VmRSS")
    return 0 if kib is None else kib * 1024


class MemoryMeter:
    """Peak memory of one measured region.

    Usage: ``meter.start()`` just before the region, ``meter.stop()`` after it, then ``peak`` (the
    highest reading during the region) and ``baseline`` (the reading at ``start``).
    """

    kind = "none"

    def start(self) -> None:
        self.baseline = 0
        self.peak = 0

    def stop(self) -> None:
        pass


class CudaMeter(MemoryMeter):
    kind = "cuda_max_memory_allocated"

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reserved = 0

    def start(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.baseline = torch.cuda.memory_allocated(self.device)
        self.peak = self.baseline

    def stop(self) -> None:
        torch.cuda.synchronize(self.device)
        self.peak = torch.cuda.max_memory_allocated(self.device)
        self.reserved = torch.cuda.max_memory_reserved(self.device)


class RssMeter(MemoryMeter):
    """Peak RSS of the process: kernel high-water mark when resettable, else 1 ms sampling."""

    def __init__(self) -> None:
        self.resettable = self._try_reset()
        self.kind = "process_peak_rss" if self.resettable else "process_rss_sampled"
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @staticmethod
    def _try_reset() -> bool:
        try:
            _CLEAR_REFS.write_text("5")  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        except OSError:
            return False
        return _status_kib("VmHWM") is not None

    def start(self) -> None:
        self.baseline = rss_bytes()
        self.peak = self.baseline
        if self.resettable and self._try_reset():
            return
        self.resettable = False
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.peak = max(self.peak, rss_bytes())
            return
        hwm = _status_kib("VmHWM")
        self.peak = max(self.baseline, (hwm or 0) * 1024)


def make_meter(device: torch.device) -> MemoryMeter:
    return CudaMeter(device) if device.type == "cuda" else RssMeter()


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 10) -> float:
    """Measured dense matmul rate in FLOP/s for square ``size`` x ``size`` products in ``dtype``.

    Defaults: 8192 on CUDA (fills an H100), 1024 on the CPU. Random inputs (zeros run faster than
    real data on some GPUs), 3 warm-ups, median of ``repeats``.
    """
    size = size or (8192 if device.type == "cuda" else 1024)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    out = torch.empty_like(a)

    def product() -> None:
        torch.matmul(a, b, out=out)

    for _ in range(3):
        product()
    times = [time_call(device, product)[0] for _ in range(repeats)]
    seconds = max(median(times), 1e-9)
    rate = 2 * size**3 / seconds
    logger.info("matmul probe: %d^3 %s on %s: %.1f GFLOP/s", size, dtype, device, rate / 1e9)
    return rate


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"
