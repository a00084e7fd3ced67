"""Acceleration switches on CPU (dtype, FP8, decode stream off CPU, JPEG threads, the bench's
bookkeeping on `tiny`) and, where a CUDA device exists, CUDA graphs and compilation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from flowact.renderer.accel import (
    ACCEL_PRESETS,
    AccelConfig,
    CudaGraphForward,
    accelerate,
    compile_blocks,
    silent_plan,
)
from flowact.renderer.bench import (
    bench_renderer,
    build_parts,
    format_stage_rows,
    format_table,
    run_renderer_bench,
)
from flowact.renderer.engine import SessionRenderer
from flowact.renderer.fp8 import (
    FP8_MAX,
    FP8_TARGETS,
    Float8Linear,
    convert_to_fp8,
    fp8_supported,
    quantize_rows,
    relative_error,
)
from flowact.renderer.jpeg import PilJpegEncoder, build_jpeg_encoder
from flowact.renderer.media import decode_jpeg
from flowact.renderer.microbench import (
    REFERENCE,
    buffer_inputs,
    decode_rows,
    forward_rows,
    jpeg_rows,
    synthetic_frames,
)
from flowact.renderer.model import FlowActMMDiT
from flowact.renderer.presets import PRESETS
from flowact.renderer.profiling import StageTimes, time_ms

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_cpu_fp8 = pytest.mark.skipif(
    not fp8_supported("cpu"), reason="this torch has no CPU scaled FP8 matmul"
)


@pytest.fixture(scope="module")
def tiny() -> FlowActMMDiT:
    torch.manual_seed(0)
    return FlowActMMDiT(PRESETS["tiny"]).eval()


def test_config_validates_and_labels() -> None:
    with pytest.raises(ValueError, match="dtype"):
        AccelConfig(dtype="float16")
    with pytest.raises(ValueError, match="max_batch"):
        AccelConfig(max_batch=0)
    with pytest.raises(ValueError, match="unknown JPEG encoder 'png'"):
        AccelConfig(jpeg="png")
    label = AccelConfig(attention="flex", compile=True, cuda_graphs=True, fp8=FP8_TARGETS).label()
    assert label == "bf16 flex +compile +graphs +fp8"
    vae_label = AccelConfig(vae_channels_last=True, vae_compile=True, jpeg="nvjpeg").label()
    assert vae_label == "bf16 auto +vae-channels-last +vae-compile jpeg=nvjpeg"
    assert ACCEL_PRESETS["default"] is None and ACCEL_PRESETS["optimized"].fp8 == FP8_TARGETS


def test_cuda_graphs_are_refused_off_cuda() -> None:
    parts = build_parts("tiny", "cpu", "hash")
    with pytest.raises(ValueError, match="CUDA"):
        accelerate(parts, AccelConfig(cuda_graphs=True))


def test_bf16_session_renders_frames_close_to_fp32() -> None:
    fp32 = build_parts("tiny", "cpu", "hash")
    bf16 = build_parts("tiny", "cpu", "hash")
    bf16.model.load_state_dict(fp32.model.state_dict())
    bf16.vae.load_state_dict(fp32.vae.state_dict())
    accelerate(bf16, AccelConfig(attention="split", decode_stream=True))  # no stream off CUDA
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert next(bf16.vae.parameters()).dtype == torch.bfloat16
    frames = [_first_frames(fp32, seed=3), _first_frames(bf16, seed=3)]
    other_noise = _first_frames(fp32, seed=4)  # what "anywhere" looks like
    assert frames[1].shape == frames[0].shape == (12, 32, 32, 3) and frames[1].dtype == np.uint8
    # random weights amplify rounding, but bf16 must land near fp32, far nearer than other noise
    diff = np.abs(frames[1].astype(int) - frames[0].astype(int)).mean()
    apart = np.abs(other_noise.astype(int) - frames[0].astype(int)).mean()
    assert diff < 0.5 * apart


def _first_frames(parts, seed: int) -> np.ndarray:
    session = SessionRenderer(parts, seed=seed)
    session.start(None, [silent_plan(i) for i in range(session.lookahead)])
    return session.decode(session.step(silent_plan(session.lookahead)))


def test_forward_factory_gives_each_session_its_forward() -> None:
    parts = build_parts("tiny", "cpu", "hash")
    made = []

    def factory():
        forward = copy.copy(parts.model.forward)
        made.append(forward)
        return forward

    parts.forward_factory = factory
    sessions = [SessionRenderer(parts) for _ in range(2)]
    assert len(made) == 2 and [s.generator.forward for s in sessions] == made


# -- FP8


def test_quantize_rows_round_trips_and_never_overflows() -> None:
    x = torch.randn(8, 64) * torch.logspace(-3, 4, 8)[:, None]  # rows of very different size
    q, scale = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (8, 1)
    back = q.float() * scale
    assert torch.isfinite(back).all() and back.abs().max() <= x.abs().max() * 1.0001
    assert q.float().abs().max() <= FP8_MAX
    assert relative_error(back, x) < 0.05  # e4m3 keeps ~3 significant bits


@needs_cpu_fp8
def test_float8_linear_follows_the_bf16_linear() -> None:
    torch.manual_seed(1)
    linear = nn.Linear(64, 96).to(torch.bfloat16)
    x = torch.randn(2, 10, 64, dtype=torch.bfloat16)
    fp8 = Float8Linear(linear)
    with torch.no_grad():
        out, ref = fp8(x), linear(x)
    assert out.shape == ref.shape and out.dtype == torch.bfloat16
    assert 1e-3 < relative_error(out, ref) < 0.08  # really quantised, still the same function
    with pytest.raises(ValueError, match="divisible by 16"):
        Float8Linear(nn.Linear(64, 10))


@needs_cpu_fp8
def test_convert_to_fp8_replaces_exactly_the_target_linears(tiny) -> None:
    model = copy.deepcopy(tiny).to(torch.bfloat16)
    names = convert_to_fp8(model, FP8_TARGETS)
    assert len(names) == len(FP8_TARGETS) * PRESETS["tiny"].depth
    assert all(isinstance(model.get_submodule(n), Float8Linear) for n in names)
    assert isinstance(model.blocks[0].cross_attn.text_kv, nn.Linear)  # a few rows: left alone
    tensors, n_context = buffer_inputs(tiny)
    bf16 = [v.to(torch.bfloat16) if v.is_floating_point() else v for v in tensors]
    with torch.inference_mode():
        error = relative_error(
            model(*bf16, n_context), copy.deepcopy(tiny).bfloat16()(*bf16, n_context)
        )
    assert 1e-3 < error < 0.2


@needs_cpu_fp8
def test_forward_rows_report_errors_against_bf16(tiny) -> None:
    variants = [
        ("fp32 eager split", AccelConfig(dtype="float32", attention="split")),
        (REFERENCE, AccelConfig(attention="split")),
        ("fp8 eager split", AccelConfig(attention="split", fp8=FP8_TARGETS)),
        ("bf16 eager split +graphs", AccelConfig(attention="split", cuda_graphs=True)),
        ("broken", AccelConfig(attention="no-such-backend")),
    ]
    rows = {r.variant: r for r in forward_rows(tiny, variants, repeat=2)}
    assert ("bf16 eager split +graphs" in rows) == torch.cuda.is_available()
    assert rows[REFERENCE].error == 0.0
    assert 0 < rows["fp32 eager split"].error < 0.05  # bf16's own rounding
    assert 1e-3 < rows["fp8 eager split"].error < 0.2
    assert rows["fp8 eager split"].ms > 0 and "FP8 linears" in rows["fp8 eager split"].note
    assert np.isnan(rows["broken"].ms) and "no-such-backend" in rows["broken"].note
    assert "fp8 eager split" in format_stage_rows(list(rows.values()))


# -- JPEG and timers


def test_threaded_pil_jpeg_gives_the_same_bytes_in_order() -> None:
    frames = synthetic_frames(6, 48, 64)
    one, many = PilJpegEncoder(1).encode(frames, 80), PilJpegEncoder(3).encode(frames, 80)
    assert one == many and len(one) == 6
    assert decode_jpeg(one[4]).shape == (48, 64, 3)
    assert PilJpegEncoder(2).encode(torch.from_numpy(frames), 80) == one
    with pytest.raises(ValueError, match="unknown JPEG"):
        build_jpeg_encoder("gif")
    with pytest.raises(ValueError, match="unknown JPEG"):
        build_jpeg_encoder("pil-0")


def test_auto_jpeg_is_pillow_off_cuda_and_sessions_encode_through_the_parts_encoder() -> None:
    assert isinstance(build_jpeg_encoder("auto", "cpu"), PilJpegEncoder)
    parts = build_parts("tiny", "cpu", "hash")
    accelerate(parts, AccelConfig(dtype="float32", jpeg="pil-2"))
    assert isinstance(parts.jpeg, PilJpegEncoder) and parts.jpeg.threads == 2
    session = SessionRenderer(parts, seed=3)
    session.start(None, [silent_plan(i) for i in range(session.lookahead)])
    latents = session.step(silent_plan(session.lookahead))
    on_host = session.decode(latents)
    session.start(None, [silent_plan(i) for i in range(session.lookahead)])  # same chunk again
    on_device = session.decode(session.step(silent_plan(session.lookahead)), on_device=True)
    assert isinstance(on_device, torch.Tensor) and on_device.dtype == torch.uint8
    np.testing.assert_array_equal(on_device.numpy(), on_host)
    jpegs = session.encode_jpeg(on_device, quality=90)
    assert len(jpegs) == 12 and decode_jpeg(jpegs[0]).shape == (32, 32, 3)


@needs_cuda
def test_nvjpeg_encodes_frames_on_the_gpu() -> None:
    frames = synthetic_frames(4, 48, 64)
    try:
        encoder = build_jpeg_encoder("nvjpeg", "cuda")
    except RuntimeError as err:  # no torchvision
        pytest.skip(str(err))
    jpegs = encoder.encode(torch.from_numpy(frames).cuda(), 90)
    decoded = decode_jpeg(jpegs[1]).astype(int)
    assert len(jpegs) == 4 and np.abs(decoded - frames[1]).mean() < 4


def test_decode_rows_measure_each_dtype_and_skip_compilation_off_cuda() -> None:
    rows = decode_rows(["tiny"], 4, (4, 4), "cpu")
    assert [r.variant for r in rows] == ["tiny (0.2M) fp32", "tiny (0.2M) bf16"]
    assert all(r.stage == "vae decode" and r.ms > 0 and r.setup_s > 0 for r in rows)


def test_jpeg_rows_measure_each_encoder() -> None:
    rows = jpeg_rows(32, 48, ["pil", "pil-2"], "cpu")
    assert [r.variant for r in rows] == ["pil", "pil-2"] and all(r.ms > 0 for r in rows)


def test_stage_times_and_timer() -> None:
    times = StageTimes("cpu")
    for _ in range(3):
        with times.stage("forward"):
            sum(range(1000))
    assert len(times.samples["forward"]) == 3 and times.median_ms("forward", skip=1) > 0
    assert np.isnan(times.median_ms("decode"))
    samples = time_ms(lambda: sum(range(1000)), "cpu", warmup=1, repeat=4)
    assert len(samples) == 4 and all(s > 0 for s in samples)


# -- the bench on tiny


async def test_bench_run_reports_the_service_path() -> None:
    report = await run_renderer_bench(
        "tiny", "cpu", chunks=6, text_encoder="hash", accel=AccelConfig(attention="split")
    )
    assert report.label == "bf16 split" and report.sessions == 1 and report.chunks == 6
    assert report.steady_fps > 0 and 0 < report.first_chunk_s < 60
    assert all(report.stage_ms[s] > 0 for s in ("forward", "decode", "encode"))
    table = format_table([report])
    assert "bf16 split" in table and table.count("\n") == 2


async def test_bench_command_prints_one_run_off_cuda() -> None:
    text = await bench_renderer("tiny", "cpu", chunks=5, text_encoder="hash", compare=False)
    assert "steady fps" in text and "time to first frame" in text and "CPU" in text


# -- CUDA only


@needs_cuda
def test_cuda_graph_replays_equal_eager_for_each_shape_and_padded_batch(tiny) -> None:
    model = copy.deepcopy(tiny).cuda().to(torch.bfloat16)
    graphs = CudaGraphForward(model, batch_sizes=(1, 4))
    with torch.inference_mode():
        for seed in range(2):  # a second input: the graph reads its inputs anew
            tensors, n = buffer_inputs(model, seed)
            tensors = [v.to(torch.bfloat16) if v.is_floating_point() else v for v in tensors]
            torch.testing.assert_close(graphs(*tensors, n), model(*tensors, n))
            short = [v[:, :6] for v in tensors]  # the refinement's shape
            torch.testing.assert_close(graphs(*short, 5), model(*short, 5))
            batch = [torch.cat([v] * 3) for v in tensors]  # runs in the graph of 4
            torch.testing.assert_close(graphs(*batch, n), model(*batch, n))
    assert graphs.captures == 3


@needs_cuda
def test_compiled_blocks_match_eager(tiny) -> None:
    model = copy.deepcopy(tiny).cuda().to(torch.bfloat16)
    reference = copy.deepcopy(model)
    forward = compile_blocks(model)
    tensors, n = buffer_inputs(model)
    tensors = [v.to(torch.bfloat16) if v.is_floating_point() else v for v in tensors]
    with torch.inference_mode():
        assert relative_error(forward(*tensors, n), reference(*tensors, n)) < 2e-2
        short = [v[:, :6] for v in tensors]
        assert relative_error(forward(*short, 5), reference(*short, 5)) < 2e-2


@needs_cuda
def test_decode_stream_session_matches_the_default_stream() -> None:
    frames = []
    for on in (False, True):
        parts = build_parts("tiny", "cuda", "hash")
        accelerate(parts, AccelConfig(dtype="float32", attention="split", decode_stream=on))
        session = SessionRenderer(parts, seed=5)
        session.start(None, [silent_plan(i) for i in range(session.lookahead)])
        frames.append(session.decode(session.step(silent_plan(session.lookahead))))
    assert np.abs(frames[0].astype(int) - frames[1].astype(int)).max() <= 1
