"""Stage timings for benchmarks: a hook the render loop calls, off by default."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class StageTimes:
    """Wall time per named stage. On CUDA it synchronises around a stage so the time is real."""

    def __init__(self, device: str = "cpu") -> None:
        self.sync = torch.device(device).type == "cuda"
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

    def median_ms(self, name: str) -> float:
        values = self.samples.get(name)
        return 1000 * statistics.median(values) if values else float("nan")


@contextmanager
def no_profile(name: str) -> Iterator[None]:
    yield
