"""Batched forwards across sessions: the scheduling rule, the batcher's thread, and sessions that
render the same frames batched as alone (tiny preset, CPU)."""

from __future__ import annotations

import gc
import multiprocessing
import threading

import numpy as np
import pytest
import torch

from flowact.renderer.accel import AccelConfig, accelerate, silent_plan
from flowact.renderer.batching import ForwardBatcher, ForwardCall, ready_batch, stack_calls
from flowact.renderer.bench import (
    RendererBenchReport,
    build_parts,
    max_realtime_sessions,
    run_sessions_sweep,
)
from flowact.renderer.bench_workers import merge_reports, share
from flowact.renderer.engine import RendererParts, SessionRenderer
from flowact.renderer.microbench import buffer_inputs
from flowact.renderer.model import FlowActMMDiT
from flowact.renderer.presets import PRESETS
from flowact.renderer.timeline import ChunkPlan
from flowact.schemas import timebase as tb


def _call(frames: int = 4, arrived: float = 0.0, n_context: int = 2) -> ForwardCall:
    x = torch.zeros(1, frames, 2)
    return ForwardCall((x, torch.zeros(1, frames)), n_context, None, arrived)


def test_rule_runs_at_once_when_every_live_client_waits() -> None:
    waiting = [_call(arrived=0.0), _call(arrived=0.001)]
    batch, wait = ready_batch(waiting, live_clients=2, now=0.002, max_batch=8, max_wait_s=1.0)
    assert batch == waiting and wait is None


def test_rule_waits_for_missing_clients_until_max_wait() -> None:
    waiting = [_call(arrived=10.0), _call(arrived=10.01)]
    batch, wait = ready_batch(waiting, live_clients=3, now=10.02, max_batch=8, max_wait_s=0.05)
    assert batch == [] and wait == pytest.approx(0.03)
    batch, wait = ready_batch(waiting, live_clients=3, now=10.05, max_batch=8, max_wait_s=0.05)
    assert batch == waiting


def test_rule_caps_the_batch_and_keeps_arrival_order() -> None:
    waiting = [_call(arrived=i) for i in range(5)]
    batch, _ = ready_batch(waiting, live_clients=9, now=0.0, max_batch=3, max_wait_s=1.0)
    assert batch == waiting[:3]


def test_rule_batches_only_calls_of_the_oldest_calls_kind() -> None:
    buffer, refine, buffer2 = _call(14, 0.0), _call(6, 0.1, n_context=5), _call(14, 0.2)
    batch, _ = ready_batch([buffer, refine, buffer2], 3, now=0.3, max_batch=8, max_wait_s=1.0)
    assert batch == [buffer, buffer2]
    batch, _ = ready_batch([refine], 3, now=2.0, max_batch=8, max_wait_s=1.0)
    assert batch == [refine]


def test_stack_calls_concatenates_inputs_and_guidance() -> None:
    a = ForwardCall((torch.ones(1, 3), torch.zeros(1, 2)), 1, torch.tensor([2.0]), 0.0)
    b = ForwardCall((2 * torch.ones(2, 3), torch.ones(2, 2)), 1, torch.tensor([3.0, 4.0]), 0.0)
    (x, t), guidance = stack_calls([a, b])
    assert x.shape == (3, 3) and x[1:].eq(2).all() and t.shape == (3, 2)
    assert guidance.tolist() == [2.0, 3.0, 4.0]


# -- the batcher's thread, on the tiny model


@pytest.fixture(scope="module")
def model() -> FlowActMMDiT:
    torch.manual_seed(0)
    return FlowActMMDiT(PRESETS["tiny"]).eval()


class Recording:
    """The model, recording the batch size of every forward it runs."""

    def __init__(self, model: FlowActMMDiT, fail: bool = False) -> None:
        self.model, self.fail, self.sizes = model, fail, []

    def __call__(self, x, *args, **kwargs):
        self.sizes.append(x.shape[0])
        if self.fail:
            raise RuntimeError("forward broke")
        return self.model(x, *args, **kwargs)


def _inputs(model: FlowActMMDiT, seed: int):
    tensors, n_context = buffer_inputs(model, seed)
    return tensors, n_context


