"""The benchmark's bookkeeping on the in-process bus (figures come from `flowact bench bus`)."""

from __future__ import annotations

from flowact.bus.bench import BenchReport, VideoStep, format_report, percentile, run_bench
from flowact.bus.registry import forget_memory_bus


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 99) == 0.0


def test_max_sessions_stops_at_the_first_step_that_fell_behind() -> None:
    def step(n: int, ok: bool) -> VideoStep:
        return VideoStep(n, 1, 1, 0, 1.0, 1.0, 0.0, 0, 0.0, ok, "ok" if ok else "late")

    report = BenchReport("memory://", 1.0, "m", "s", video=[step(16, True), step(32, False)])
    assert report.max_video_sessions == 16
    report.video.append(step(64, True))  # a later pass does not count after a failure
    assert report.max_video_sessions == 16


async def test_run_bench_counts_every_entry_on_the_memory_bus() -> None:
    try:
        report = await run_bench(
            "memory://bench-smoke", seconds=0.25, ramp=(2,), rate_hz=200, min_step_chunks=2
        )
    finally:
        forget_memory_bus("bench-smoke")
    assert [r.kind for r in report.latency] == ["audio", "control"]
    assert [r.count for r in report.latency] == [50, 50]
    assert report.latency[0].entry_bytes == "641-16,001"  # 20 ms to 0.5 s of 16 kHz s16le
    assert [s.sessions for s in report.video] == [2]
    first = report.video[0]
    assert (first.published, first.handled, first.lost) == (4, 4, 0)  # 2 sessions x 2 chunks
    table = format_report(report)
    assert "audio" in table and "control" in table
    assert f"sustained video sessions: {report.max_video_sessions}" in table
