"""Record a session's video stream to an MP4 file: H.264 video and AAC audio.

Every VideoChunk carries its 12 frames and exactly the 7,680 samples they cover, so the two
tracks are written on one clock: chunk k starts at frame 12k and at sample 7680k of the
recording (counted from the first chunk recorded). A chunk that never arrives is filled with the
last frame held and silence, so nothing after a gap slides out of sync.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import structlog
from tqdm import tqdm

from flowact.bus.base import Bus
from flowact.renderer.media import decode_jpeg
from flowact.schemas import codec
from flowact.schemas import timebase as tb
from flowact.schemas.messages import VideoChunk
from flowact.schemas.streams import stream_name

log = structlog.get_logger(__name__)

VIDEO_CODEC = "libx264"
AUDIO_CODEC = "aac"
AUDIO_BITRATE = 64_000
VIDEO_TIME_BASE = Fraction(1, tb.FPS)
AUDIO_TIME_BASE = Fraction(1, tb.SAMPLE_RATE)


@dataclass(frozen=True)
class RecordingStats:
    """What a recording holds: chunks received, chunks filled for gaps, frames and seconds."""

    chunks: int
    filled: int
    frames: int
    width: int
    height: int

    @property
    def seconds(self) -> float:
        return self.frames / tb.FPS


def chunk_pixels(chunk: VideoChunk) -> np.ndarray:
    """The chunk's frames as `[T, H, W, 3]` uint8 RGB, whatever its codec."""
    if chunk.codec == "jpeg":
        return np.stack([decode_jpeg(frame) for frame in chunk.frames])
    shape = (chunk.height, chunk.width, 3)
    return np.stack([np.frombuffer(frame, np.uint8).reshape(shape) for frame in chunk.frames])


class Mp4Recorder:
    """Write VideoChunks, in index order, to `path` as MP4 (H.264 yuv420p at 25 fps, AAC mono).

    The file is opened at the first chunk, whose size fixes the video size (rounded up to even
    numbers, which yuv420p needs; frames of another size are scaled to it). A chunk whose index
    equals the last one added is a duplicate and is dropped; a lower one means the session was
    started anew (its chunks count from 0 again), and the new chunks follow the recorded ones.
    `close()` flushes the encoders and finalises the file; the recorder takes no chunk after it.
    Not thread-safe: one writer.
    """

    def __init__(self, path: str | Path, *, crf: int = 20, preset: str = "veryfast") -> None:
        self.path = Path(path)
        self.crf = crf
        self.preset = preset
        self._container: av.container.OutputContainer | None = None
        self._video: av.VideoStream | None = None
        self._audio: av.AudioStream | None = None
        self._last_index: int | None = None
        self._offset = 0  # recording chunk = chunk.index + offset
        self._next = 0  # next chunk slot of the recording
        self._last_frame: np.ndarray | None = None
        self._chunks = 0
        self._filled = 0
        self._size = (0, 0)
        self._closed = False

    @property
    def stats(self) -> RecordingStats:
        return RecordingStats(
            chunks=self._chunks,
            filled=self._filled,
            frames=self._next * tb.FRAMES_PER_CHUNK,
            width=self._size[0],
            height=self._size[1],
        )

    def add(self, chunk: VideoChunk) -> None:
        """Append one chunk; fill any chunks missing before it."""
        if self._closed:
            raise RuntimeError(f"recorder of {self.path} is closed")
        if self._container is None:
            self._open(chunk)
            self._offset = -chunk.index
        elif chunk.index == self._last_index:
            log.info("duplicate chunk dropped", index=chunk.index, path=str(self.path))
            return
        elif chunk.index < self._last_index:  # type: ignore[operator]
            log.warning(
                "chunk index went back (the session restarted); appending",
                index=chunk.index,
                last=self._last_index,
                path=str(self.path),
            )
            self._offset = self._next - chunk.index
        slot = chunk.index + self._offset
        if slot > self._next:
            missing = slot - self._next
            log.warning(
                "chunks missing; holding the last frame with silence",
                first=self._next - self._offset,
                count=missing,
                path=str(self.path),
            )
            for _ in range(missing):
                self._write(self._held_frames(), np.zeros(tb.SAMPLES_PER_CHUNK, "<i2"))
                self._filled += 1
        pcm = np.frombuffer(chunk.audio, "<i2")
        self._write(chunk_pixels(chunk), pcm)
        self._last_index = chunk.index
        self._chunks += 1

    def close(self) -> RecordingStats:
        """Flush both encoders and finalise the file. No chunk added: no file is written."""
        if self._closed:
            return self.stats
        self._closed = True
        if self._container is None:
            log.warning("nothing recorded; no file written", path=str(self.path))
            return self.stats
        for stream in (self._video, self._audio):
            for packet in stream.encode(None):  # type: ignore[union-attr]
                self._container.mux(packet)
        self._container.close()
        self._container = None
        stats = self.stats
        log.info(
            "recording written",
            path=str(self.path),
            chunks=stats.chunks,
            filled=stats.filled,
            seconds=stats.seconds,
        )
        return stats

    def __enter__(self) -> Mp4Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------

    def _open(self, chunk: VideoChunk) -> None:
        width, height = chunk.width + chunk.width % 2, chunk.height + chunk.height % 2
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # faststart moves the index to the front so that a browser can play the file as it loads.
        container = av.open(str(self.path), "w", format="mp4", options={"movflags": "faststart"})
        video = container.add_stream(
            VIDEO_CODEC, rate=tb.FPS, options={"crf": str(self.crf), "preset": self.preset}
        )
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.time_base = VIDEO_TIME_BASE
        audio = container.add_stream(AUDIO_CODEC, rate=tb.SAMPLE_RATE, layout="mono")
        audio.bit_rate = AUDIO_BITRATE
        self._container, self._video, self._audio = container, video, audio
        self._size = (width, height)

    def _held_frames(self) -> np.ndarray:
        width, height = self._size
        frame = (
            self._last_frame
            if self._last_frame is not None
            else np.zeros((height, width, 3), np.uint8)
        )
        return np.broadcast_to(frame, (tb.FRAMES_PER_CHUNK, *frame.shape))

    def _write(self, frames: np.ndarray, pcm: np.ndarray) -> None:
        """One chunk slot: 12 frames `[T, H, W, 3]` and 7,680 s16 samples at `self._next`."""
        assert self._container is not None and self._video is not None and self._audio is not None
        first_frame = self._next * tb.FRAMES_PER_CHUNK
        for i, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
            frame.pts, frame.time_base = first_frame + i, VIDEO_TIME_BASE
            for packet in self._video.encode(frame):  # scaled to the stream's size and yuv420p
                self._container.mux(packet)
        audio = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        audio.sample_rate = tb.SAMPLE_RATE
        audio.pts, audio.time_base = self._next * tb.SAMPLES_PER_CHUNK, AUDIO_TIME_BASE
        for packet in self._audio.encode(audio):  # re-cut into the AAC frame size
            self._container.mux(packet)
        self._last_frame = np.array(frames[-1])
        self._next += 1