def _in_threads(fns) -> list:
    results: list = [None] * len(fns)

    def run(i: int) -> None:
        try:
            results[i] = fns[i]()
        except BaseException as err:  # noqa: BLE001 - handed back to the test
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "a client never got its result"
    return results


def test_concurrent_clients_share_one_forward_with_their_own_results(model) -> None:
    recording = Recording(model)
    batcher = ForwardBatcher(recording, max_batch=8, max_wait_s=30.0)
    clients = [batcher.client() for _ in range(3)]
    inputs = [_inputs(model, seed) for seed in range(3)]
    with torch.inference_mode():
        alone = [model(*t, n) for t, n in inputs]
        out = _in_threads(
            [lambda c=c, i=i: c(*i[0], i[1]) for c, i in zip(clients, inputs, strict=True)]
        )
    batcher.close()
    assert recording.sizes == [3]  # all three live clients waited: one forward, no timeout
    for got, want in zip(out, alone, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert batcher.stats.mean_batch == 3


def test_a_silent_client_costs_at_most_max_wait(model) -> None:
    recording = Recording(model)
    batcher = ForwardBatcher(recording, max_wait_s=0.05)
    active, _idle = batcher.client(), batcher.client()
    tensors, n = _inputs(model, 0)
    with torch.inference_mode():
        [out] = _in_threads([lambda: active(*tensors, n)])
    batcher.close()
    assert recording.sizes == [1] and out.shape == tensors[0].shape


def test_a_collected_client_no_longer_holds_the_batch_back(model) -> None:
    recording = Recording(model)
    batcher = ForwardBatcher(recording, max_wait_s=600.0)  # only the rule can release the call
    active, gone = batcher.client(), batcher.client()
    del gone
    gc.collect()
    assert batcher.live_clients == 1
    tensors, n = _inputs(model, 0)
    with torch.inference_mode():
        _in_threads([lambda: active(*tensors, n)])
    batcher.close()
    assert recording.sizes == [1]


def test_a_failed_forward_reaches_every_caller_and_the_batcher_goes_on(model) -> None:
    recording = Recording(model, fail=True)
    batcher = ForwardBatcher(recording, max_wait_s=30.0)
    clients = [batcher.client() for _ in range(2)]
    tensors, n = _inputs(model, 0)
    with torch.inference_mode():
        errors = _in_threads([lambda c=c: c(*tensors, n) for c in clients])
        assert all(isinstance(e, RuntimeError) and "forward broke" in str(e) for e in errors)
        recording.fail = False
        out = _in_threads([lambda c=c: c(*tensors, n) for c in clients])
    batcher.close()
    assert all(isinstance(o, torch.Tensor) for o in out) and recording.sizes == [2, 2]


def test_calls_after_close_fail(model) -> None:
    batcher = ForwardBatcher(model)
    client = batcher.client()
    batcher.close()
    tensors, n = _inputs(model, 0)
    with pytest.raises(RuntimeError, match="closed"):
        client(*tensors, n)


# -- whole sessions


def _plans(seed: int, first: int, count: int) -> list[ChunkPlan]:
    rng = np.random.default_rng(seed)
    return [
        ChunkPlan(i, (0.1 * rng.standard_normal(tb.SAMPLES_PER_CHUNK)).astype(np.float32), {}, True)
        for i in range(first, first + count)
    ]


def _render(parts: RendererParts, seed: int, chunks: int) -> torch.Tensor:
    session = SessionRenderer(parts, seed=seed, refine_every=2)  # refinement forwards batch too
    plans = _plans(seed, 0, chunks + session.lookahead)
    session.start(None, plans[: session.lookahead])
    out = [session.step(plans[k + session.lookahead]) for k in range(chunks)]
    return torch.cat(out, dim=1)


def test_batched_sessions_render_what_each_renders_alone() -> None:
    chunks, seeds = 4, (1, 2, 3)
    alone_parts = build_parts("tiny", "cpu", "hash")
    alone = [_render(alone_parts, seed, chunks) for seed in seeds]

    parts = build_parts("tiny", "cpu", "hash")
    parts.model.load_state_dict(alone_parts.model.state_dict())
    accelerated = accelerate(parts, AccelConfig(dtype="float32", batch_sessions=True))
    batched = _in_threads([lambda s=s: _render(parts, s, chunks) for s in seeds])
    stats = accelerated.batcher.stats
    accelerated.close()
    for got, want in zip(batched, alone, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert stats.calls == len(seeds) * (chunks + chunks // 2)  # buffer + refinement forwards
    assert stats.mean_batch > 1  # sessions really shared forwards


def test_warmup_session_leaves_the_batcher() -> None:
    parts = build_parts("tiny", "cpu", "hash")
    accelerated = accelerate(parts, AccelConfig(dtype="float32", batch_sessions=True))
    from flowact.renderer.accel import warmup

    warmup(parts, chunks=2)
    gc.collect()
    assert accelerated.batcher.live_clients == 0
    accelerated.close()
    assert silent_plan(3).index == 3


async def test_sessions_sweep_reports_every_session() -> None:
    config = AccelConfig(dtype="float32", batch_sessions=True, max_wait_ms=50)
    reports = await run_sessions_sweep("tiny", "cpu", 2, 6, config, steps=[2], pace=0.0)
    [report] = reports
    assert report.pace == 0.0 and "(unpaced)" in report.label
    assert report.sessions == 2 and len(report.session_fps) == 2
    assert report.steady_fps == min(report.session_fps) > 0
    assert report.mean_batch is not None and report.mean_batch >= 1
    assert max_realtime_sessions(reports) in (0, 2)


def test_sessions_split_evenly_over_workers() -> None:
    assert [share(5, 2, i) for i in range(2)] == [3, 2]
    assert [share(8, 3, i) for i in range(3)] == [3, 3, 2]
    assert sum(share(33, 4, i) for i in range(4)) == 33


def test_worker_reports_merge_into_one_step() -> None:
    def worker(fps: list[float], first: float, forward: float) -> RendererBenchReport:
        return RendererBenchReport(
            "tiny", "cpu", 1, (32, 32), 6, first, min(fps), {"forward": forward},
            label="fp32", sessions=len(fps), session_fps=fps, peak_gpu_gib=1.5, mean_batch=2.0,
        )  # fmt: skip

    merged = merge_reports(
        [worker([30.0, 26.0], 0.2, 5.0), worker([40.0], 0.5, 7.0), worker([28.0], 0.1, 9.0)], 3
    )
    assert merged.sessions == 4 and merged.session_fps == [30.0, 26.0, 40.0, 28.0]
    assert merged.steady_fps == 26.0 and merged.first_chunk_s == 0.5
    assert merged.stage_ms == {"forward": 7.0}  # the median worker's
    assert merged.peak_gpu_gib == 4.5 and merged.label == "fp32 x3 processes"
    assert merged.holds_realtime
    with pytest.raises(ValueError, match="no worker reported"):
        merge_reports([], 2)


async def test_sessions_sweep_over_worker_processes() -> None:
    config = AccelConfig(dtype="float32", batch_sessions=True, max_wait_ms=50)
    reports = await run_sessions_sweep("tiny", "cpu", 2, 6, config, steps=[2], pace=0.0, workers=2)
    [report] = reports
    assert report.sessions == 2 and len(report.session_fps) == 2
    assert report.steady_fps == min(report.session_fps) > 0
    assert "x2 processes" in report.label and "(unpaced)" in report.label


async def test_a_failing_worker_names_its_error() -> None:
    config = AccelConfig(dtype="float32")
    with pytest.raises(
        RuntimeError, match="a bench worker failed: worker [01]: KeyError: .*'no-such-preset'"
    ):
        await run_sessions_sweep("no-such-preset", "cpu", 2, 6, config, steps=[2], workers=2)
    with pytest.raises(ValueError, match="each step needs a session for each of 2 workers"):
        await run_sessions_sweep("tiny", "cpu", 2, 6, config, steps=[1], workers=2)


async def test_the_sweep_stops_its_workers_at_the_first_missed_step(monkeypatch) -> None:
    # in this (the parent) process every step misses; the spawned workers go on to the next
    # step and wait for it, and must be let go
    monkeypatch.setattr(RendererBenchReport, "holds_realtime", property(lambda self: False))
    config = AccelConfig(dtype="float32", batch_sessions=True)
    reports = await run_sessions_sweep(
        "tiny", "cpu", 4, 6, config, steps=[2, 4], pace=0.0, workers=2
    )
    assert [r.sessions for r in reports] == [2]
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]
