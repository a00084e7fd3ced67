"""Session clocks: where playback is now, in 16 kHz samples.

`WallClock` runs with real time from an anchor and can be re-anchored when the renderer reports
where it is (its first chunk, a playback event), so the agent's idea of "now" follows the video.
`ManualClock` moves only when told to: offline rendering and tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from flowact.schemas import timebase as tb


class WallClock:
    """Samples since the anchor at real-time speed."""

    def __init__(self, start_sample: int = 0, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._anchor = (start_sample, now())

    def now_sample(self) -> int:
        sample, at = self._anchor
        return sample + int((self._now() - at) * tb.SAMPLE_RATE)

    def sync(self, sample: int) -> None:
        """Playback is at `sample` now (the renderer said so)."""
        self._anchor = (sample, self._now())

    async def wait_until(self, sample: int) -> None:
        while (ahead := sample - self.now_sample()) > 0:
            await asyncio.sleep(ahead / tb.SAMPLE_RATE)


class ManualClock:
    """A clock moved by `advance` and `set`; waiters wake when it passes their sample."""

    def __init__(self, start_sample: int = 0) -> None:
        self._sample = start_sample
        self._moved = asyncio.Event()

    def now_sample(self) -> int:
        return self._sample

    def set(self, sample: int) -> None:
        self._sample = sample
        self._moved.set()
        self._moved = asyncio.Event()

    def advance(self, samples: int) -> None:
        self.set(self._sample + samples)

    def sync(self, sample: int) -> None:
        self.set(sample)

    async def wait_until(self, sample: int) -> None:
        while self._sample < sample:
            await self._moved.wait()
