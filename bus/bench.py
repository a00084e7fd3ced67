"""Bus benchmark: publish-to-handler latency by entry size, and concurrent video sessions.

Producers and consumers run in this one process (one event loop) against the bus at `url`, so
the figures include the client library's cost on both ends, as a single-process service sees it.
Latency is taken from a monotonic timestamp written into the entry at publish time to the moment
the handler runs (before the acknowledgement).

Video sessions: each session publishes one chunk entry (12 JPEG-sized frames in one msgpack
field, about 600 KB) every chunk period (0.48 s) to its own stream, trimmed by MAXLEN, and has its
own consumer. The session count ramps up until a step falls behind: producers miss their
schedule, p99 latency exceeds one chunk period, the backlog (published, not yet handled) grows
from the first half of the step to the second, an entry is trimmed away before it was handled, or
the backlog is not drained within one chunk period after the producers stop.

Run: `flowact bench bus`, or `python -m flowact.bus.bench [url] [seconds]`.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import random
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgpack
import structlog

from flowact.bus.base import Bus, ConsumerOptions, Entry
from flowact.bus.registry import open_bus
from flowact.schemas.timebase import (
    BYTES_PER_SAMPLE,
    CHUNK_SECONDS,
    FRAMES_PER_CHUNK,
    SAMPLE_RATE,
)

log = structlog.get_logger(__name__)

AUDIO_SECONDS = (0.02, 0.05, 0.1, 0.24, 0.5)  # 640 to 16,000 bytes of 16 kHz s16le
JPEG_FRAME_BYTES = 50_000  # a 480p JPEG frame; 12 of them make the ~600 KB chunk entry
VIDEO_MAXLEN = 8  # chunks kept per session stream: ~4 s of video
LATENCY_RATE_HZ = 400  # entries a second in the latency runs (about 8 sessions of 20 ms audio)
RAMP = (16, 32, 64, 96, 128, 160, 192, 256, 320, 384)
WARMUP = 20
MIN_STEP_CHUNKS = 8  # per session and ramp step, so that a growing backlog can show


@dataclass(frozen=True)
class LatencyResult:
    kind: str
    entry_bytes: str
    count: int
    rate_hz: float
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class VideoStep:
    sessions: int
    published: int
    handled: int
    lost: int  # trimmed before a consumer got to them
    p50_ms: float
    p99_ms: float
    slip_p99_ms: float  # how late producers published against their schedule
    backlog_max: int  # most entries published and not yet handled, over all sessions
    drain_ms: float  # from the last publish until the backlog was empty
    sustained: bool
    reason: str


@dataclass(frozen=True)
class BenchReport:
    url: str
    seconds: float
    machine: str
    server: str
    latency: list[LatencyResult] = field(default_factory=list)
    video: list[VideoStep] = field(default_factory=list)

    @property
    def max_video_sessions(self) -> int:
        """The largest session count of an unbroken run of sustained steps from the start."""
        best = 0
        for step in self.video:
            if not step.sustained:
                break
            best = step.sessions
        return best


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


async def run_bench(
    url: str,
    *,
    seconds: float = 3.0,
    ramp: Sequence[int] = RAMP,
    rate_hz: float = LATENCY_RATE_HZ,
    min_step_chunks: int = MIN_STEP_CHUNKS,
) -> BenchReport:
    """Measure the bus at `url`: `seconds` per latency run and per ramp step.

    A ramp step lasts at least `min_step_chunks` chunk periods, so that a growing backlog shows.
    """
    bus = open_bus(url)
    prefix = f"flowact:bench:{uuid.uuid4().hex[:8]}"
    try:
        report = BenchReport(url, seconds, _machine(), await _server(bus))
        audio = [_pcm_bytes(s) for s in AUDIO_SECONDS]
        report.latency.append(
            await _latency_run(bus, f"{prefix}:audio", "audio", audio, seconds, rate_hz)
        )
        control = [_control_fields()]
        report.latency.append(
            await _latency_run(bus, f"{prefix}:control", "control", control, seconds, rate_hz)
        )
        chunk = _video_chunk()
        for sessions in ramp:
            chunks = max(min_step_chunks, round(seconds / CHUNK_SECONDS))
            step = await _video_step(bus, f"{prefix}:video", sessions, chunk, chunks)
            report.video.append(step)
            log.info("bus.bench.video_step", **step.__dict__)
            if not step.sustained:
                break
        return report
    finally:
        await bus.close()


def _pcm_bytes(seconds: float) -> int:
    return round(seconds * SAMPLE_RATE) * BYTES_PER_SAMPLE


def _control_fields() -> dict[str, bytes]:
    return {
        "type": b"behavior",
        "text": b"waves with the right hand",
        "duration": b"2",
        "channel": b"gesture",
        "schema_version": b"1",
    }


def _video_chunk() -> bytes:
    # Random bytes stand in for JPEG data: incompressible, as JPEG is.
    frames = [os.urandom(JPEG_FRAME_BYTES) for _ in range(FRAMES_PER_CHUNK)]
    return msgpack.packb({"codec": "jpeg", "frames": frames})


class _Latencies:
    """Publish timestamps travel in the entry; the handler records the difference."""

    def __init__(self) -> None:
        self.ms: list[float] = []
        self.handled = 0

    async def handler(self, entry: Entry) -> None:
        sent = int(entry.fields["t"])
        self.ms.append((time.perf_counter_ns() - sent) / 1e6)
        self.handled += 1


async def _latency_run(
    bus: Bus,
    stream: str,
    kind: str,
    payloads: Sequence[int | dict[str, bytes]],
    seconds: float,
    rate_hz: float,
) -> LatencyResult:
    """Publish at `rate_hz` for `seconds` to one consumer; cycle through `payloads`."""
    bodies = [{"seq": b"0", "pcm": os.urandom(p)} if isinstance(p, int) else p for p in payloads]
    sizes = [sum(len(v) for v in b.values()) for b in bodies]
    stats = _Latencies()
    stop = asyncio.Event()
    options = ConsumerOptions(group="bench", consumer="c1")
    consumer = asyncio.create_task(bus.consume([stream], options, stats.handler, stop=stop))
    try:
        total = WARMUP + int(seconds * rate_hz)
        start = time.perf_counter()
        for i in range(total):
            if i == WARMUP:
                await _until(lambda: stats.handled >= WARMUP, 5.0)
                stats.ms.clear()
                start = time.perf_counter() - i / rate_hz
            await _sleep_until(start + i / rate_hz)
            body = bodies[i % len(bodies)]
            await bus.publish(stream, {**body, "t": time.perf_counter_ns()})
        await _until(lambda: stats.handled >= total, 10.0)
    finally:
        stop.set()
        await consumer
        await bus.delete([stream])
    span = f"{min(sizes):,}" if min(sizes) == max(sizes) else f"{min(sizes):,}-{max(sizes):,}"
    result = LatencyResult(
        kind=kind,
        entry_bytes=span,
        count=len(stats.ms),
        rate_hz=rate_hz,
        p50_ms=percentile(stats.ms, 50),
        p99_ms=percentile(stats.ms, 99),
        max_ms=max(stats.ms, default=0.0),
    )
    log.info("bus.bench.latency", **result.__dict__)
    return result


async def _video_step(bus: Bus, prefix: str, sessions: int, chunk: bytes, chunks: int) -> VideoStep:
    """`sessions` producer/consumer pairs, each publishing `chunks` entries at the video rate."""
    run = _VideoRun(bus, [f"{prefix}:{sessions}:{i}" for i in range(sessions)], chunk)
    await run.run(chunks)
    return run.verdict()


class _VideoRun:
    def __init__(self, bus: Bus, streams: list[str], chunk: bytes) -> None:
        self.bus = bus
        self.streams = streams
        self.chunk = chunk
        self.stats = _Latencies()
        self.slips: list[float] = []  # ms each publish started after its due time
        self.backlog: list[int] = []  # published minus handled, sampled while producing
        self.published = 0
        self.drain_ms = 0.0

    async def run(self, chunks: int) -> None:
        stop = asyncio.Event()
        options = ConsumerOptions(group="bench", consumer="c1")
        consumers = [
            asyncio.create_task(self.bus.consume([s], options, self.stats.handler, stop=stop))
            for s in self.streams
        ]
        await asyncio.sleep(0.2)  # groups created, consumers blocked in their first read
        sampler = asyncio.create_task(self._sample_backlog())
        try:
            await asyncio.gather(*(self._produce(s, chunks) for s in self.streams))
            sampler.cancel()
            last_publish = time.perf_counter()
            # Entries still missing after the grace period were trimmed away unread.
            await _until(lambda: self.stats.handled >= self.published, CHUNK_SECONDS + 2.0)
            self.drain_ms = (time.perf_counter() - last_publish) * 1000
        finally:
            sampler.cancel()
            stop.set()
            await asyncio.gather(*consumers)
            await self.bus.delete(self.streams)

    async def _produce(self, stream: str, chunks: int) -> None:
        start = time.perf_counter() + random.uniform(0, CHUNK_SECONDS)  # sessions out of phase
        for k in range(chunks):
            due = start + k * CHUNK_SECONDS
            await _sleep_until(due)
            self.slips.append((time.perf_counter() - due) * 1000)
            fields = {"index": k, "chunk": self.chunk, "t": time.perf_counter_ns()}
            await self.bus.publish(stream, fields, maxlen=VIDEO_MAXLEN)
            self.published += 1

    async def _sample_backlog(self) -> None:
        while True:
            await asyncio.sleep(CHUNK_SECONDS / 8)
            self.backlog.append(self.published - self.stats.handled)

    def verdict(self) -> VideoStep:
        period_ms = CHUNK_SECONDS * 1000
        p99 = percentile(self.stats.ms, 99)
        slip = percentile(self.slips, 99)
        lost = self.published - self.stats.handled
        half = len(self.backlog) // 2
        early = sum(self.backlog[:half]) / max(1, half)
        late = sum(self.backlog[half:]) / max(1, len(self.backlog) - half)
        reasons = [
            f"producers late by {slip:.0f} ms (p99)" if slip > period_ms else "",
            f"p99 latency {p99:.0f} ms over one chunk period" if p99 > period_ms else "",
            f"backlog growing ({early:.1f} -> {late:.1f})" if late > 1.5 * early + 2 else "",
            f"{lost} entries trimmed unread" if lost else "",
            "backlog not drained within one chunk period" if self.drain_ms > period_ms else "",
        ]
        reason = "; ".join(r for r in reasons if r)
        return VideoStep(
            sessions=len(self.streams),
            published=self.published,
            handled=self.stats.handled,
            lost=lost,
            p50_ms=percentile(self.stats.ms, 50),
            p99_ms=p99,
            slip_p99_ms=slip,
            backlog_max=max(self.backlog, default=0),
            drain_ms=self.drain_ms,
            sustained=not reason,
            reason=reason or "ok",
        )


async def _sleep_until(when: float) -> None:
    delay = when - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


async def _until(check, timeout: float) -> bool:  # noqa: ANN001
    deadline = time.perf_counter() + timeout
    while not check():
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(0.002)
    return True


def _machine() -> str:
    return f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}"


async def _server(bus: Bus) -> str:
    redis = getattr(bus, "redis", None)
    if redis is None:
        return type(bus).__name__
    info = await redis.info("server")
    return f"redis {info.get('redis_version', '?')}"


def format_report(report: BenchReport) -> str:
    """The report as a plain-text table."""
    lines = [
        f"bus benchmark: {report.url} ({report.server}); {report.machine}",
        f"{report.seconds:g} s per measurement; one process produces and consumes",
        "",
        f"{'entries':<10}{'field bytes':>16}{'rate/s':>9}{'count':>8}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'max ms':>9}",
    ]
    for r in report.latency:
        lines.append(
            f"{r.kind:<10}{r.entry_bytes:>16}{r.rate_hz:>9.0f}{r.count:>8}"
            f"{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.max_ms:>9.2f}"
        )
    lines += [
        "",
        f"video sessions: one ~{JPEG_FRAME_BYTES * FRAMES_PER_CHUNK / 1e6:.1f} MB entry per "
        f"{CHUNK_SECONDS:g} s each, MAXLEN ~{VIDEO_MAXLEN}",
        f"{'sessions':>8}{'MB/s':>8}{'entries':>9}{'p50 ms':>9}{'p99 ms':>9}{'slip p99':>10}"
        f"{'backlog':>9}{'drain ms':>10}  result",
    ]
    chunk_mb = JPEG_FRAME_BYTES * FRAMES_PER_CHUNK / 1e6
    for s in report.video:
        lines.append(
            f"{s.sessions:>8}{s.sessions * chunk_mb / CHUNK_SECONDS:>8.0f}{s.published:>9}"
            f"{s.p50_ms:>9.1f}{s.p99_ms:>9.1f}{s.slip_p99_ms:>10.1f}{s.backlog_max:>9}"
            f"{s.drain_ms:>10.1f}  "
            f"{s.reason}"
        )
    lines += ["", f"sustained video sessions: {report.max_video_sessions}"]
    return "\n".join(lines)


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"
    run_seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    sys.stdout.write(format_report(asyncio.run(run_bench(target, seconds=run_seconds))) + "\n")
