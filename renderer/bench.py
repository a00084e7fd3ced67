"""`flowact bench renderer`: throughput, time to first frame and ms per stage of one session.

The whole service path runs (bus, timeline, DiT, VAE, JPEG, publish) on an in-process bus,
unpaced, so the figures say how fast the renderer could go, not how fast it is asked to.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from flowact.bus.memory import MemoryBus
from flowact.bus.typed import publish
from flowact.renderer.engine import RendererParts
from flowact.renderer.model import count_parameters
from flowact.renderer.profiling import StageTimes
from flowact.renderer.service import RendererService
from flowact.schemas import timebase as tb
from flowact.schemas.messages import AudioSegment, SessionRequest, StopControl
from flowact.schemas.pcm import float_to_s16
from flowact.schemas.settings import BusSettings, RendererSettings
from flowact.schemas.streams import stream_name

STAGES = ("forward", "decode", "encode", "publish")
WARMUP_CHUNKS = 3


@dataclass
class RendererBenchReport:
    preset: str
    device: str
    parameters: int
    resolution: tuple[int, int]
    chunks: int
    first_chunk_s: float
    steady_fps: float
    stage_ms: dict[str, float] = field(default_factory=dict)

    @property
    def realtime_factor(self) -> float:
        return self.steady_fps / tb.FPS


def _speech(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    n = int(seconds * tb.SAMPLE_RATE)
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 3 * np.arange(n) / tb.SAMPLE_RATE))
    return (0.2 * envelope * rng.standard_normal(n)).astype(np.float32)


async def run_renderer_bench(
    preset: str, device: str = "cpu", chunks: int = 30, text_encoder: str = "auto"
) -> RendererBenchReport:
    parts = await asyncio.to_thread(
        RendererParts.build, preset, device=device, text_encoder=text_encoder
    )
    profiler = StageTimes(device)
    bus = MemoryBus()
    settings = RendererSettings(preset=preset, device=device, pace=0, worker="bench")
    service = RendererService(bus, settings, BusSettings(url="memory://"), parts, profiler)
    stop = asyncio.Event()
    worker = asyncio.create_task(service.run(stop))
    speech = _speech(chunks * tb.CHUNK_SECONDS)
    piece = tb.SAMPLES_PER_CHUNK // 2
    for seq, start in enumerate(range(0, len(speech), piece)):
        await publish(
            bus,
            "bench",
            AudioSegment(
                utterance="bench",
                seq=seq,
                pcm=float_to_s16(speech[start : start + piece]),
                start_sample=0 if seq == 0 else None,
                end=start + piece >= len(speech),
            ),
        )
    arrivals = await _time_chunks(bus, chunks)
    await publish(bus, "bench", StopControl())
    stop.set()
    await worker
    steady = arrivals[WARMUP_CHUNKS:]
    fps = (len(steady) - 1) * tb.FRAMES_PER_CHUNK / (steady[-1] - steady[0])
    return RendererBenchReport(
        preset=preset,
        device=device,
        parameters=count_parameters(parts.model),
        resolution=(parts.config.height, parts.config.width),
        chunks=chunks,
        first_chunk_s=arrivals[0],
        steady_fps=fps,
        stage_ms={s: profiler.median_ms(s) for s in STAGES},
    )


async def _time_chunks(bus: MemoryBus, chunks: int) -> list[float]:
    """Seconds from the session request to each chunk's arrival on the video stream."""
    stream, after, arrivals = stream_name("bench", "video"), "0", []
    started = time.perf_counter()
    await publish(bus, "bench", SessionRequest(session="bench"))
    with tqdm(total=chunks, desc="chunks", unit="chunk", leave=False) as bar:
        while len(arrivals) < chunks:
            for entry in await bus.read(stream, after, block_ms=1000):
                after = entry.id
                arrivals.append(time.perf_counter() - started)
                bar.update()
    return arrivals[:chunks]


def format_report(report: RendererBenchReport) -> str:
    h, w = report.resolution
    rows = [
        ("preset", f"{report.preset} ({report.parameters / 1e6:.2f}M DiT params, {h}x{w})"),
        ("device", report.device),
        ("chunks", str(report.chunks)),
        ("time to first frame", f"{report.first_chunk_s * 1000:.0f} ms"),
        ("steady fps", f"{report.steady_fps:.1f} ({report.realtime_factor:.2f}x real time)"),
    ]
    rows += [(f"{stage} (median)", f"{report.stage_ms[stage]:.1f} ms/chunk") for stage in STAGES]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
