"""The scene compositor: several sessions' video laid out as one stream, in lockstep.

Each tile is a session whose VideoChunks arrive on `flowact:{sid}:video`. Composed chunk k holds
chunk k of every tile (all sessions count chunks on their own clock from their start, and a
scene starts them together), laid out in a grid over a background, with the tiles' audio summed
and saturated at full scale. The result is published as a session of its own
(`flowact:{scene}:video`), valid VideoChunks that the viewer and the recorder take like any other.

Real-time pacing: the clock is anchored when the first chunks arrive (the latest-starting tile
that shows up within `start_wait_s` sets it); chunk k is due `k` periods later, plus
`allowance_s`. A tile whose chunk k is not there by then holds its last frame with silence for
that chunk, and the lag is reported (a log line and an ErrorEvent on the scene's events
stream, once per episode). Its chunk k arriving afterwards is dropped: the composed clock
never goes back, and a lagging renderer never blocks the scene.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import structlog
from PIL import Image

from flowact.bus.base import Bus
from flowact.bus.typed import publish
from flowact.renderer.media import decode_jpeg, encode_jpeg, load_reference
from flowact.schemas import codec
from flowact.schemas import timebase as tb
from flowact.schemas.messages import Codec, ErrorEvent, Message, StateEvent, VideoChunk
from flowact.schemas.streams import stream_name

log = structlog.get_logger(__name__)

S16_MIN, S16_MAX = -32768, 32767


@dataclass(frozen=True)
class Tile:
    """One session shown in the composed picture, at (column, row) `cell`."""

    name: str
    session: str
    cell: tuple[int, int]


@dataclass(frozen=True)
class CompositorConfig:
    """Layout and timing of a composed stream. Sizes in pixels, times in seconds."""

    columns: int
    rows: int
    gap: int = 8
    background: tuple[int, int, int] = (30, 30, 36)
    tile_size: tuple[int, int] | None = None  # (width, height); None: the first chunk's
    period_s: float = tb.CHUNK_SECONDS
    allowance_s: float = 0.24
    start_wait_s: float = 3.0
    codec: Codec = "jpeg"
    jpeg_quality: int = 85
    video_maxlen: int = 512
    events_maxlen: int = 10_000


@dataclass
class TileStats:
    """Per tile: chunks received, shown in step, held (missing at their deadline), dropped
    (arrived after their deadline), and lag episodes reported."""

    received: int = 0
    shown: int = 0
    held: int = 0
    dropped: int = 0
    lags: int = 0


@dataclass
class CompositorStats:
    """Chunks composed, the first one's index, per-tile counts, and how many times no tile
    was on time (the composed stream fell behind real time)."""

    chunks: int = 0
    slow: int = 0
    first_index: int | None = None
    tiles: dict[str, TileStats] = field(default_factory=dict)


# --- pixels and samples ------------------------------------------------------------------------


class Canvas:
    """The composed picture's geometry: tiles of `tile_size` in a grid, `gap` pixels apart and
    from the edges, over a background colour or image."""

    def __init__(
        self, config: CompositorConfig, tile_size: tuple[int, int], image: bytes | None = None
    ) -> None:
        self.tile_width, self.tile_height = tile_size
        gap = config.gap
        self.gap = gap
        self.width = config.columns * (self.tile_width + gap) + gap
        self.height = config.rows * (self.tile_height + gap) + gap
        self.background = np.empty((self.height, self.width, 3), np.uint8)  # [H, W, 3]
        self.background[:] = config.background
        if image is not None:
            try:
                self.background = load_reference(image, self.height, self.width)
            except ValueError as err:
                log.warning("background image unusable; plain colour instead", reason=str(err))

    def origin(self, cell: tuple[int, int]) -> tuple[int, int]:
        """(x, y) of the top-left pixel of the tile at (column, row) `cell`."""
        column, row = cell
        return self.gap + column * (self.tile_width + self.gap), self.gap + row * (
            self.tile_height + self.gap
        )

    def behind(self, cell: tuple[int, int]) -> np.ndarray:
        """The background under the tile at `cell`: `[th, tw, 3]`."""
        x, y = self.origin(cell)
        return self.background[y : y + self.tile_height, x : x + self.tile_width]

    def fit(self, frames: np.ndarray) -> np.ndarray:
        """Frames `[T, h, w, 3]` at the tile size `[T, th, tw, 3]` (scaled when they differ)."""
        if frames.shape[1:3] == (self.tile_height, self.tile_width):
            return frames
        size = (self.tile_width, self.tile_height)
        return np.stack(
            [np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BILINEAR)) for f in frames]
        )

    def compose(self, tiles: Sequence[tuple[tuple[int, int], np.ndarray]]) -> np.ndarray:
        """(cell, frames `[T, th, tw, 3]`) pairs -> composed frames `[T, H, W, 3]`."""
        frames = np.repeat(self.background[None], tb.FRAMES_PER_CHUNK, axis=0)  # [T, H, W, 3]
        for cell, pixels in tiles:
            x, y = self.origin(cell)
            frames[:, y : y + self.tile_height, x : x + self.tile_width] = pixels
        return frames


def chunk_frames(chunk: VideoChunk) -> np.ndarray:
    """A chunk's frames as `[T, H, W, 3]` uint8 RGB, whatever its codec."""
    if chunk.codec == "jpeg":
        return np.stack([decode_jpeg(frame) for frame in chunk.frames])
    shape = (chunk.height, chunk.width, 3)
    return np.stack([np.frombuffer(frame, np.uint8).reshape(shape) for frame in chunk.frames])


