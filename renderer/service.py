"""The renderer as a bus service.

Workers share `flowact:sessions` through the consumer group `renderers`: each of a worker's
`capacity` slots takes one SessionRequest and renders that session until a stop, so one worker
owns a session (if it dies, the request is reclaimed by another worker, which starts it anew).

Per session, a `SessionRunner` reads the session's audio, behavior and control streams into a
`SessionTimeline`, and its render loop, paced to real time, publishes one VideoChunk every
0.48 s: 12 JPEG frames and exactly the 7,680 audio samples they cover, silence and idle motion
when nobody speaks. The DiT forward of chunk k + 1 runs while chunk k is decoded and published.
Bad input becomes an error event; it never ends a session.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import replace

import structlog
from torch import Tensor

from flowact.bus.base import Bus, ConsumerOptions, Entry, Rejected
from flowact.bus.typed import publish, report_rejected, session_streams, subscribe
from flowact.renderer.accel import ACCEL_PRESETS, Accelerated, accelerate, warmup
from flowact.renderer.engine import RendererParts, SessionRenderer
from flowact.renderer.media import load_reference
from flowact.renderer.profiling import StageTimes, no_profile
from flowact.renderer.threads import PrimedPool
from flowact.renderer.timeline import ChunkPlan, SessionTimeline, TimelineError
from flowact.schemas import codec
from flowact.schemas import timebase as tb
from flowact.schemas.messages import (
    AudioSegment,
    BehaviorPrompt,
    ConfigureControl,
    ErrorEvent,
    InterruptControl,
    Message,
    SessionRequest,
    StartControl,
    StateEvent,
    StopControl,
    VideoChunk,
)
from flowact.schemas.pcm import float_to_s16
from flowact.schemas.settings import BusSettings, RendererSettings
from flowact.schemas.streams import SESSIONS_STREAM

log = structlog.get_logger(__name__)

SESSIONS_GROUP = "renderers"
CLOCK_EVERY_CHUNKS = 4  # about 2 s between clock reports
INPUT_GROUP = "renderer"


def worker_name(settings: RendererSettings) -> str:
    return settings.worker or f"{socket.gethostname()}-{os.getpid()}"


class RendererService:
    """A renderer worker: serves up to `capacity` sessions of one preset at once."""

    def __init__(
        self,
        bus: Bus,
        settings: RendererSettings,
        bus_settings: BusSettings,
        parts: RendererParts | None = None,
        profiler: StageTimes | None = None,
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.bus_settings = bus_settings
        self.parts = parts
        self.profiler = profiler
        self.name = worker_name(settings)
        self.runners: dict[str, SessionRunner] = {}
        self.threads: PrimedPool | None = None
        self.ready = asyncio.Event()  # set once the worker takes sessions

    async def run(self, stop: asyncio.Event) -> None:
        """Serve sessions until `stop` is set."""
        if self.parts is None:
            self.parts = await asyncio.to_thread(
                RendererParts.build,
                self.settings.preset,
                device=self.settings.device,
                weights=self.settings.weights,
                text_encoder=self.settings.text_encoder,
            )
        accelerated = await asyncio.to_thread(self._accelerate)
        try:
            self.threads = await asyncio.to_thread(self._threads)
            try:
                await self._serve(stop)
            finally:
                self.ready.clear()
                self.threads.close()
        finally:
            if accelerated is not None:
                accelerated.close()

    async def _serve(self, stop: asyncio.Event) -> None:
        log.info(
            "renderer worker ready",
            worker=self.name,
            preset=self.settings.preset,
            capacity=self.settings.capacity,
        )
        slots = [
            self.bus.consume(
                [SESSIONS_STREAM],
                # One request a read: a slot busy rendering must not hold others' requests.
                replace(self._options(SESSIONS_GROUP, f"{self.name}/{slot}"), batch=1),
                lambda entry: self._take(entry, stop),
                on_reject=self._rejected,
                stop=stop,
            )
            for slot in range(self.settings.capacity)
        ]
        self.ready.set()
        await asyncio.gather(*slots)

    def _accelerate(self) -> Accelerated | None:
        """Apply the configured optimizations and warm them up before taking sessions, so no
        session's first chunk waits for compilation or graph capture."""
        config = ACCEL_PRESETS[self.settings.accel]
        if config is None or self.parts is None:
            return None
        accelerated = accelerate(self.parts, config)
        seconds = warmup(self.parts, max(2, self.settings.refine_every), self.settings.refine_every)
        log.info("renderer warmed up", accel=self.settings.accel, seconds=round(seconds, 1))
        return accelerated

    def _threads(self) -> PrimedPool:
        """A thread per slot for its forwards and one for its decodes; on a GPU each has run
        a session's convs first (`renderer/threads.py` says why)."""
        parts = self.parts
        assert parts is not None

        def prime() -> None:
            session = SessionRenderer(parts)
            session.prime()
            session.close()

        on_gpu = parts.device.type == "cuda"
        return PrimedPool(2 * self.settings.capacity, prime if on_gpu else None)

    async def _take(self, entry: Entry, stop: asyncio.Event) -> None:
        try:
            request = codec.decode(entry.fields, entry.stream)
        except codec.MessageError as err:
            raise Rejected(err.reason, field=err.field) from None
        assert isinstance(request, SessionRequest)
        preset = request.preset or self.settings.preset
        if preset != self.settings.preset:
            await publish(
                self.bus,
                request.session,
                ErrorEvent(
                    reason=f"preset {preset!r} is not served here (this worker serves "
                    f"{self.settings.preset!r})",
                    field="preset",
                    stream=entry.stream,
                    entry_id=entry.id,
                ),
            )
            return
        if request.session in self.runners:
            reason = f"session {request.session!r} is already rendering; send a start control"
            await publish(
                self.bus,
                request.session,
                ErrorEvent(reason=reason, field="session", stream=entry.stream, entry_id=entry.id),
            )
            return
        assert self.parts is not None and self.threads is not None
        runner = SessionRunner(
            self.bus,
            request,
            self.parts,
            self.threads,
            self.settings,
            self.bus_settings,
            self.profiler,
        )
        self.runners[request.session] = runner
        try:
            await runner.run(stop)
        finally:
            del self.runners[request.session]

    async def _rejected(self, entry: Entry, error: Rejected) -> None:
        await report_rejected(self.bus, entry, error)

    def _options(self, group: str, consumer: str) -> ConsumerOptions:
        return ConsumerOptions(
            group=group,
            consumer=consumer,
            block_ms=self.bus_settings.block_ms,
            max_deliveries=self.bus_settings.max_deliveries,
            claim_idle_ms=self.bus_settings.claim_idle_ms,
        )


