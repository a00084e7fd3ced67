"""Make a renderer fast on a GPU, one switch at a time.

`accelerate(parts, AccelConfig(...))` changes a `RendererParts` in place:

- `dtype`: DiT and VAE weights and activations (bf16 on CUDA; the audio encoder stays fp32);
- `attention`: the fake-causal attention backend (`split`, `flex`, `flash`, `sdpa`, `auto`);
- `fp8`: the DiT's token-wise linears in FP8 (`flowact.renderer.fp8`);
- `compile`: `torch.compile` of each DiT block; the blocks share one compiled graph, so a
  30-block model compiles once. Only the full-buffer forward is compiled: other shapes (the
  memory refinement) run eagerly rather than paying a second compilation;
- `cuda_graphs`: the buffer forward replays from a CUDA graph per input shape
  (`CudaGraphForward`); the buffer never changes shape, so there are two graphs in a session's
  life (buffer and refinement);
- `batch_sessions`: the forwards of concurrent sessions run as one batched forward
  (`flowact.renderer.batching`), through graphs of a few batch sizes when `cuda_graphs` is on;
- `decode_stream`: each session decodes on a CUDA stream of its own, beside the next forward;
- `vae_channels_last`, `vae_compile`: the VAE's conv weights in channels-last layouts, and
  `torch.compile` of its decoder (norms, activations and upsampling fused around the convs);
- `jpeg`: the frames' encoder (`flowact.renderer.jpeg`): nvJPEG encodes them on the GPU, so
  only the compressed bytes cross to the host.

`warmup(parts)` then runs a throwaway session so that compilation, graph capture and cuDNN's
algorithm search happen before the first real session, not in its time to first frame.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
import torch
from torch import Tensor

from flowact.renderer.batching import ForwardBatcher
from flowact.renderer.buffer import StreamBuffer
from flowact.renderer.engine import RendererParts, SessionRenderer
from flowact.renderer.fp8 import FP8_TARGETS, convert_to_fp8, fp8_supported
from flowact.renderer.jpeg import build_jpeg_encoder, check_jpeg_name
from flowact.renderer.model import FlowActMMDiT
from flowact.renderer.stream import ForwardFn
from flowact.renderer.timeline import silent_plan

log = structlog.get_logger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SDPA_KERNELS = ("cudnn", "flash", "efficient", "math")
GRAPH_BATCHES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)


@dataclass(frozen=True)
class AccelConfig:
    """Which optimisations a renderer runs with; every one can be switched on its own."""

    dtype: str = "bfloat16"  # float32 | bfloat16, DiT and VAE
    attention: str = "auto"  # fake-causal attention backend of the DiT
    sdpa: tuple[str, ...] = ()  # SDPA kernels to prefer, in order (cudnn, flash, ...); () = torch's
    compile: bool = False  # torch.compile of each DiT block (full-buffer shape only)
    cuda_graphs: bool = False  # replay buffer forwards from CUDA graphs (CUDA only)
    fp8: tuple[str, ...] = ()  # names (suffixes) of DiT linears to run in FP8; () = none
    fp8_fast_accum: bool = False  # faster FP8 accumulation, less exact
    batch_sessions: bool = False  # one batched forward for concurrent sessions
    max_batch: int = 64
    max_wait_ms: float = 20.0  # longest a forward waits for the other sessions
    decode_stream: bool = False  # VAE decode on a CUDA stream per session
    cudnn_benchmark: bool = True  # let cuDNN time its conv algorithms (the VAE) once per shape
    vae_channels_last: bool = False  # VAE conv weights in NDHWC / NHWC
    vae_compile: bool = False  # torch.compile of the VAE decoder
    jpeg: str = "pil"  # pil | pil-<threads> | nvjpeg | auto (nvJPEG where it is available)

    def __post_init__(self) -> None:
        check_jpeg_name(self.jpeg)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.max_batch < 1 or self.max_wait_ms < 0:
            raise ValueError("max_batch must be positive and max_wait_ms not negative")
        unknown = set(self.sdpa) - set(SDPA_KERNELS)
        if unknown:
            raise ValueError(f"unknown SDPA kernels {sorted(unknown)}; use {list(SDPA_KERNELS)}")

    def label(self) -> str:
        """Short name for tables: `bf16 flex +compile +graphs +fp8 ...`."""
        parts = ["bf16" if self.dtype == "bfloat16" else "fp32", self.attention]
        if self.sdpa:
            parts.append("sdpa=" + ",".join(self.sdpa))
        flags = {
            "compile": self.compile,
            "graphs": self.cuda_graphs,
            "fp8": bool(self.fp8),
            "fast-accum": bool(self.fp8) and self.fp8_fast_accum,
            "batch": self.batch_sessions,
            "decode-stream": self.decode_stream,
            "vae-channels-last": self.vae_channels_last,
            "vae-compile": self.vae_compile,
        }
        jpeg = [] if self.jpeg == "pil" else [f"jpeg={self.jpeg}"]
        return " ".join(parts + [f"+{name}" for name, on in flags.items() if on] + jpeg)


# what the service runs today on CUDA, and everything on
BASELINE = AccelConfig(dtype="float32", cudnn_benchmark=False)
OPTIMIZED = AccelConfig(
    compile=True,
    cuda_graphs=True,
    fp8=FP8_TARGETS,
    decode_stream=True,
    attention="split",
    vae_channels_last=True,
    vae_compile=True,
)  # JPEG stays on Pillow: nvJPEG measured no faster end to end (docs/performance.md)


# sessions of a small preset: launch overhead and the GIL dominate, so graphs and batching;
# no compile (every batch size would compile anew) and no FP8 (matmuls too small to gain)
SESSIONS = AccelConfig(
    attention="split", cuda_graphs=True, batch_sessions=True, decode_stream=True, max_wait_ms=2.0
)
ACCEL_PRESETS: dict[str, AccelConfig | None] = {
    "default": None,  # the parts as built: what `flowact serve renderer` runs
    "baseline": BASELINE,
    "bf16": AccelConfig(attention="split"),
    "optimized": OPTIMIZED,
    "sessions": SESSIONS,
}


@dataclass
class Accelerated:
    """What `accelerate` set up, for statistics and shutdown."""

    config: AccelConfig
    forward: ForwardFn
    graphs: CudaGraphForward | None = None
    batcher: ForwardBatcher | None = None
    fp8_layers: list[str] = field(default_factory=list)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


def accelerate(parts: RendererParts, config: AccelConfig) -> Accelerated:
    """Apply `config` to `parts` in place (weights are cast and replaced, not copied)."""
    if parts.device.type == "cuda":
        torch.backends.cudnn.benchmark = config.cudnn_benchmark
    parts.vae.to(DTYPES[config.dtype])
    if config.vae_channels_last:
        parts.vae.to_channels_last()
    if config.vae_compile:
        parts.vae.decoder.compile_body()
    parts.jpeg = build_jpeg_encoder(config.jpeg, parts.device)
    forward, graphs, fp8_layers = prepare_forward(parts.model, config)
    batcher = None
    if config.batch_sessions:
        batcher = ForwardBatcher(
            forward, max_batch=config.max_batch, max_wait_s=config.max_wait_ms / 1000
        )
        parts.forward_factory = batcher.client
    elif forward is not parts.model:
        session_forward = forward
        parts.forward_factory = lambda: session_forward
    else:
        parts.forward_factory = None
    parts.decode_stream = config.decode_stream
    log.info("renderer accelerated", config=config.label(), fp8_layers=len(fp8_layers))
    return Accelerated(config, forward, graphs, batcher, fp8_layers)


def prepare_forward(
    model: FlowActMMDiT, config: AccelConfig
) -> tuple[ForwardFn, CudaGraphForward | None, list[str]]:
    """The DiT part of `config`, in place on `model`: (forward, its graph runner, FP8 layers)."""
    cuda = next(model.parameters()).is_cuda
    if config.cuda_graphs and not cuda:
        raise ValueError("CUDA graphs need a CUDA device")
    device = str(next(model.parameters()).device)
    if config.fp8 and not fp8_supported(device):
        raise ValueError(f"this torch has no row-wise scaled FP8 matmul on {device}")
    model.to(DTYPES[config.dtype])
    model.set_attention_backend(config.attention)
    fp8_layers = convert_to_fp8(model, config.fp8, config.fp8_fast_accum) if config.fp8 else []
    forward: ForwardFn = compile_blocks(model) if config.compile else model
    if config.sdpa:
        forward = prefer_sdpa_kernels(forward, config.sdpa)
    graphs = None
    if config.cuda_graphs:
        graphs = CudaGraphForward(forward, GRAPH_BATCHES if config.batch_sessions else None)
        forward = graphs
    return forward, graphs, fp8_layers


def compile_blocks(model: FlowActMMDiT) -> ForwardFn:
    """Compile every block in place; returns a forward that runs other shapes eagerly."""
    model.compile_blocks()
    frames = model.config.buffer_latents
    set_stance = getattr(torch.compiler, "set_stance", None)

    def forward(x: Tensor, *args, **kwargs) -> Tensor:
        if x.shape[1] == frames or set_stance is None:
            return model(x, *args, **kwargs)
        # a refinement forward: not worth a second compilation. Its attention goes through
        # `split`, as flex outside torch.compile would materialise the whole score matrix.
        backend = model.blocks[0].self_attn.backend
        model.set_attention_backend("split")
        try:
            with set_stance("force_eager"):
                return model(x, *args, **kwargs)
        finally:
            model.set_attention_backend(backend)

    return forward


def prefer_sdpa_kernels(forward: ForwardFn, names: Sequence[str]) -> ForwardFn:
    """Run `forward` with SDPA trying `names` first, in order (the others stay as fallbacks for
    inputs those kernels refuse, such as the cross-attention's mask). Compilation and graph
    capture happen inside the first call, so they record the preferred kernels."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    table = {
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }
    order = [table[n] for n in names] + [b for n, b in table.items() if n not in names]

    def run(*args, **kwargs) -> Tensor:
        with sdpa_kernel(order, set_priority=True):
            return forward(*args, **kwargs)

    return run


