"""`flowact bench renderer`: throughput, time to first frame and ms per stage through the service.

The whole service path runs (bus, timeline, DiT, VAE, JPEG, publish) on an in-process bus,
unpaced unless asked, so the figures say how fast the renderer could go, not how fast it is
asked to. A run is one `AccelConfig` (see `flowact.renderer.accel`):

- `run_renderer_bench`: one configuration, one or more concurrent sessions;
- `run_comparison`: on CUDA, the service as it runs today (fp32, eager), bf16 eager and the
  optimised path, with the preset's VAE and a smaller one, in one process on the same weights;
- `run_sessions_sweep`: more and more concurrent sessions of one preset (batched forwards)
  until they no longer hold 25 fps each;
- `flowact.renderer.microbench` measures each optimisation on its own, stage by stage.

Steady fps leaves out the first `WARMUP_CHUNKS` chunks of a session; the time to first frame
runs from the session request to its first VideoChunk on the bus. Compilation, graph capture
and cuDNN's algorithm search happen in a throwaway warm-up session before that clock starts,
as a worker does them before it takes sessions.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import structlog
import torch
from tqdm import tqdm

from flowact.bus.memory import MemoryBus
from flowact.bus.typed import publish
from flowact.renderer import vae as vae_mod
from flowact.renderer.accel import (
    ACCEL_PRESETS,
    BASELINE,
    OPTIMIZED,
    SESSIONS,
    AccelConfig,
    Accelerated,
    accelerate,
    capture_batches,
    warmup,
)
from flowact.renderer.engine import VAE_PRESET, RendererParts
from flowact.renderer.microbench import StageRow
from flowact.renderer.model import count_parameters
from flowact.renderer.profiling import StageTimes, peak_memory_gib
from flowact.renderer.service import RendererService
from flowact.schemas import timebase as tb
from flowact.schemas.messages import AudioSegment, SessionRequest, StopControl
from flowact.schemas.pcm import float_to_s16
from flowact.schemas.settings import BusSettings, RendererSettings
from flowact.schemas.streams import stream_name

log = structlog.get_logger(__name__)

STAGES = ("forward", "decode", "encode", "publish")
WARMUP_CHUNKS = 3
SESSION_STEPS = (1, 4, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 128)


@dataclass
class RendererBenchReport:
    preset: str
    device: str
    parameters: int
    resolution: tuple[int, int]
    chunks: int
    first_chunk_s: float  # the slowest session's time to first frame
    steady_fps: float  # per session, the slowest session's
    stage_ms: dict[str, float] = field(default_factory=dict)
    label: str = "service default"
    vae: str = ""
    sessions: int = 1
    session_fps: list[float] = field(default_factory=list)
    peak_gpu_gib: float = 0.0
    mean_batch: float | None = None
    warmup_s: float = 0.0
    pace: float = 0.0  # 0: unpaced (as fast as it goes); 1: real time

    @property
    def realtime_factor(self) -> float:
        return self.steady_fps / tb.FPS

    @property
    def holds_realtime(self) -> bool:
        """Every session renders at least 25 fps (paced: within 2% of it, as a paced session
        never runs ahead by more than its lead)."""
        return self.steady_fps >= tb.FPS * (0.98 if self.pace else 1.0)


def _speech(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    n = int(seconds * tb.SAMPLE_RATE)
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 3 * np.arange(n) / tb.SAMPLE_RATE))
    return (0.2 * envelope * rng.standard_normal(n)).astype(np.float32)


# ------------------------------------------------------------------------------------------ parts


def build_parts(
    preset: str, device: str, text_encoder: str = "auto", vae: str | None = None
) -> RendererParts:
    """Random-weight parts; `vae` names another VAE preset, made to the DiT's latent width."""
    parts = RendererParts.build(preset, device=device, text_encoder=text_encoder)
    if vae is not None and vae != VAE_PRESET[preset]:
        parts.vae = swap_vae(parts, vae)
    return parts


def swap_vae(parts: RendererParts, vae: str) -> vae_mod.CausalVideoVAE:
    config = replace(vae_mod.PRESETS[vae], latent_channels=parts.config.latent_channels)
    return vae_mod.build_vae(config).to(parts.device).eval()


def clone_parts(parts: RendererParts, vae: str | None = None) -> RendererParts:
    """Fresh copies of the DiT and VAE (the encoders are shared): one variant's casts, FP8
    layers and compilation never reach the next."""
    new_vae = swap_vae(parts, vae) if vae is not None else copy.deepcopy(parts.vae)
    return replace(
        parts,
        model=copy.deepcopy(parts.model),
        vae=new_vae,
        forward_factory=None,
        decode_stream=False,
    )