def mix(pcms: Sequence[bytes]) -> bytes:
    """Sum s16le chunks of equal length, saturating at full scale instead of wrapping around."""
    total = np.zeros(tb.SAMPLES_PER_CHUNK, np.int32)
    for pcm in pcms:
        total += np.frombuffer(pcm, "<i2")
    return np.clip(total, S16_MIN, S16_MAX).astype("<i2").tobytes()


def encode_frames(frames: np.ndarray, codec_name: Codec, quality: int) -> list[bytes]:
    if codec_name == "jpeg":
        return encode_jpeg(frames, quality)
    return [np.ascontiguousarray(f).tobytes() for f in frames]


# --- the compositor ----------------------------------------------------------------------------


class _Feed:
    """One tile's chunks as they arrive, and what it last showed."""

    def __init__(self, tile: Tile) -> None:
        self.tile = tile
        self.stream = stream_name(tile.session, "video")
        self.chunks: dict[int, VideoChunk] = {}
        self.first: tuple[int, float] | None = None  # (index, arrival) of its first chunk
        self.size: tuple[int, int] | None = None
        self.last_frame: np.ndarray | None = None  # [th, tw, 3]
        self.newest: int | None = None  # the highest index received
        self.lagging = False
        self.stats = TileStats()


class Compositor:
    """Composes `tiles` into session `session` until stopped (see the module docstring).

    `after` is where the tiles' video streams are read from ("0": everything they hold; a scene
    starts its sessions on fresh streams). `clock` is the event loop's by default.
    """

    def __init__(
        self,
        bus: Bus,
        session: str,
        tiles: Sequence[Tile],
        config: CompositorConfig,
        *,
        background_image: bytes | None = None,
        after: str = "0",
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not tiles:
            raise ValueError("a compositor needs at least one tile")
        self.bus = bus
        self.session = session
        self.config = config
        self.background_image = background_image
        self.after = after
        self._clock = clock
        self._feeds = [_Feed(t) for t in tiles]
        self._arrived = asyncio.Event()
        self._next = 0  # the lowest chunk index still wanted
        self._canvas: Canvas | None = None
        self._state: str | None = None
        self._slow = False  # no tile was on time: the composed clock follows the first to come
        self._composed = asyncio.Event()  # set after each composed chunk
        self.last_index: int | None = None  # the last chunk composed
        self.stats = CompositorStats(tiles={f.tile.name: f.stats for f in self._feeds})

    @property
    def newest(self) -> int | None:
        """The highest chunk index any tile delivered so far."""
        firsts = [f.newest for f in self._feeds if f.newest is not None]
        return max(firsts) if firsts else None

    async def composed(self, index: int, timeout_s: float) -> bool:
        """Wait until chunk `index` has been composed; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.last_index is None or self.last_index < index:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._composed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._composed.wait(), remaining)
        return True

    def now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    async def run(self, stop: asyncio.Event) -> CompositorStats:
        """Compose until `stop` is set; returns the counts."""
        readers = [asyncio.create_task(self._read(feed, stop)) for feed in self._feeds]
        try:
            anchor = await self._anchor(stop)
            if anchor is not None:
                await self._loop(*anchor, stop)
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            if self.stats.first_index is not None:
                frame = (self.stats.first_index + self.stats.chunks) * tb.FRAMES_PER_CHUNK
                await self._event(StateEvent(actor="renderer", state="stopped", frame=frame))
        return self.stats

    async def _loop(self, t0: float, index: int, stop: asyncio.Event) -> None:
        self.stats.first_index = index
        frame = index * tb.FRAMES_PER_CHUNK
        await self._event(StateEvent(actor="renderer", state="started", frame=frame))
        log.info("compositor started", session=self.session, tiles=len(self._feeds), chunk=index)
        while not stop.is_set():
            self._next = index
            due = t0 + index * self.config.period_s + self.config.allowance_s
            slipped = await self._gather(index, due, stop)
            if stop.is_set():
                break
            if slipped > 0:
                t0 += slipped  # the clock moves on from here, later; it never goes back
            elif self._slow:
                self._slow = False
                log.info("composed stream back in real time", session=self.session, chunk=index)
            chunk = await self._compose(index)
            await publish(self.bus, self.session, chunk, maxlen=self.config.video_maxlen)
            self.stats.chunks += 1
            self.last_index = index
            self._composed.set()
            await self._report_state(chunk)
            index += 1

    # -- input --------------------------------------------------------------------------------

    async def _read(self, feed: _Feed, stop: asyncio.Event) -> None:
        after = self.after
        if after == "$":  # resolved once: "$" on every read would lose chunks between reads
            after = await self.bus.last_id(feed.stream)
        while not stop.is_set():
            for entry in await self.bus.read(feed.stream, after, count=16, block_ms=100):
                after = entry.id
                try:
                    chunk = codec.decode(entry.fields, feed.stream)
                except codec.MessageError as err:
                    log.warning("not a video chunk; skipped", stream=feed.stream, id=entry.id,
                                field=err.field, reason=err.reason)  # fmt: skip
                    continue
                assert isinstance(chunk, VideoChunk)
                self._accept(feed, chunk)

    def _accept(self, feed: _Feed, chunk: VideoChunk) -> None:
        feed.stats.received += 1
        feed.newest = max(chunk.index, feed.newest if feed.newest is not None else chunk.index)
        if feed.first is None:
            feed.first = (chunk.index, self.now())
            feed.size = (chunk.width, chunk.height)
        if chunk.index < self._next:  # its slot was composed without it
            feed.stats.dropped += 1
            log.debug("late chunk dropped", tile=feed.tile.name, chunk=chunk.index)
            return
        feed.chunks[chunk.index] = chunk
        self._arrived.set()

    async def _anchor(self, stop: asyncio.Event) -> tuple[float, int] | None:
        """(t0, first index): chunk k is due at t0 + k periods. Waits for a first chunk, then up
        to `start_wait_s` for the other tiles' first chunks; None when stopped before any."""
        while not any(f.first for f in self._feeds):
            if await self._wait(stop, None):
                return None
        started = self.now()
        while not all(f.first for f in self._feeds):
            remaining = started + self.config.start_wait_s - self.now()
            if remaining <= 0 or await self._wait(stop, remaining):
                break
        if stop.is_set():
            return None
        period = self.config.period_s
        arrived = [f.first for f in self._feeds if f.first is not None]
        t0 = max(at - index * period for index, at in arrived)
        size = self.config.tile_size or next(f.size for f in self._feeds if f.size)
        self._canvas = Canvas(self.config, size, self.background_image)
        return t0, min(index for index, _ in arrived)

    async def _gather(self, index: int, deadline: float, stop: asyncio.Event) -> float:
        """Wait until every tile has chunk `index`, or the deadline passed, or `stop`.

        When no tile at all has the chunk by its deadline, the machine (not one renderer) is
        behind: the clock waits for the first tile that delivers it and gives the others
        `allowance_s` after that, so that a scene rendered slower than real time still shows
        every tile (it plays slower; a recording of it is whole). Returns how many seconds
        the deadline slipped so (0 when it held).
        """
        start = deadline
        while not all(index in f.chunks for f in self._feeds):
            remaining = deadline - self.now()
            if remaining <= 0 and not any(index in f.chunks for f in self._feeds):
                await self._report_slow(index)
                if await self._wait(stop, None):
                    break
                if any(index in f.chunks for f in self._feeds):
                    deadline = self.now() + self.config.allowance_s
                continue
            if remaining <= 0 or await self._wait(stop, remaining):
                break
        return deadline - start

    async def _wait(self, stop: asyncio.Event, timeout: float | None) -> bool:
        """Wait for a chunk to arrive (or `timeout`); True when `stop` is set."""
        self._arrived.clear()
        waiters = {asyncio.ensure_future(self._arrived.wait()), asyncio.ensure_future(stop.wait())}
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return stop.is_set()

    # -- output -------------------------------------------------------------------------------

    async def _compose(self, index: int) -> VideoChunk:
        """Composed chunk `index` from what the tiles have; missing tiles are held."""
        taken: list[tuple[_Feed, VideoChunk | None]] = []
        for feed in self._feeds:
            chunk = feed.chunks.pop(index, None)
            for old in [i for i in feed.chunks if i < index]:
                del feed.chunks[old]
            taken.append((feed, chunk))
            await self._note(feed, index, chunk is not None)
        frames, audio = await asyncio.to_thread(self._render, taken)
        canvas = self._canvas
        assert canvas is not None
        speaking = any(c is not None and c.state == "speaking" for _, c in taken)
        return VideoChunk(
            index=index,
            first_frame=index * tb.FRAMES_PER_CHUNK,
            width=canvas.width,
            height=canvas.height,
            codec=self.config.codec,
            frames=frames,
            audio=audio,
            state="speaking" if speaking else "idle",
        )

    def _render(
        self, taken: Sequence[tuple[_Feed, VideoChunk | None]]
    ) -> tuple[list[bytes], bytes]:
        """Pixels and samples of one composed chunk (runs in a worker thread)."""
        canvas = self._canvas
        assert canvas is not None
        tiles, pcms = [], []
        for feed, chunk in taken:
            if chunk is not None:
                pixels = canvas.fit(chunk_frames(chunk))  # [T, th, tw, 3]
                feed.last_frame = pixels[-1]
                pcms.append(chunk.audio)
            else:  # held: the last frame shown, and silence
                held = feed.last_frame
                if held is None:  # nothing shown yet
                    held = canvas.behind(feed.tile.cell)
                pixels = np.broadcast_to(held, (tb.FRAMES_PER_CHUNK, *held.shape))
            tiles.append((feed.tile.cell, pixels))
        frames = canvas.compose(tiles)
        return encode_frames(frames, self.config.codec, self.config.jpeg_quality), mix(pcms)

    async def _note(self, feed: _Feed, index: int, present: bool) -> None:
        """Count the tile's chunk and report the start and the end of a lag."""
        if present:
            feed.stats.shown += 1
            if feed.lagging:
                feed.lagging = False
                log.info("tile back in step", tile=feed.tile.name, chunk=index,
                         held=feed.stats.held)  # fmt: skip
            return
        feed.stats.held += 1
        if feed.lagging:
            return
        feed.lagging = True
        feed.stats.lags += 1
        reason = (
            f"tile {feed.tile.name!r} (session {feed.tile.session}) is late: chunk {index} missed "
            "its deadline; holding its last frame with silence"
        )
        log.warning("tile late; holding its last frame", tile=feed.tile.name,
                    session=feed.tile.session, chunk=index)  # fmt: skip
        await self._event(ErrorEvent(reason=reason, stream=feed.stream, field="video"))

    async def _report_slow(self, index: int) -> None:
        if self._slow:
            return
        self._slow = True
        self.stats.slow += 1
        log.warning("no tile on time; the composed stream follows the first tile to come",
                    session=self.session, chunk=index)  # fmt: skip
        reason = (
            f"no tile delivered chunk {index} by its deadline: the renderers run slower than real "
            "time, and so does the composed stream"
        )
        await self._event(ErrorEvent(reason=reason, field="video"))

    async def _report_state(self, chunk: VideoChunk) -> None:
        if chunk.state != self._state:
            self._state = chunk.state
            state = StateEvent(actor="renderer", state=chunk.state, frame=chunk.first_frame)
            await self._event(state)

    async def _event(self, event: Message) -> None:
        try:
            await publish(self.bus, self.session, event, maxlen=self.config.events_maxlen)
        except Exception:  # noqa: BLE001 - a report that failed must not end the scene
            log.exception("scene event not published", session=self.session)
