import asyncio

from agent_harness import SESSION

from flowact.agents.behavior import BehaviorScheduler
from flowact.agents.clock import ManualClock
from flowact.agents.outbox import BusOutbox
from flowact.bus.memory import MemoryBus
from flowact.planner.base import PlanRequest
from flowact.schemas import codec
from flowact.schemas import timebase as tb
from flowact.schemas.messages import BehaviorPrompt
from flowact.schemas.streams import stream_name


class FixedPlanner:
    """Answers every window with the same prompts, after `delay_s`; records the images seen."""

    def __init__(self, prompts: list[BehaviorPrompt], delay_s: float = 0.0) -> None:
        self.prompts, self.delay_s, self.images = prompts, delay_s, []

    async def plan(self, request: PlanRequest) -> list[BehaviorPrompt]:
        self.images.append(request.image)
        await asyncio.sleep(self.delay_s)
        return self.prompts


async def published(bus: MemoryBus) -> list[str]:
    entries = await bus.entries(stream_name(SESSION, "behavior"))
    return [codec.decode(e.fields).text for e in entries]


async def test_late_prompts_are_dropped_and_the_image_goes_along() -> None:
    bus, clock = MemoryBus(), ManualClock(100 * tb.SAMPLES_PER_FRAME)
    planner = FixedPlanner(
        [
            BehaviorPrompt(text="over", start_frame=0, duration_frames=100),  # ended at 100
            BehaviorPrompt(text="running", start_frame=50, duration_frames=60),
            BehaviorPrompt(text="asap", duration_frames=5),
        ]
    )
    scheduler = BehaviorScheduler(planner, BusOutbox(bus, SESSION), clock)
    scheduler.image = b"\x89PNG..."
    scheduler.submit(PlanRequest(start_frame=100, frames=25, state="speaking"))
    await scheduler.idle()
    assert await published(bus) == ["running", "asap"]
    assert (scheduler.late, scheduler.published) == (1, 2)
    assert planner.images == [b"\x89PNG..."]


async def test_cancel_drops_plans_in_flight() -> None:
    bus, clock = MemoryBus(), ManualClock()
    planner = FixedPlanner([BehaviorPrompt(text="too late", duration_frames=5)], delay_s=0.2)
    scheduler = BehaviorScheduler(planner, BusOutbox(bus, SESSION), clock, concurrency=1)
    for k in range(3):
        scheduler.submit(PlanRequest(start_frame=25 * k, frames=25, state="speaking"))
    await asyncio.sleep(0.05)
    scheduler.cancel()
    await scheduler.idle()
    assert await published(bus) == [] and len(planner.images) == 1  # one ran, two waited
