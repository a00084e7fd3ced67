"""Stage micro-benchmarks: the DiT forward under each optimisation, the VAE decode, JPEG.

Each optimisation is measured on its own here, on the same weights and inputs: a figure is the
median of device-timed repeats after warm-up (compilation and graph capture happen in the
warm-up and are reported apart). Errors are `|v - v_ref| / |v_ref|` of the predicted velocity
against the bf16 eager forward. `flowact.renderer.bench` puts these rows under the end-to-end
table; weights are random, which costs the same compute as trained ones.
"""

from __future__ import annotations

import copy
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from flowact.renderer import vae as vae_mod
from flowact.renderer.accel import AccelConfig, prepare_forward
from flowact.renderer.fp8 import FP8_TARGETS, relative_error
from flowact.renderer.jpeg import build_jpeg_encoder
from flowact.renderer.model import FlowActMMDiT
from flowact.renderer.profiling import peak_memory_gib, time_ms
from flowact.renderer.sampler import FlowMatchEulerSampler
from flowact.schemas import timebase as tb


@dataclass
class StageRow:
    stage: str  # "dit forward", "vae decode", "jpeg", ...
    variant: str
    ms: float  # median per call (per chunk for decode and JPEG)
    error: float | None = None  # relative error against the stage's reference
    setup_s: float | None = None  # first call: compilation, graph capture, autotuning
    note: str = ""


# (label, config); the reference for errors is the one labelled REFERENCE
REFERENCE = "bf16 eager split"
FORWARD_VARIANTS: list[tuple[str, AccelConfig]] = [
    ("fp32 eager split", AccelConfig(dtype="float32", attention="split")),
    ("bf16 eager sdpa (dense mask)", AccelConfig(attention="sdpa")),
    (REFERENCE, AccelConfig(attention="split")),
    ("bf16 eager flex", AccelConfig(attention="flex")),
    ("bf16 eager split +graphs", AccelConfig(attention="split", cuda_graphs=True)),
    ("bf16 compile split", AccelConfig(attention="split", compile=True)),
    ("bf16 compile split +graphs", AccelConfig(attention="split", compile=True, cuda_graphs=True)),
    (
        "bf16 eager split +graphs sdpa=cudnn",
        AccelConfig(attention="split", cuda_graphs=True, sdpa=("cudnn",)),
    ),
    ("fp8 eager split +graphs", AccelConfig(attention="split", cuda_graphs=True, fp8=FP8_TARGETS)),
    (
        "fp8 eager split +graphs +fast-accum",
        AccelConfig(attention="split", cuda_graphs=True, fp8=FP8_TARGETS, fp8_fast_accum=True),
    ),
    (
        "fp8 compile split +graphs",
        AccelConfig(attention="split", compile=True, cuda_graphs=True, fp8=FP8_TARGETS),
    ),
    ("bf16 compile flex +graphs", AccelConfig(attention="flex", compile=True, cuda_graphs=True)),
]


def buffer_inputs(model: FlowActMMDiT, seed: int = 0) -> tuple[tuple[Tensor, ...], int]:
    """A full buffer's forward inputs as the stream feeds them: clean context, staggered
    stream levels, random latents, audio and prompts. Returns (tensors, n_context)."""
    cfg = model.config
    device = next(model.parameters()).device
    gen = torch.Generator(device).manual_seed(seed)
    frames = cfg.buffer_latents

    def randn(*shape: int) -> Tensor:
        return torch.randn(shape, generator=gen, device=device)

    levels = FlowMatchEulerSampler(chunks=cfg.stream_chunks).level_table(device)[0]
    t = torch.cat(
        [
            torch.zeros(cfg.context_latents, device=device),
            levels.repeat_interleave(cfg.latents_per_chunk),
        ]
    )[None]
    text = torch.nn.functional.normalize(randn(1, frames, cfg.text_slots, cfg.text_dim), dim=-1)
    mask = torch.rand((1, frames, cfg.text_slots), generator=gen, device=device) < 0.5
    x = randn(1, frames, cfg.latent_channels, cfg.latent_height, cfg.latent_width)
    audio = randn(1, frames, cfg.audio_window, cfg.audio_dim)
    return (x, t, audio, text, mask), cfg.context_latents


