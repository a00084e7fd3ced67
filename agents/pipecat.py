"""FlowAct as a Pipecat processor: a pipeline's TTS speech in, the avatar's video out.

Put `FlowActAvatarProcessor` after the TTS service and before the output transport:

    avatar = FlowActAvatarProcessor(bus, image=png_bytes, preset="demo")
    pipeline = Pipeline([transport.input(), stt, user_agg, llm, tts, avatar, transport.output(),
                         assistant_agg])

On `StartFrame` it asks a renderer for a session through `AvatarClient`; each
`TTSStartedFrame`..`TTSStoppedFrame` becomes one utterance of the avatar (its `TTSAudioRawFrame`s at
whatever rate the TTS speaks), an `InterruptionFrame` (user barge-in) becomes a FlowAct interrupt,
and the renderer's video chunks go downstream as `OutputImageRawFrame`s (RGB, the preset's size).

With `sync_audio` (the default) the TTS audio is held back and each video frame leaves with the
40 ms of the chunk's audio it shows, as a `SpeechOutputAudioRawFrame`. The renderer plays speech
about a second after the TTS made it (start delay, lead, render time); sending the raw TTS audio on
would put the voice that far ahead of the lips. The chunk's audio is exactly what the frames show,
so the output transport, which routes `sync_with_audio` images through its audio queue, plays
both in lockstep; after a barge-in the voice stops where the renderer cut. The price is the render
latency added to the time to the first word. Without it the TTS audio passes through unchanged and
the images are paced at 25 fps (for transports that show the latest image).

Needs the `pipecat` extra: `pip install 'flowact[pipecat]'`.
"""

from __future__ import annotations

import asyncio
import io

import numpy as np
import structlog
from PIL import Image

from flowact.agents.sdk import AvatarClient
from flowact.bus.base import Bus
from flowact.schemas import timebase as tb
from flowact.schemas.agent_settings import AgentSettings, PlannerSettings
from flowact.schemas.messages import SAMPLE_RATES, SessionRequest, VideoChunk
from flowact.schemas.pcm import StreamResampler, float_to_s16, s16_to_float

try:
    from pipecat.frames.frames import (
        CancelFrame,
        EndFrame,
        Frame,
        InterruptionFrame,
        OutputImageRawFrame,
        SpeechOutputAudioRawFrame,
        StartFrame,
        TTSAudioRawFrame,
        TTSStartedFrame,
        TTSStoppedFrame,
        TTSTextFrame,
    )
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
except ModuleNotFoundError as err:  # pragma: no cover - exercised with pipecat hidden
    raise ModuleNotFoundError(
        f"flowact.agents.pipecat needs Pipecat ({err.name} is missing): "
        "pip install 'flowact[pipecat]'"
    ) from err

log = structlog.get_logger(__name__)

FRAME_BYTES = tb.SAMPLES_PER_FRAME * tb.BYTES_PER_SAMPLE  # one video frame's 16 kHz audio