def _vae_name(parts: RendererParts, vae: str | None) -> str:
    name = vae or VAE_PRESET[parts.config.name]
    return f"{name} ({vae_mod.param_count(parts.vae) / 1e6:.1f}M)"


# ---------------------------------------------------------------------------------- one run


async def run_renderer_bench(
    preset: str,
    device: str = "cpu",
    chunks: int = 30,
    text_encoder: str = "auto",
    *,
    accel: AccelConfig | None = None,
    vae: str | None = None,
    sessions: int = 1,
    pace: float = 0.0,
    parts: RendererParts | None = None,
    label: str | None = None,
) -> RendererBenchReport:
    """Build (or take) parts, apply `accel`, warm up, and run `sessions` sessions of `chunks`."""
    if parts is None:
        parts = await asyncio.to_thread(build_parts, preset, device, text_encoder, vae)
    accelerated = accelerate(parts, accel) if accel is not None else None
    try:
        return await measure(
            parts,
            device,
            chunks,
            sessions=sessions,
            pace=pace,
            accelerated=accelerated,
            label=label or (accel.label() if accel else "service default"),
            vae=_vae_name(parts, vae),
        )
    finally:
        if accelerated is not None:
            accelerated.close()


async def measure(
    parts: RendererParts,
    device: str,
    chunks: int,
    *,
    sessions: int = 1,
    pace: float = 0.0,
    accelerated: Accelerated | None = None,
    label: str = "",
    vae: str = "",
    ready: Callable[[], None] | None = None,
) -> RendererBenchReport:
    """Warm `parts` up, then render `sessions` sessions of `chunks` chunks through the service.

    `ready`, when given, is called (in a thread) once the warm-up is done and the worker takes
    sessions, right before the first session request: several worker processes start their
    sessions together through it.
    """
    settings = RendererSettings(
        preset=parts.config.name,
        device=device,
        pace=pace,
        worker="bench",
        capacity=sessions,
        text_encoder="hash",
    )
    warm_s = await asyncio.to_thread(
        warmup, parts, settings.refine_every + 1, settings.refine_every
    )
    batcher = accelerated.batcher if accelerated is not None else None
    if accelerated is not None:
        await asyncio.to_thread(capture_batches, accelerated, parts, sessions)
    before = (batcher.stats.forwards, batcher.stats.calls) if batcher else (0, 0)
    profiler = StageTimes(device)
    arrivals = await _serve(parts, settings, profiler, sessions, chunks, ready)
    fps = [_steady_fps(a) for a in arrivals]
    mean_batch = None
    if batcher is not None:
        forwards = batcher.stats.forwards - before[0]
        mean_batch = (batcher.stats.calls - before[1]) / max(forwards, 1)
    return RendererBenchReport(
        preset=parts.config.name,
        device=device,
        parameters=count_parameters(parts.model),
        resolution=(parts.config.height, parts.config.width),
        chunks=chunks,
        first_chunk_s=max(a[0] for a in arrivals),
        steady_fps=min(fps),
        stage_ms={s: profiler.median_ms(s) for s in STAGES},
        label=label,
        vae=vae,
        sessions=sessions,
        session_fps=fps,
        peak_gpu_gib=peak_memory_gib(device),
        mean_batch=mean_batch,
        warmup_s=warm_s,
        pace=pace,
    )


def _steady_fps(arrivals: Sequence[float]) -> float:
    steady = arrivals[WARMUP_CHUNKS:] if len(arrivals) > WARMUP_CHUNKS + 1 else arrivals
    if len(steady) < 2:
        return float("nan")
    return (len(steady) - 1) * tb.FRAMES_PER_CHUNK / (steady[-1] - steady[0])