def forward_rows(
    model: FlowActMMDiT,
    variants: Sequence[tuple[str, AccelConfig]] = FORWARD_VARIANTS,
    repeat: int = 5,
    on_row: Callable[[StageRow], None] | None = None,
) -> list[StageRow]:
    """One row per variant, in the order given, each on a copy of `model` (fp32, unchanged).

    The reference variant runs first so that every row, fp32 included, gets an error;
    `on_row` sees each row as soon as it is measured.
    """
    device = next(model.parameters()).device
    tensors, n_context = buffer_inputs(model)
    order = sorted(variants, key=lambda v: v[0] != REFERENCE)
    reference: Tensor | None = None
    rows: dict[str, StageRow] = {}
    for label, config in order:
        if config.cuda_graphs and device.type != "cuda":
            continue
        try:
            row, velocity = _forward_row(model, label, config, tensors, n_context, repeat)
        except Exception as err:  # one broken variant must not hide the others' figures
            rows[label] = StageRow("dit forward", label, float("nan"), note=_short(err))
            _free(device)
            continue
        if reference is None and label == REFERENCE:
            reference = velocity
        if reference is not None:
            row.error = relative_error(velocity, reference)
        rows[label] = row
        if on_row is not None:
            on_row(row)
        del velocity
        _free(device)
    return [rows[label] for label, _ in variants if label in rows]


def _forward_row(
    model: FlowActMMDiT,
    label: str,
    config: AccelConfig,
    tensors: tuple[Tensor, ...],
    n_context: int,
    repeat: int,
) -> tuple[StageRow, Tensor]:
    device = next(model.parameters()).device
    variant = copy.deepcopy(model)
    with torch.inference_mode():
        forward, _, fp8_layers = prepare_forward(variant, config)
        dtype = next(variant.parameters()).dtype
        inputs = tuple(v.to(dtype) if v.is_floating_point() else v for v in tensors)

        def call() -> Tensor:
            return forward(*inputs, n_context)

        peak_memory_gib(device, reset=True)
        started = time.perf_counter()
        velocity = call()
        _sync(device)
        setup_s = time.perf_counter() - started
        ms = statistics.median(time_ms(call, device, warmup=1, repeat=repeat))
        velocity = call().float()
        note = f"peak {peak_memory_gib(device):.1f} GiB"
        if fp8_layers:
            note += f", {len(fp8_layers)} FP8 linears"
    return StageRow("dit forward", label, ms, setup_s=setup_s, note=note), velocity


# (label, dtype, channels_last + compile): the VAE decode variants, the last on CUDA only
DECODE_VARIANTS: list[tuple[str, torch.dtype, bool]] = [
    ("fp32", torch.float32, False),
    ("bf16", torch.bfloat16, False),
    ("bf16 channels-last + compile", torch.bfloat16, True),
]


def decode_rows(
    vae_presets: Sequence[str], latent_channels: int, latent_size: tuple[int, int], device: str
) -> list[StageRow]:
    """ms to decode one chunk (3 latents -> 12 frames) per VAE preset and variant, steady
    state; errors of the compiled decode are against the eager bf16 one."""
    rows = []
    for preset in vae_presets:
        config = replace(vae_mod.PRESETS[preset], latent_channels=latent_channels)
        reference = None
        for name, dtype, compiled in DECODE_VARIANTS:
            if compiled and torch.device(device).type != "cuda":
                continue
            row, frames = _decode_row(preset, config, name, dtype, compiled, latent_size, device)
            if reference is not None and compiled:
                row.error = relative_error(frames, reference)
            if dtype == torch.bfloat16 and not compiled:
                reference = frames
            rows.append(row)
            _free(torch.device(device))
    return rows