class FlowActAvatarProcessor(FrameProcessor):
    """A FlowAct avatar in a Pipecat pipeline, over any `Bus` (MemoryBus, RedisStreamsBus).

    `image`: PNG or JPEG reference (None: the preset's default avatar); `preset` and `seed` go to
    the renderer. `sync_audio`: send each frame's audio with it instead of the raw TTS audio (see
    the module docstring). `drain_timeout_s`: on `EndFrame`, how long to wait for speech already
    handed in to be rendered and sent before the session stops (`CancelFrame` stops at once).
    """

    def __init__(
        self,
        bus: Bus,
        *,
        image: bytes | None = None,
        preset: str | None = None,
        seed: int = 0,
        session: str | None = None,
        sync_audio: bool = True,
        drain_timeout_s: float = 10.0,
        settings: AgentSettings | None = None,
        planner: PlannerSettings | None = None,
        block_ms: int = 200,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.avatar = AvatarClient(
            bus, session, settings=settings, planner=planner, block_ms=block_ms
        )
        # Validate now: a bad image or preset should fail where the processor is built.
        SessionRequest(session=self.avatar.session, image=image, preset=preset, seed=seed)
        self.image, self.preset, self.seed = image, preset, seed
        self.sync_audio = sync_audio
        self.drain_timeout_s = drain_timeout_s
        self.chunks = 0  # video chunks sent downstream
        self._pump: asyncio.Task | None = None
        self._speech = _SpeechForwarder(self.avatar)
        self._chunk_sent = asyncio.Event()
        self._sent = -1  # index of the last chunk sent downstream

    @property
    def session(self) -> str:
        return self.avatar.session

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)  # downstream must start before video flows
            await self._start()
        elif isinstance(frame, (EndFrame, CancelFrame)):
            if isinstance(frame, EndFrame):
                await self._drain()
            await self._stop()
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            self._speech.interrupted()
            await self.avatar.interrupt()
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._speech.audio(frame.audio, frame.sample_rate, frame.num_channels)
            if not self.sync_audio:
                await self.push_frame(frame, direction)
        elif isinstance(frame, (TTSStartedFrame, TTSStoppedFrame)):
            await self._speech.end()  # one utterance per TTSStarted..TTSStopped
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSTextFrame):
            await self.avatar.push_transcript(frame.text, speaker="agent")  # steers gestures
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._stop()

    # -- session ----------------------------------------------------------------------------------

    async def _start(self) -> None:
        await self.avatar.start(self.image, preset=self.preset, seed=self.seed)
        self._pump = self.create_task(self._pump_video(), name="flowact-video")
        log.info("pipecat avatar started", session=self.session, sync_audio=self.sync_audio)

    async def _stop(self) -> None:
        if self._pump is not None:
            await self.cancel_task(self._pump)
            self._pump = None
        await self.avatar.stop()

    async def _drain(self) -> None:
        """Let speech already handed in play out: wait until the agent has published all of it
        (it is idle again), then until the chunk holding its last sample has gone downstream."""
        await self._speech.end()
        if not self._speech.spoke or self._pump is None:
            return
        try:
            await asyncio.wait_for(self._played_out(), self.drain_timeout_s)
        except asyncio.TimeoutError:
            log.warning("speech not played out before the end", session=self.session)

    async def _played_out(self) -> None:
        agent = self.avatar.agent
        await agent.settle()  # the speech handed in has reached the agent's state
        while agent.phase != "idle":
            await asyncio.sleep(0.02)
        last = tb.chunk_of_sample(max(agent.state["free_at"] - 1, 0))
        while self._sent < last:
            self._chunk_sent.clear()
            await self._chunk_sent.wait()

    # -- video ------------------------------------------------------------------------------------

    async def _pump_video(self) -> None:
        pacer = _Pacer()
        async for chunk in self.avatar.video():
            try:
                images = await asyncio.to_thread(rgb_frames, chunk)
            except OSError as err:  # a frame that does not decode costs its chunk, not the video
                log.warning("video chunk skipped", index=chunk.index, error=str(err))
                continue
            for i, image in enumerate(images):
                frame = OutputImageRawFrame(
                    image=image, size=(chunk.width, chunk.height), format="RGB"
                )
                if self.sync_audio:
                    # The transport shows the image when the audio queued before it has played.
                    frame.sync_with_audio = True
                    await self.push_frame(frame)
                    audio = chunk.audio[i * FRAME_BYTES : (i + 1) * FRAME_BYTES]
                    await self.push_frame(
                        SpeechOutputAudioRawFrame(
                            audio=audio, sample_rate=tb.SAMPLE_RATE, num_channels=1
                        )
                    )
                else:
                    await pacer.wait()
                    await self.push_frame(frame)
            self.chunks += 1
            self._sent = chunk.index
            self._chunk_sent.set()


def rgb_frames(chunk: VideoChunk) -> list[bytes]:
    """A chunk's frames as packed RGB bytes, `width * height * 3` each."""
    if chunk.codec == "raw":
        return list(chunk.frames)
    out = []
    for data in chunk.frames:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        if image.size != (chunk.width, chunk.height):
            image = image.resize((chunk.width, chunk.height))
        out.append(image.tobytes())
    return out


class _Pacer:
    """Release video frames at 25 fps; catch up rather than burst after falling a chunk behind."""

    def __init__(self) -> None:
        self._due: float | None = None

    async def wait(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._due is None or now - self._due > tb.CHUNK_SECONDS:
            self._due = now
        if self._due > now:
            await asyncio.sleep(self._due - now)
        self._due += 1 / tb.FPS


class _SpeechForwarder:
    """TTS audio into `AvatarClient` as utterances: mono, at a rate the bus takes."""

    def __init__(self, avatar: AvatarClient) -> None:
        self.avatar = avatar
        self.open = False  # an utterance was started and not ended
        self.spoke = False  # any speech was handed in since the start
        self._rate = tb.SAMPLE_RATE  # of the pcm handed in for the open utterance
        self._resampler: StreamResampler | None = None  # for rates the bus does not take

    async def audio(self, pcm: bytes, rate: int, channels: int) -> None:
        if channels > 1:
            pcm = _downmix(pcm, channels)
        if rate not in SAMPLE_RATES:
            if self._resampler is None or self._resampler.rate != rate:
                await self._flush()
                self._resampler = StreamResampler(rate)
            pcm, rate = float_to_s16(self._resampler.push(s16_to_float(pcm))), tb.SAMPLE_RATE
        elif self._resampler is not None:
            await self._flush()
        if pcm:
            await self.avatar.push_audio(pcm, rate)
            self.open = self.spoke = True
            self._rate = rate

    async def end(self) -> None:
        """Close the open utterance, if any."""
        await self._flush()
        if self.open:
            await self.avatar.push_audio(b"", self._rate, end=True)
        self.open = False

    def interrupted(self) -> None:
        """The agent drops what was handed in; the next audio starts a new utterance."""
        self.open, self._resampler = False, None

    async def _flush(self) -> None:
        if self._resampler is not None:
            tail = float_to_s16(self._resampler.flush())
            self._resampler = None
            if tail:
                await self.avatar.push_audio(tail, tb.SAMPLE_RATE)
                self.open, self._rate = True, tb.SAMPLE_RATE


def _downmix(pcm: bytes, channels: int) -> bytes:
    samples = np.frombuffer(pcm, dtype="<i2")
    samples = samples[: len(samples) // channels * channels].reshape(-1, channels)
    return samples.mean(axis=1).round().astype("<i2").tobytes()


__all__ = ["FlowActAvatarProcessor", "rgb_frames"]