async def record_session(
    bus: Bus,
    session: str,
    path: str | Path,
    *,
    stop: asyncio.Event,
    max_chunks: int | None = None,
    after: str = "$",
    progress: bool = True,
) -> RecordingStats:
    """Record `flowact:{session}:video` to `path` until `stop` is set or `max_chunks` arrived.

    `after="$"` records from the next chunk on; `"0"` from the oldest chunk the stream still
    holds. Encoding runs in one worker thread so that a renderer in the same event loop keeps
    its pace. An entry that is not a valid chunk is logged and skipped. Returns what was written;
    the file is finalised also when the task is cancelled.
    """
    stream = stream_name(session, "video")
    recorder = Mp4Recorder(path)
    loop = asyncio.get_running_loop()
    # One thread, so that close() never runs beside an add() that a cancellation left running.
    encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mp4-recorder")
    bar = tqdm(
        total=max_chunks,
        unit="chunk",
        desc=f"recording {session}",
        disable=not progress or max_chunks is None,
    )
    try:
        if after == "$":  # resolved once: "$" on every read would lose chunks between reads
            after = await bus.last_id(stream)
        while not stop.is_set() and (max_chunks is None or recorder.stats.chunks < max_chunks):
            for entry in await bus.read(stream, after, count=16, block_ms=200):
                after = entry.id
                try:
                    chunk = codec.decode(entry.fields, stream)
                except codec.MessageError as err:
                    log.warning(
                        "not a video chunk; skipped",
                        stream=stream,
                        id=entry.id,
                        field=err.field,
                        reason=err.reason,
                    )
                    continue
                assert isinstance(chunk, VideoChunk)
                await loop.run_in_executor(encoder, recorder.add, chunk)
                bar.update(1)
                if max_chunks is not None and recorder.stats.chunks >= max_chunks:
                    break
    finally:
        bar.close()
        stats = await asyncio.shield(loop.run_in_executor(encoder, recorder.close))
        encoder.shutdown(wait=False)
    return stats
