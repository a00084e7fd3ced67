"""Timings for benchmarks: a stage hook the render loop calls (off by default) and device timers.

The service's stages each end when their work is done, so wall time is the stage's time: a
renderer `step` synchronises its stream on CUDA, `decode` ends in a copy to the host, JPEG and
publish run on the CPU. `StageTimes` therefore does not synchronise the device by default:
doing so would wait for the other stage running beside it (the decode beside the next forward)
and measure the overlap away. `sync_device=True` gives the old, serialising behaviour.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


class StageTimes:
    """Wall time per named stage."""

    def __init__(self, device: str = "cpu", sync_device: bool = False) -> None:
        self.sync = sync_device and torch.device(device).type == "cuda"
        self.samples: dict[str, list[float]] = defaultdict(list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.samples[name].append(time.perf_counter() - start)

    def median_ms(self, name: str, skip: int = 0) -> float:
        """Median in ms, leaving out the first `skip` samples (warm-up)."""
        values = self.samples.get(name, [])[skip:]
        return 1000 * statistics.median(values) if values else float("nan")

    def clear(self) -> None:
        self.samples.clear()


@contextmanager
def no_profile(name: str) -> Iterator[None]:
    yield


def time_ms(
    fn: Callable[[], object], device: str | torch.device = "cpu", warmup: int = 2, repeat: int = 5
) -> list[float]:
    """Milliseconds of each of `repeat` calls of `fn` after `warmup` calls.

    On CUDA, events on the current stream time the device work; elsewhere the host clock does.
    """
    for _ in range(warmup):
        fn()
    if torch.device(device).type != "cuda":
        out = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            out.append(1000 * (time.perf_counter() - start))
        return out
    pairs = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(repeat)
    ]
    for begin, end in pairs:
        begin.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return [begin.elapsed_time(end) for begin, end in pairs]


def peak_memory_gib(device: str | torch.device, reset: bool = False) -> float:
    """Peak memory allocated by PyTorch on a CUDA device since the last reset (0 elsewhere)."""
    device = torch.device(device)
    if device.type != "cuda":
        return 0.0
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
    return peak