async def _serve(
    parts: RendererParts,
    settings: RendererSettings,
    profiler: StageTimes,
    sessions: int,
    chunks: int,
    ready: Callable[[], None] | None = None,
) -> list[list[float]]:
    """Per session, seconds from its request to each of its first `chunks` chunks; `ready` is
    called (in a thread) once the worker takes sessions, right before the first request."""
    bus = MemoryBus()
    service = RendererService(bus, settings, BusSettings(url="memory://"), parts, profiler)
    stop = asyncio.Event()
    worker = asyncio.create_task(service.run(stop))
    await _until_ready(service, worker)
    if ready is not None:
        await asyncio.to_thread(ready)
    peak_memory_gib(parts.device, reset=True)
    names = [f"bench-{i}" for i in range(sessions)]
    for name in names:
        await _feed_speech(bus, name, chunks)
    try:
        with tqdm(total=chunks * sessions, desc="chunks", unit="chunk", leave=False) as bar:
            timers = []
            for name in names:
                timers.append(asyncio.create_task(_time_chunks(bus, name, chunks, bar)))
                # one request at a time: a slot reads the sessions stream in batches, and a
                # request it holds waits behind the session it renders until reclaimed
                while name not in service.runners and not timers[-1].done():
                    await asyncio.sleep(0.001)
            arrivals = await asyncio.gather(*timers)
    finally:
        for name in names:
            await publish(bus, name, StopControl())
        stop.set()
        await worker
    return list(arrivals)