def _decode_row(
    preset: str,
    config: vae_mod.VAEConfig,
    name: str,
    dtype: torch.dtype,
    compiled: bool,
    latent_size: tuple[int, int],
    device: str,
) -> tuple[StageRow, Tensor]:
    with torch.random.fork_rng(devices=[]):  # every variant decodes with the same weights
        torch.manual_seed(0)
        vae = vae_mod.build_vae(config).to(device, dtype).eval()
    if compiled:
        vae.to_channels_last()
        vae.decoder.compile_body()
    gen = torch.Generator().manual_seed(0)
    chunk = torch.randn(
        (1, tb.LATENTS_PER_CHUNK, config.latent_channels, *latent_size), generator=gen
    ).to(device, dtype)
    with torch.inference_mode():
        stream = vae.decode_stream()
        started = time.perf_counter()
        stream.push(chunk[:, :1])  # the reference: afterwards every call is steady
        frames = stream.push(chunk).float()
        _sync(torch.device(device))
        setup_s = time.perf_counter() - started
        ms = statistics.median(time_ms(lambda: stream.push(chunk), device, 1, 5))
    label = f"{preset} ({vae_mod.param_count(vae) / 1e6:.1f}M) {name}"
    return StageRow("vae decode", label, ms, setup_s=setup_s), frames


def overlap_rows(
    forward: Callable[[], object], decode: Callable[[], object], device: str, repeat: int = 5
) -> list[StageRow]:
    """A forward and a decode one after the other on one stream, and at once on two streams."""
    if torch.device(device).type != "cuda":
        return []
    side = torch.cuda.Stream(device)

    def serial() -> None:
        forward()
        decode()

    def parallel() -> None:
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            decode()
        forward()
        torch.cuda.current_stream(device).wait_stream(side)

    return [
        StageRow("forward + decode", label, statistics.median(time_ms(fn, device, 1, repeat)))
        for label, fn in (("one stream", serial), ("decode on its own stream", parallel))
    ]


def jpeg_rows(
    height: int, width: int, encoders: Sequence[str], device: str, quality: int = 85
) -> list[StageRow]:
    """ms to JPEG-encode one chunk's 12 frames of a smooth synthetic picture."""
    frames = synthetic_frames(tb.FRAMES_PER_CHUNK, height, width)
    rows = []
    for name in encoders:
        try:
            encoder = build_jpeg_encoder(name, device)
            source: np.ndarray | Tensor = frames
            if name == "nvjpeg":  # the decoded frames already sit on the GPU
                source = torch.from_numpy(frames).to(device)
            encoder.encode(source, quality)
            times = []
            for _ in range(5):
                started = time.perf_counter()
                encoder.encode(source, quality)
                times.append(1000 * (time.perf_counter() - started))
            rows.append(StageRow("jpeg encode", name, statistics.median(times)))
        except Exception as err:
            rows.append(StageRow("jpeg encode", name, float("nan"), note=_short(err)))
    return rows


def synthetic_frames(count: int, height: int, width: int) -> np.ndarray:
    """`[count, H, W, 3]` uint8 of soft gradients and a moving disc, like a talking head's
    frame in how well it compresses (noise would be far slower to encode)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((count, height, width, 3), np.uint8)
    for i in range(count):
        cx, cy = width * (0.5 + 0.05 * np.sin(i / 3)), height * 0.45
        disc = ((x - cx) ** 2 + (y - cy) ** 2) < (0.25 * min(height, width)) ** 2
        out[i, ..., 0] = 90 + 80 * x / width + 60 * disc
        out[i, ..., 1] = 70 + 60 * y / height + 50 * disc
        out[i, ..., 2] = 120 + 40 * np.sin(x / 37 + i) * np.cos(y / 53)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    return text[:120]