# ------------------------------------------------------------------------------------ CUDA graphs


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[Tensor, ...]  # static x, t, audio, text, text_mask
    guidance: Tensor | None
    output: Tensor


class CudaGraphForward:
    """Replays a forward from a CUDA graph captured once per input shape.

    Inputs are copied into the graph's own tensors, the graph replays, and a copy of its output
    comes back, so callers never see memory the next replay overwrites. With `batch_sizes`, a
    batch of `b` runs in the graph of the smallest listed size >= b: the rows past `b` keep
    earlier inputs, which is harmless because batch items never mix in the model.
    """

    def __init__(
        self, forward: ForwardFn, batch_sizes: Sequence[int] | None = None, warmup: int = 2
    ) -> None:
        self.forward = forward
        self.batch_sizes = sorted(batch_sizes) if batch_sizes else None
        self.warmup = warmup
        self.captures = 0
        self._graphs: dict[tuple, _Graph] = {}
        self._lock = threading.Lock()

    def padded(self, batch: int) -> int:
        if self.batch_sizes is None:
            return batch
        for size in self.batch_sizes:
            if size >= batch:
                return size
        raise ValueError(f"batch {batch} exceeds the largest graph size {self.batch_sizes[-1]}")

    @torch.inference_mode()
    def __call__(
        self,
        x: Tensor,
        t: Tensor,
        audio: Tensor,
        text: Tensor,
        text_mask: Tensor,
        n_context: int,
        guidance: Tensor | None = None,
    ) -> Tensor:
        tensors = (x, t, audio, text, text_mask)
        batch = x.shape[0]
        size = self.padded(batch)
        key = (
            tuple((tuple(v.shape[1:]), v.dtype) for v in tensors),
            size,
            n_context,
            guidance is None,
        )
        with self._lock:
            entry = self._graphs.get(key)
            if entry is None:
                entry = self._graphs[key] = self._capture(tensors, n_context, guidance, size)
            for static, value in zip(entry.inputs, tensors, strict=True):
                static[:batch].copy_(value)
            if guidance is not None:
                assert entry.guidance is not None
                entry.guidance[:batch].copy_(guidance)
            entry.graph.replay()
            return entry.output[:batch].clone()

    def capture_sizes(
        self,
        tensors: Sequence[Tensor],
        n_context: int,
        guidance: Tensor | None,
        sizes: Sequence[int],
    ) -> None:
        """Capture ahead of use, from example inputs of batch 1, the graphs of `sizes`."""
        for size in sizes:
            batch = [v.expand(size, *v.shape[1:]) for v in tensors]
            g = None if guidance is None else guidance.expand(size)
            self(*batch, n_context, guidance=g)

    def _capture(
        self, tensors: Sequence[Tensor], n_context: int, guidance: Tensor | None, size: int
    ) -> _Graph:
        inputs = tuple(_pad_rows(v, size) for v in tensors)
        g = None if guidance is None else _pad_rows(guidance, size)
        device = inputs[0].device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # compile and allocator warm-up off the capture
            for _ in range(self.warmup):
                self.forward(*inputs, n_context, guidance=g)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other sessions' threads may use the GPU while this thread captures
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            output = self.forward(*inputs, n_context, guidance=g)
        self.captures += 1
        log.info("captured a CUDA graph", batch=size, frames=inputs[0].shape[1])
        return _Graph(graph, inputs, g, output)