async def _until_ready(service: RendererService, worker: asyncio.Task) -> None:
    """Sessions are requested once the worker takes them, as a running worker would be."""
    ready = asyncio.create_task(service.ready.wait())
    await asyncio.wait({ready, worker}, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        ready.cancel()
        await worker  # it ended before it was ready: its error is the bench's


async def _feed_speech(bus: MemoryBus, session: str, chunks: int) -> None:
    speech = _speech(chunks * tb.CHUNK_SECONDS)
    piece = tb.SAMPLES_PER_CHUNK // 2
    for seq, start in enumerate(range(0, len(speech), piece)):
        segment = AudioSegment(
            utterance="bench",
            seq=seq,
            pcm=float_to_s16(speech[start : start + piece]),
            start_sample=0 if seq == 0 else None,
            end=start + piece >= len(speech),
        )
        await publish(bus, session, segment)


async def _time_chunks(bus: MemoryBus, session: str, chunks: int, bar: tqdm) -> list[float]:
    """Seconds from the session request to each chunk's arrival on the video stream."""
    stream, after, arrivals = stream_name(session, "video"), "0", []
    started = time.perf_counter()
    await publish(bus, session, SessionRequest(session=session))
    while len(arrivals) < chunks:
        for entry in await bus.read(stream, after, block_ms=1000):
            after = entry.id
            arrivals.append(time.perf_counter() - started)
            bar.update()
    return arrivals[:chunks]


# ---------------------------------------------------------------------------- the comparisons


@dataclass(frozen=True)
class Variant:
    label: str
    accel: AccelConfig
    vae: str | None = None  # None: the preset's own
    chunks: int | None = None  # None: the run's `chunks`


# the optimized path with the VAE as it ran before its compilation
EAGER_VAE = replace(OPTIMIZED, vae_channels_last=False, vae_compile=False)


def comparison_variants(baseline_chunks: int, small_vae: str = "small") -> list[Variant]:
    """The end-to-end rows on CUDA: today's service path, bf16 eager, optimised."""
    short = baseline_chunks
    one_stream = replace(OPTIMIZED, decode_stream=False)
    return [
        Variant("service today: fp32 eager", BASELINE, chunks=short),
        Variant("bf16 eager (split attention)", AccelConfig(attention="split"), chunks=short),
        Variant("optimized", OPTIMIZED),
        Variant("optimized, eager VAE", EAGER_VAE),
        Variant("optimized, nvJPEG", replace(OPTIMIZED, jpeg="nvjpeg"), chunks=short),
        Variant("optimized, decode on the forward's stream", one_stream, chunks=short),
        Variant(f"optimized, {small_vae} VAE", OPTIMIZED, vae=small_vae),
    ]


async def run_comparison(
    preset: str,
    device: str,
    chunks: int,
    variants: Sequence[Variant],
    text_encoder: str = "hash",
    base: RendererParts | None = None,
) -> list[RendererBenchReport]:
    """Every variant on copies of one set of random weights, one after the other."""
    if base is None:
        base = await asyncio.to_thread(build_parts, preset, device, text_encoder)
    reports = []
    for variant in variants:
        parts = clone_parts(base, variant.vae)
        reports.append(
            await run_renderer_bench(
                preset,
                device,
                variant.chunks or chunks,
                accel=variant.accel,
                vae=variant.vae,
                parts=parts,
                label=variant.label,
            )
        )
        log.info("bench row", **_row_fields(reports[-1]))
        del parts
        _free(device)
    return reports


def session_steps(max_sessions: int) -> list[int]:
    return sorted({n for n in SESSION_STEPS if n < max_sessions} | {max_sessions})


async def run_sessions_sweep(
    preset: str,
    device: str,
    max_sessions: int,
    chunks: int,
    accel: AccelConfig,
    text_encoder: str = "hash",
    steps: Sequence[int] | None = None,
    pace: float = 1.0,
    workers: int = 1,
) -> list[RendererBenchReport]:
    """Concurrent sessions at each step until a step no longer holds 25 fps per session.

    Paced (real time, the default) is the question asked: does every session get its chunks
    on time. Unpaced runs say how far the GPU could go, but sessions that start a moment apart
    then race unevenly. One set of parts serves every step, so graphs stay warm.

    `workers > 1` spreads each step's sessions over that many worker processes on the same
    device, as several renderer workers of one consumer group would share a GPU
    (`flowact.renderer.bench_workers`).
    """
    if workers > 1:
        from flowact.renderer.bench_workers import sweep_in_processes

        # the default steps start where every worker has a session
        steps = steps or [n for n in session_steps(max_sessions) if n >= workers]
        args = (preset, device, chunks, accel, text_encoder, pace, steps, workers)
        return await asyncio.to_thread(sweep_in_processes, *args)
    parts = await asyncio.to_thread(build_parts, preset, device, text_encoder)
    accelerated = accelerate(parts, accel)
    reports: list[RendererBenchReport] = []
    try:
        for n in steps or session_steps(max_sessions):
            report = await measure(
                parts,
                device,
                chunks,
                sessions=n,
                pace=pace,
                accelerated=accelerated,
                label=accel.label() + (" (paced)" if pace else " (unpaced)"),
            )
            report.vae = _vae_name(parts, None)
            reports.append(report)
            log.info("sessions step", **_row_fields(report))
            if not report.holds_realtime:
                break
    finally:
        accelerated.close()
    return reports


def max_realtime_sessions(reports: Sequence[RendererBenchReport]) -> int:
    """The most concurrent sessions that each held 25 fps (0 if none did)."""
    return max((r.sessions for r in reports if r.holds_realtime), default=0)


def run_micro(base: RendererParts, device: str, small_vae: str = "small") -> list[StageRow]:
    """Stage rows on `base`'s weights: DiT forward variants, VAE decode, overlap, JPEG."""
    from flowact.renderer import microbench

    cfg = base.config
    rows = microbench.forward_rows(base.model)
    vaes = list(dict.fromkeys([VAE_PRESET[cfg.name], small_vae]))
    latent_size = (cfg.latent_height, cfg.latent_width)
    rows += microbench.decode_rows(vaes, cfg.latent_channels, latent_size, device)
    if torch.device(device).type == "cuda":
        rows += _overlap_rows(base, device)
    encoders = ["pil", "pil-4"] + (["nvjpeg"] if torch.device(device).type == "cuda" else [])
    rows += microbench.jpeg_rows(cfg.height, cfg.width, encoders, device)
    return rows


def _overlap_rows(base: RendererParts, device: str) -> list[StageRow]:
    """bf16 graphed forward and bf16 decode of the preset's VAE, serial and on two streams."""
    from flowact.renderer import microbench
    from flowact.renderer.accel import prepare_forward

    parts = clone_parts(base)
    with torch.inference_mode():
        forward, _, _ = prepare_forward(
            parts.model, AccelConfig(attention="split", cuda_graphs=True)
        )
        tensors, n_context = microbench.buffer_inputs(parts.model)
        tensors = tuple(v.to(torch.bfloat16) if v.is_floating_point() else v for v in tensors)
        vae = parts.vae.to(torch.bfloat16)
        stream = vae.decode_stream()
        chunk = torch.randn_like(tensors[0][:, : tb.LATENTS_PER_CHUNK])
        stream.push(chunk[:, :1])
        rows = microbench.overlap_rows(
            lambda: forward(*tensors, n_context), lambda: stream.push(chunk), device
        )
    del parts
    _free(device)
    return rows


def _free(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


# -------------------------------------------------------------------------------- the command


async def bench_renderer(
    preset: str,
    device: str = "cpu",
    chunks: int = 30,
    text_encoder: str = "auto",
    *,
    sessions: int = 1,
    compare: bool | None = None,
    micro: bool | None = None,
    accel: str = "default",
    vae: str | None = None,
    baseline_chunks: int = 12,
    small_vae: str = "small",
    pace: float | None = None,
    workers: int = 1,
) -> str:
    """What `flowact bench renderer` prints.

    `sessions > 1`: the sessions sweep (batched forwards; `accel` default: `sessions` on CUDA;
    paced at real time unless `pace` says otherwise; over `workers` processes).
    Otherwise, on CUDA by default (`compare`): the end-to-end comparison table, then (`micro`)
    the stage rows. Otherwise one run with the `accel` preset.
    """
    cuda = torch.device(device).type == "cuda"
    compare = cuda if compare is None else compare
    micro = cuda if micro is None else micro
    sections = [environment(device)]
    if sessions > 1:
        config = ACCEL_PRESETS[accel] if accel != "default" else None
        if config is None:
            config = SESSIONS if cuda else AccelConfig(dtype="float32", batch_sessions=True)
        pace = 1.0 if pace is None else pace
        reports = await run_sessions_sweep(
            preset, device, sessions, chunks, config, text_encoder, pace=pace, workers=workers
        )
        best = max_realtime_sessions(reports)
        sections += [format_table(reports), f"{best} concurrent sessions hold {tb.FPS} fps each"]
    elif compare:
        base = await asyncio.to_thread(build_parts, preset, device, text_encoder)
        variants = comparison_variants(baseline_chunks, small_vae)
        sections.append(
            format_table(await run_comparison(preset, device, chunks, variants, base=base))
        )
        if micro:
            sections.append(
                format_stage_rows(await asyncio.to_thread(run_micro, base, device, small_vae))
            )
    else:
        config = ACCEL_PRESETS[accel]
        report = await run_renderer_bench(
            preset, device, chunks, text_encoder, accel=config, vae=vae, pace=pace or 0.0
        )
        sections.append(format_report(report))
    return "\n\n".join(sections)


def environment(device: str) -> str:
    """Device, PyTorch version and date: the line a figure needs next to it."""
    name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "CPU"
    return f"{name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"


# ------------------------------------------------------------------------------------- output


def _row_fields(report: RendererBenchReport) -> dict[str, object]:
    return {
        "label": report.label,
        "sessions": report.sessions,
        "fps": round(report.steady_fps, 2),
        "first_frame_ms": round(report.first_chunk_s * 1000),
        **{f"{k}_ms": round(v, 1) for k, v in report.stage_ms.items() if not math.isnan(v)},
    }


def format_report(report: RendererBenchReport) -> str:
    h, w = report.resolution
    rows = [
        ("preset", f"{report.preset} ({report.parameters / 1e6:.2f}M DiT params, {h}x{w})"),
        ("device", report.device),
        ("configuration", f"{report.label}; VAE {report.vae}"),
        ("sessions", str(report.sessions)),
        ("chunks", f"{report.chunks} a session ({report.chunks * tb.CHUNK_SECONDS:.1f} s video)"),
        ("time to first frame", f"{report.first_chunk_s * 1000:.0f} ms"),
        ("steady fps", f"{report.steady_fps:.1f} ({report.realtime_factor:.2f}x real time)"),
    ]
    rows += [(f"{stage} (median)", f"{report.stage_ms[stage]:.1f} ms/chunk") for stage in STAGES]
    if report.peak_gpu_gib:
        rows.append(("peak GPU memory", f"{report.peak_gpu_gib:.1f} GiB"))
    if report.mean_batch is not None:
        rows.append(("mean forward batch", f"{report.mean_batch:.1f}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def format_table(reports: Sequence[RendererBenchReport]) -> str:
    """One line per run: configuration, fps, first frame, ms per stage, memory."""
    header = (
        "| run | VAE | sessions | chunks | fps (min/session) | first frame ms | "
        "forward | decode | JPEG | publish | peak GiB |"
    )
    lines = [header, _rule(header)]
    for r in reports:
        stages = " | ".join(_ms(r.stage_ms.get(s, float("nan"))) for s in STAGES)
        lines.append(
            f"| {r.label} | {r.vae} | {r.sessions} | {r.chunks} | {r.steady_fps:.1f} | "
            f"{r.first_chunk_s * 1000:.0f} | {stages} | {r.peak_gpu_gib:.1f} |"
        )
    return "\n".join(lines)


def format_stage_rows(rows: Sequence[StageRow]) -> str:
    header = "| stage | variant | ms | rel. error vs bf16 | first call s | note |"
    lines = [header, _rule(header)]
    for r in rows:
        error = "" if r.error is None else f"{r.error:.2e}"
        setup = "" if r.setup_s is None else f"{r.setup_s:.1f}"
        lines.append(f"| {r.stage} | {r.variant} | {_ms(r.ms)} | {error} | {setup} | {r.note} |")
    return "\n".join(lines)


def _rule(header: str) -> str:
    return "|" + "---|" * (header.count("|") - 1)


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"
