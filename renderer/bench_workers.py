"""The sessions sweep over several worker processes that share one device.

One renderer process steps every session from Python threads that contend for one GIL; a
deployment instead runs several renderer workers per GPU in one consumer group, each taking
its share of the sessions. `sweep_in_processes` measures that: `workers` spawned processes,
each with its own weights, accelerated path and in-process bus, render their share of every
step's sessions at the same moment (a barrier after each one's warm-up), and the step's
figures are those of all sessions together (`merge_reports`).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, replace

import structlog

from flowact.renderer.accel import AccelConfig, accelerate
from flowact.renderer.bench import RendererBenchReport, _vae_name, build_parts, measure

log = structlog.get_logger(__name__)

BARRIER_TIMEOUT_S = 900.0  # a worker that never gets to a step's start fails the step


def share(sessions: int, workers: int, index: int) -> int:
    """Worker `index`'s part of `sessions`: as even as it goes, the first workers take the rest."""
    return sessions // workers + (index < sessions % workers)


def merge_reports(reports: Sequence[RendererBenchReport], workers: int) -> RendererBenchReport:
    """One step's figures over every worker's sessions: the slowest session's fps and first
    frame, the median of the workers' stage medians, the peaks added (one device holds all)."""
    if not reports:
        raise ValueError("no worker reported")
    first = reports[0]
    fps = [f for r in reports for f in r.session_fps]
    batches = [r.mean_batch for r in reports if r.mean_batch is not None]
    stages = {s: sorted(r.stage_ms[s] for r in reports)[len(reports) // 2] for s in first.stage_ms}
    return replace(
        first,
        label=f"{first.label} x{workers} processes",
        sessions=sum(r.sessions for r in reports),
        session_fps=fps,
        steady_fps=min(fps),
        first_chunk_s=max(r.first_chunk_s for r in reports),
        stage_ms=stages,
        peak_gpu_gib=sum(r.peak_gpu_gib for r in reports),
        mean_batch=sum(batches) / len(batches) if batches else None,
        warmup_s=max(r.warmup_s for r in reports),
    )


@dataclass(frozen=True)
class SweepJob:
    """What every worker process runs: the steps of one sweep, its share of each."""

    preset: str
    device: str
    chunks: int
    accel: AccelConfig
    text_encoder: str
    pace: float
    steps: tuple[int, ...]
    workers: int


def sweep_in_processes(
    preset: str,
    device: str,
    chunks: int,
    accel: AccelConfig,
    text_encoder: str,
    pace: float,
    steps: Sequence[int],
    workers: int,
) -> list[RendererBenchReport]:
    """Each step's sessions spread over `workers` processes, until a step misses 25 fps."""
    if workers < 2:
        raise ValueError(f"workers must be at least 2, got {workers}")
    if min(steps) < workers:
        raise ValueError(f"each step needs a session for each of {workers} workers: {list(steps)}")
    job = SweepJob(preset, device, chunks, accel, text_encoder, pace, tuple(steps), workers)
    ctx = mp.get_context("spawn")  # CUDA cannot be used in a forked child
    barrier, results, stop = ctx.Barrier(workers), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=_worker, args=(i, job, barrier, results, stop), daemon=True)
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    reports: list[RendererBenchReport] = []
    try:
        for n in job.steps:
            report = merge_reports([_next_report(results, procs) for _ in procs], workers)
            reports.append(report)
            log.info("sessions step", workers=workers, sessions=n, fps=round(report.steady_fps, 2))
            if not report.holds_realtime:
                break
    finally:
        stop.set()
        barrier.abort()  # releases workers already waiting for a step that will not run
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
    return reports


def _next_report(results, procs) -> RendererBenchReport:  # noqa: ANN001 (multiprocessing)
    """The next worker report; a worker's failure raises here, with its traceback."""
    while True:
        try:
            kind, payload = results.get(timeout=5.0)
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (0, None)]
            if dead:
                raise RuntimeError(f"a bench worker died (exit code {dead[0]})") from None
            continue
        if kind == "error":
            raise RuntimeError(f"a bench worker failed: {payload}")
        if kind == "report":
            return payload
        # "released": a worker let go because another one failed; that one's error follows


def _worker(index: int, job: SweepJob, barrier, results, stop) -> None:  # noqa: ANN001
    try:
        asyncio.run(_worker_steps(index, job, barrier, results, stop))
    except threading.BrokenBarrierError:
        if not stop.is_set():
            results.put(("released", index))
    except BaseException as err:  # noqa: BLE001 (sent to the parent, which raises it)
        summary = f"worker {index}: {type(err).__name__}: {err}"
        results.put(("error", f"{summary}\n{traceback.format_exc()}"))
        barrier.abort()


async def _worker_steps(index: int, job: SweepJob, barrier, results, stop) -> None:  # noqa: ANN001
    parts = await asyncio.to_thread(build_parts, job.preset, job.device, job.text_encoder)
    accelerated = accelerate(parts, job.accel)
    label = job.accel.label() + (" (paced)" if job.pace else " (unpaced)")
    try:
        for n in job.steps:
            if stop.is_set():
                return
            report = await measure(
                parts,
                job.device,
                job.chunks,
                sessions=share(n, job.workers, index),
                pace=job.pace,
                accelerated=accelerated,
                label=label,
                ready=lambda: barrier.wait(BARRIER_TIMEOUT_S),
            )
            report.vae = _vae_name(parts, None)
            results.put(("report", report))
    finally:
        accelerated.close()