def _pad_rows(value: Tensor, size: int) -> Tensor:
    """A contiguous copy with `size` rows, the last row repeated into the extra ones."""
    extra = size - value.shape[0]
    if extra > 0:
        value = torch.cat([value, value[-1:].expand(extra, *value.shape[1:])])
    return value.contiguous().clone()


def capture_batches(accelerated: Accelerated, parts: RendererParts, sessions: int) -> int:
    """Capture the graphs of every batch size up to `sessions`, buffer and refinement shapes,
    before sessions start (a capture in the middle of a run stalls every session a moment).
    Returns the number of sizes captured per shape."""
    graphs = accelerated.graphs
    if graphs is None or graphs.batch_sizes is None:
        return 0
    largest = graphs.padded(min(sessions, accelerated.config.max_batch))
    sizes = [s for s in graphs.batch_sizes if s <= largest]
    for tensors, n_context in example_inputs(parts):
        graphs.capture_sizes(tensors, n_context, None, sizes)
    return len(sizes)


def example_inputs(parts: RendererParts) -> list[tuple[tuple[Tensor, ...], int]]:
    """Inputs of the two forward shapes of a session (buffer, memory refinement), batch 1."""
    param = next(parts.model.parameters())
    buffer = StreamBuffer(parts.config, 1, param.device, param.dtype)
    buffer.reset(torch.zeros_like(buffer.reference))
    out = []
    level = torch.tensor(0.3, device=param.device)
    for inputs in (buffer.model_inputs(), buffer.refine_inputs(buffer.short_term, level)):
        tensors = (inputs.x, inputs.t, inputs.audio, inputs.text, inputs.text_mask)
        out.append((tuple(t.contiguous() for t in tensors), inputs.n_context))
    return out


# ----------------------------------------------------------------------------------------- warmup


def warmup(parts: RendererParts, chunks: int, refine_every: int = 0) -> float:
    """Run a throwaway session for `chunks` chunks (decoding and encoding each); returns
    seconds taken.

    Use at least `refine_every` chunks so that the refinement forward is warm too.
    """
    started = time.perf_counter()
    session = SessionRenderer(parts, refine_every=refine_every)
    session.start(None, [silent_plan(i) for i in range(session.lookahead)])
    on_device = parts.jpeg.on_device
    for index in range(chunks):
        frames = session.decode(session.step(silent_plan(index + session.lookahead)), on_device)
        session.encode_jpeg(frames, quality=85)
    session.close()
    return time.perf_counter() - started