class SessionRunner:
    """One session: inputs into the timeline, the paced render loop out to the video stream."""

    def __init__(
        self,
        bus: Bus,
        request: SessionRequest,
        parts: RendererParts,
        threads: PrimedPool,
        settings: RendererSettings,
        bus_settings: BusSettings,
        profiler: StageTimes | None = None,
    ) -> None:
        self.bus = bus
        self.session = request.session
        self._stage = profiler.stage if profiler is not None else no_profile
        self.parts = parts
        self.threads = threads
        self.settings = settings
        self.bus_settings = bus_settings
        self.timeline = SessionTimeline()
        self.renderer = SessionRenderer(
            parts, seed=request.seed or settings.seed, refine_every=settings.refine_every
        )
        self.jpeg_quality = settings.jpeg_quality
        self.stopped = asyncio.Event()
        self._image = request.image
        self._restart = True
        self._interrupt: InterruptControl | None = None
        self.chunks = 0
        self.first_chunk_s: float | None = None
        self._last_state: str | None = None
        self._behind = False

    async def run(self, service_stop: asyncio.Event) -> None:
        options = ConsumerOptions(
            group=INPUT_GROUP,
            consumer=f"{worker_name(self.settings)}/{self.session}",
            block_ms=min(self.bus_settings.block_ms, 200),
            max_deliveries=self.bus_settings.max_deliveries,
            claim_idle_ms=self.bus_settings.claim_idle_ms,
        )
        streams = session_streams(self.session, ["audio", "behavior", "control"])
        inputs = asyncio.create_task(
            subscribe(self.bus, streams, options, self._on_message, stop=self.stopped)
        )
        watcher = asyncio.create_task(self._watch(service_stop))
        log.info("session started", session=self.session, preset=self.parts.config.name)
        try:
            await self._render_loop()
        finally:
            self.renderer.close()
            self.stopped.set()
            watcher.cancel()
            await asyncio.gather(inputs, return_exceptions=True)
            await self._event(
                StateEvent(actor="renderer", state="stopped", frame=self.timeline.playhead_frame),
            )
            log.info("session stopped", session=self.session, chunks=self.chunks)

    async def _watch(self, service_stop: asyncio.Event) -> None:
        await service_stop.wait()
        self.stopped.set()

    async def _event(self, event: Message) -> None:
        await publish(self.bus, self.session, event, maxlen=self.bus_settings.events_maxlen)

    # -- inputs -----------------------------------------------------------------------------------

    async def _on_message(self, stream: str, message: Message) -> None:
        try:
            self._apply(message)
        except TimelineError as err:
            raise Rejected(err.reason, field=err.field) from None

    def _apply(self, message: Message) -> None:
        if isinstance(message, AudioSegment):
            self.timeline.add_audio(message)
        elif isinstance(message, BehaviorPrompt):
            self.timeline.add_prompt(message)
        elif isinstance(message, InterruptControl):
            self._interrupt = message
        elif isinstance(message, StartControl):
            if message.preset not in (None, self.parts.config.name):
                reason = (
                    f"preset {message.preset!r} is not served here ({self.parts.config.name!r})"
                )
                raise Rejected(reason, field="preset")
            self._image, self._restart = message.image, True
            self.renderer.seed = message.seed
        elif isinstance(message, StopControl):
            self.stopped.set()
        elif isinstance(message, ConfigureControl):
            self._configure(message)

    def _configure(self, message: ConfigureControl) -> None:
        if message.jpeg_quality is not None:
            self.jpeg_quality = message.jpeg_quality
        if message.seed is not None:
            self.renderer.seed = message.seed  # from the next start on
        if message.refine_every is not None:
            generator = self.renderer.generator
            generator.config = replace(generator.config, refine_every=message.refine_every)

    # -- the render loop --------------------------------------------------------------------------

    async def _render_loop(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        publishing: asyncio.Task | None = None
        lookahead = self.renderer.lookahead
        while not self.stopped.is_set():
            if (self._restart or self._interrupt is not None) and publishing is not None:
                await publishing  # the decoder's state must not change under a running decode
                publishing = None
            if self._restart:
                await self._start(lookahead)
            if self._interrupt is not None:
                await self._apply_interrupt(lookahead)
            await self._pace(started, self.chunks)
            await self._refresh(lookahead)
            index = self.chunks
            latents = await self.threads.run(self._forward, self.timeline.plan(index + lookahead))
            if publishing is not None:
                await publishing  # decode of the previous chunk ran beside this forward
            publishing = asyncio.create_task(self._emit(index, latents, started))
            self.chunks += 1
        if publishing is not None:
            await publishing

    async def _start(self, lookahead: int) -> None:
        self._restart = False
        cfg = self.parts.config
        try:
            image = (
                None if self._image is None else load_reference(self._image, cfg.height, cfg.width)
            )
        except ValueError as err:
            await self._event(ErrorEvent(reason=str(err), field="image"))
            image = None
        # Chunk numbering goes on across restarts: the clock belongs to the session.
        plans = [self.timeline.plan(self.chunks + i) for i in range(lookahead)]
        await self.threads.run(self.renderer.start, image, plans)
        await self._event(
            StateEvent(actor="renderer", state="started", frame=self.timeline.playhead_frame),
        )

    async def _apply_interrupt(self, lookahead: int) -> None:
        interrupt, self._interrupt = self._interrupt, None
        assert interrupt is not None
        first, events = self.timeline.interrupt(interrupt.from_sample)
        for event in events:
            await self._event(event)
        plans = [self.timeline.plan(self.chunks + i) for i in range(lookahead)]
        restarted = await self.threads.run(self.renderer.interrupt, first, plans)
        log.info("interrupt", session=self.session, first_chunk=first, restarted=restarted)

    async def _refresh(self, lookahead: int) -> None:
        """Audio or prompts that arrived for chunks already in the stream reach them now."""
        changed = self.timeline.take_changed()
        if changed is None or changed >= self.chunks + lookahead:
            return  # nothing changed, or only chunks that have not entered yet
        plans = [self.timeline.plan(self.chunks + i) for i in range(lookahead)]
        await self.threads.run(self.renderer.refresh, changed, plans)

    async def _pace(self, started: float, index: int) -> None:
        if self.settings.pace <= 0:
            await asyncio.sleep(0)  # let the inputs in
            return
        period = tb.CHUNK_SECONDS / self.settings.pace
        due = started + (index - self.settings.lead_chunks) * period
        delay = due - asyncio.get_running_loop().time()
        self._behind = delay < -period / 4
        if delay > 0:
            await asyncio.sleep(delay)
        elif -delay > period:
            log.debug(
                "renderer behind real time",
                session=self.session,
                chunk=index,
                behind_s=round(-delay, 3),
            )

    async def _emit(self, index: int, latents: Tensor, started: float) -> None:
        frames = await self.threads.run(self._decode_encode, latents)
        plan = self.timeline.plan(index)
        chunk = VideoChunk(
            index=index,
            first_frame=index * tb.FRAMES_PER_CHUNK,
            width=self.parts.config.width,
            height=self.parts.config.height,
            frames=frames,
            audio=float_to_s16(plan.audio),
            state="speaking" if plan.speaking else "idle",
        )
        with self._stage("publish"):
            await publish(self.bus, self.session, chunk, maxlen=self.bus_settings.video_maxlen)
        if self.first_chunk_s is None:
            self.first_chunk_s = asyncio.get_running_loop().time() - started
            log.info("first chunk", session=self.session, seconds=round(self.first_chunk_s, 3))
        for event in self.timeline.emitted(index):
            await self._event(event)
        await self._report_clock(chunk)

    async def _report_clock(self, chunk: VideoChunk) -> None:
        """Say where playback is when it starts or stops speaking, every few chunks, and every
        chunk while behind real time.

        Agents follow this clock (it is the video's clock, not the wall's), so their speech
        lands where they meant it even when the renderer runs slower than real time.
        """
        changed = chunk.state != self._last_state
        if changed or self._behind or chunk.index % CLOCK_EVERY_CHUNKS == 0:
            self._last_state = chunk.state
            await self._event(
                StateEvent(actor="renderer", state=chunk.state, frame=chunk.first_frame)
            )

    def _forward(self, plan: ChunkPlan) -> Tensor:
        with self._stage("forward"):
            return self.renderer.step(plan)

    def _decode_encode(self, latents: Tensor) -> list[bytes]:
        with self._stage("decode"):
            frames = self.renderer.decode(latents, on_device=self.parts.jpeg.on_device)
        with self._stage("encode"):
            return self.renderer.encode_jpeg(frames, self.jpeg_quality)
