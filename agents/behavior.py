"""`BehaviorScheduler`: runs the planner beside the conversation and publishes what it plans.

Planning never sits on the agent's path: each window is planned in a task of its own (a few at a
time), so a slow model delays only its own prompts. Prompts that would end before playback
reaches them are not sent; a barge-in cancels the plans still in flight.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import structlog

from flowact.agents.base import Outbox, SessionClock
from flowact.planner.base import Planner, PlanRequest
from flowact.schemas import timebase as tb

log = structlog.get_logger(__name__)


class BehaviorScheduler:
    """Plans windows in the background and publishes their prompts."""

    def __init__(
        self, planner: Planner, outbox: Outbox, clock: SessionClock, *, concurrency: int = 2
    ) -> None:
        self.planner = planner
        self.outbox = outbox
        self.clock = clock
        self.image: bytes | None = None  # the reference image, sent along with every window
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self.published = 0
        self.late = 0

    def submit(self, request: PlanRequest) -> None:
        """Plan `request` in the background."""
        task = asyncio.create_task(self._plan(replace(request, image=self.image)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        """Drop the plans in flight (the conversation moved on)."""
        for task in self._tasks:
            task.cancel()

    async def idle(self) -> None:
        """Wait for the plans in flight."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        self.cancel()
        await self.idle()

    async def _plan(self, request: PlanRequest) -> None:
        async with self._slots:
            try:
                prompts = await self.planner.plan(request)
            except Exception:  # noqa: BLE001 - a planner bug must not take the agent down
                log.exception("planner raised; window skipped", window=request.start_frame)
                return
        now_frame = self.clock.now_sample() // tb.SAMPLES_PER_FRAME
        for prompt in prompts:
            start = now_frame if prompt.start_frame is None else prompt.start_frame
            if start + prompt.duration_frames <= now_frame:
                self.late += 1
                continue
            await self.outbox.send(prompt)
            self.published += 1
        if self.late:
            log.debug("late prompts dropped", late=self.late)


class ListeningWindows:
    """Windows of the user's speech, planned as they fill: nods and attention while listening.

    The user's audio arrives live, so a full window is already in the past; its prompts are
    placed from the current playback frame on. The stance at the start of listening is planned
    when the phase begins, so these windows are never `first`.
    """

    def __init__(self, behaviors: BehaviorScheduler, clock: SessionClock, frames: int) -> None:
        self.behaviors = behaviors
        self.clock = clock
        self.frames = frames
        self._pcm = bytearray()

    def add(self, pcm: bytes) -> None:
        self._pcm += pcm
        size = self.frames * tb.SAMPLES_PER_FRAME * tb.BYTES_PER_SAMPLE
        while len(self._pcm) >= size:
            self._submit(bytes(self._pcm[:size]))
            del self._pcm[:size]

    def reset(self) -> None:
        """A new turn of the user begins."""
        self._pcm.clear()

    def _submit(self, pcm: bytes) -> None:
        request = PlanRequest(
            start_frame=self.clock.now_sample() // tb.SAMPLES_PER_FRAME,
            frames=self.frames,
            state="listening",
            speaker="user",
            pcm=pcm,
        )
        self.behaviors.submit(request)
