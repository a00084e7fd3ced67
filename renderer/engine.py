"""One session's rendering, no I/O: chunk plans in, RGB frames out.

`RendererParts` holds the networks of a preset (DiT, VAE, audio and text encoders), shared by
every session of a worker. `SessionRenderer` holds one session's state: the streaming generator,
the VAE decode cache and the audio feature streams. Per chunk the service calls `step(plan)`
(the DiT forward; the chunk 3 ahead enters with `plan`'s conditioning) and then `decode(latents)`
(the VAE), which it overlaps with the next `step`.

`flowact.renderer.accel` speeds a `RendererParts` up in place: it may set `forward_factory`
(each session's buffer forwards go through a CUDA-graph runner or a batcher shared by the
sessions), `decode_stream` (on CUDA, decode runs on a stream of its own beside the forward) and
`jpeg` (the encoder `SessionRenderer.encode_jpeg` uses: nvJPEG reads the frames on the GPU).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import structlog
import torch
from torch import Tensor

from flowact.renderer import audio as audio_mod
from flowact.renderer import vae as vae_mod
from flowact.renderer.anchors import SPEC_KEY, PromptAnchors
from flowact.renderer.buffer import ChunkCondition
from flowact.renderer.jpeg import JpegEncoder, PilJpegEncoder
from flowact.renderer.model import FlowActMMDiT
from flowact.renderer.presets import BEHAVIOR_CHANNELS, RendererConfig, get_preset
from flowact.renderer.sampler import FlowMatchEulerSampler
from flowact.renderer.stream import ForwardFn, StreamConfig, StreamingGenerator
from flowact.renderer.text import HashTextEncoder, MiniLMTextEncoder
from flowact.renderer.timeline import ChunkPlan, silent_plan
from flowact.renderer.weights import load_into, read_sampling, shipped_checkpoint
from flowact.schemas import timebase as tb

log = structlog.get_logger(__name__)

# Which VAE and audio-encoder layout each renderer preset pairs with.
VAE_PRESET = {"tiny": "tiny", "demo": "small", "paper-480p": "full"}
AUDIO_PRESET = {"tiny": "tiny", "demo": "small", "paper-480p": "small"}


def audio_encoder_for(config: RendererConfig, preset: str) -> audio_mod.LogMelAudioEncoder:
    """The audio encoder of layout `preset` paired with `config` (its width set to the DiT's)."""
    return audio_mod.LogMelAudioEncoder(replace(audio_mod.PRESETS[preset], dim=config.audio_dim))


@dataclass
class RendererParts:
    """The networks of one preset, in eval mode on one device."""

    config: RendererConfig
    model: FlowActMMDiT
    vae: vae_mod.CausalVideoVAE
    audio: audio_mod.LogMelAudioEncoder
    text: HashTextEncoder | MiniLMTextEncoder
    anchors: PromptAnchors | None = None  # the checkpoint's trained phrasings, if it names them
    micro_steps: int = 1
    guidance: float | None = None  # CFG scale for a model with a guidance embedding
    shift: float = 3.0  # noise-schedule shift of the sampler
    trained: bool = False
    forward_factory: Callable[[], ForwardFn] | None = None  # one forward callable per session
    decode_stream: bool = False  # on CUDA, each session decodes on a stream of its own
    jpeg: JpegEncoder = field(default_factory=PilJpegEncoder)  # shared by the sessions

    @classmethod
    def build(
        cls,
        preset: str,
        *,
        device: str = "cpu",
        weights: Path | str | None = "shipped",
        text_encoder: str = "auto",
        seed: int = 0,
    ) -> RendererParts:
        """`weights`: a checkpoint directory written by `save_weights`, "shipped" (the
        project's trained checkpoint of the preset when there is one, else random), or
        "random"/None (random weights from `seed`)."""
        config = get_preset(preset)
        torch.manual_seed(seed)
        vae = vae_mod.build_vae(VAE_PRESET[preset])
        if vae.config.latent_channels != config.latent_channels:
            raise ValueError(f"VAE {VAE_PRESET[preset]} does not match preset {preset}")
        parts = cls(
            config=config,
            model=FlowActMMDiT(config),
            vae=vae,
            audio=audio_encoder_for(config, AUDIO_PRESET[preset]),
            text=build_text_encoder(text_encoder, preset),
        )
        if weights == "shipped":
            weights = shipped_checkpoint(preset)
        if weights not in (None, "random"):
            parts.load(Path(weights))
        for module in (parts.model, parts.vae, parts.audio):
            module.to(device).eval()
        if not parts.trained:
            log.warning("renderer has random weights: frames are noise", preset=preset)
        return parts

    def load(self, directory: Path) -> None:
        load_into(directory, {"dit": self.model, "vae": self.vae, "audio": self.audio})
        sampling = read_sampling(directory)
        self.micro_steps = sampling.get("micro_steps", self.micro_steps)
        self.guidance = sampling.get("guidance", self.guidance)
        self.shift = sampling.get("shift", self.shift)
        if SPEC_KEY in sampling:
            self.anchors = PromptAnchors.from_spec(sampling[SPEC_KEY], self.text.encode)
        self.trained = True
        settings = {k: v for k, v in sampling.items() if k != SPEC_KEY}
        anchored = sum(len(a) for a in self.anchors.embeddings.values()) if self.anchors else 0
        log.info("renderer weights loaded", path=str(directory), anchors=anchored, **settings)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def build_text_encoder(name: str, preset: str) -> HashTextEncoder | MiniLMTextEncoder:
    if name == "auto":
        name = "hash" if preset == "tiny" else "minilm"
    if name == "hash":
        return HashTextEncoder()
    if name == "minilm":
        return MiniLMTextEncoder()
    raise ValueError(f"unknown text encoder {name!r}; use auto, hash or minilm")


class SessionRenderer:
    """Chunk plans -> clean latents -> frames, for one session."""

    def __init__(self, parts: RendererParts, *, seed: int = 0, refine_every: int = 0) -> None:
        self.parts = parts
        self.seed = seed
        cfg = parts.config
        self.generator = StreamingGenerator(
            parts.model,
            FlowMatchEulerSampler(
                shift=parts.shift, chunks=cfg.stream_chunks, micro_steps=parts.micro_steps
            ),
            StreamConfig(refine_every=refine_every, guidance=parts.guidance),
            forward=parts.forward_factory() if parts.forward_factory is not None else None,
        )
        on_cuda = parts.device.type == "cuda"
        self._stream = torch.cuda.Stream(parts.device) if on_cuda and parts.decode_stream else None
        self._audio_stream = parts.audio.stream()
        self._groups = audio_mod.AudioGroupStream(cfg.audio_overlap)
        self._snapshots: dict[int, tuple] = {}  # audio-stream state before each pending chunk
        self._decoder = parts.vae.decode_stream()

    @property
    def lookahead(self) -> int:
        """Chunks in the denoising stream: a chunk's plan is taken this many chunks early."""
        return self.parts.config.stream_chunks

    @torch.inference_mode()
    def start(self, image: np.ndarray | None, plans: Sequence[ChunkPlan]) -> None:
        """Reference image `[H, W, 3]` uint8 (None: mid-grey) and the first `lookahead` plans."""
        reference = self._encode_reference(image)
        self._audio_stream.reset()
        self._groups.reset()
        self._snapshots.clear()
        generator = torch.Generator(self.parts.device).manual_seed(self.seed)
        self.generator.start(reference, [self._condition(p) for p in plans], generator)

    @torch.inference_mode()
    def prime(self, chunks: int = 2) -> None:
        """Run a session's convolutions once on the calling thread: the reference encode, the
        audio encoder, and `chunks` streaming decodes (the DiT, which has none, is not run).

        PyTorch keeps cuDNN's conv plans per thread (cuDNN does not promise they are safe to
        share), so a thread's first decode plans, and with `cudnn.benchmark` times, every conv
        of the VAE again: seconds on a GPU. A worker primes the threads that run sessions.
        """
        reference = self._encode_reference(None)  # [1, 1, C, h, w]
        latents = reference.expand(-1, tb.LATENTS_PER_CHUNK, -1, -1, -1)  # [1, L, C, h, w]
        for index in range(chunks):
            self._condition(silent_plan(index))
            self.decode(latents)

    def close(self) -> None:
        """Release the session's forward: a batch client stops counting as a live session."""
        close = getattr(self.generator.forward, "close", None)
        if close is not None:
            close()

    def _encode_reference(self, image: np.ndarray | None) -> Tensor:
        """The reference's latent `[1, 1, C, h, w]`; the decoder is reset and primed with it."""
        cfg = self.parts.config
        if image is None:
            image = np.full((cfg.height, cfg.width, 3), 128, np.uint8)
        if image.shape != (cfg.height, cfg.width, 3):
            raise ValueError(
                f"reference is {image.shape}, preset needs {(cfg.height, cfg.width, 3)}"
            )
        frames = self._to_tensor(image)  # [1, 1, 3, H, W]
        reference = self.parts.vae.encode(frames)  # [1, 1, C, h, w]
        self._decoder.reset()
        # primes the causal cache (the reference frame is not shown), on the decode stream so
        # that the cache's tensors are made and freed on the stream that reads them
        with self._decode_context(after_current=True):
            self._decoder.push(reference)
        if self._stream is not None:
            reference.record_stream(self._stream)  # read there: keep its memory until done
        return reference

    @torch.inference_mode()
    def step(self, entering: ChunkPlan) -> Tensor:
        """The DiT forward: clean latents `[1, 3, C, h, w]` of the next chunk; `entering` joins."""
        latents = self.generator.step()
        self._snapshots.pop(self.generator.next_index - 1, None)
        self.generator.push(self._condition(entering))
        if latents.is_cuda:
            # the latents come back computed: a decode on another stream needs no event, and
            # the caller's wall time of a step is its GPU time
            torch.cuda.current_stream(latents.device).synchronize()
        return latents

    @torch.inference_mode()
    def decode(self, latents: Tensor, on_device: bool = False) -> np.ndarray | Tensor:
        """Clean latents of one chunk (from `step`) -> frames `[12, H, W, 3]` uint8: a NumPy
        array, or with `on_device` a tensor left on the model's device (for nvJPEG).

        Calls must keep order. With `decode_stream` it runs on this session's own stream and
        does not wait for forwards queued meanwhile (`step` returned computed latents).
        """
        with self._decode_context(after_current=False):
            frames = self._decoder.push(latents)[0]  # [12, 3, H, W]
            pixels = ((frames.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
            pixels = pixels.permute(0, 2, 3, 1)  # [12, H, W, 3]
            if not on_device:
                return pixels.cpu().numpy()  # the copy waits for this stream
            pixels = pixels.contiguous()
            if self._stream is not None:
                self._stream.synchronize()  # computed, like `step`'s latents: only this stream
            return pixels

    def encode_jpeg(self, frames: np.ndarray | Tensor, quality: int) -> list[bytes]:
        """`decode`'s frames -> one JPEG each, through `parts.jpeg`; a GPU encoder runs on
        this session's decode stream, so it never queues behind another session's forward."""
        with self._decode_context(after_current=False):
            return self.parts.jpeg.encode(frames, quality)

    def _decode_context(self, after_current: bool) -> contextlib.AbstractContextManager:
        if self._stream is None:
            return contextlib.nullcontext()
        if after_current:  # inputs made on the caller's stream
            self._stream.wait_stream(torch.cuda.current_stream(self._stream.device))
        return torch.cuda.stream(self._stream)

    @torch.inference_mode()
    def interrupt(self, from_chunk: int, plans: Sequence[ChunkPlan]) -> list[int]:
        """Barge-in: chunks still in the stream from `from_chunk` on restart from noise under
        the new plans (their old audio is gone)."""
        pending, conditions = self._reconditioned(from_chunk, plans)
        return self.generator.interrupt(pending[0], conditions) if pending else []

    @torch.inference_mode()
    def refresh(self, from_chunk: int, plans: Sequence[ChunkPlan]) -> list[int]:
        """Late input: chunks still in the stream from `from_chunk` on keep their latents and
        take the new plans' conditioning for the steps they have left."""
        pending, conditions = self._reconditioned(from_chunk, plans)
        return self.generator.recondition(conditions) if pending else []

    def _reconditioned(
        self, from_chunk: int, plans: Sequence[ChunkPlan]
    ) -> tuple[list[int], list[ChunkCondition]]:
        """Chunks in the stream from `from_chunk` on, and their conditions recomputed from the
        audio state each had (the audio features are causal, so later chunks follow)."""
        pending = [i for i in self.generator.pending_indices if i >= from_chunk]
        if not pending:
            return [], []
        by_index = {p.index: p for p in plans}
        self._restore(pending[0])
        return pending, [self._condition(by_index[i]) for i in pending]

    # -- conditioning ---------------------------------------------------------------------------

    def _condition(self, plan: ChunkPlan) -> ChunkCondition:
        cfg, device = self.parts.config, self.parts.device
        # Both streams replace their state tensors on every push, so shallow copies suffice.
        self._snapshots[plan.index] = (self._audio_stream.state.copy(), copy.copy(self._groups))
        pcm = torch.from_numpy(plan.audio).to(device)[None]  # [1, 7680]
        features = self._audio_stream.push(pcm)  # [1, 12, Da]
        audio = self._groups.push(features).current  # [1, 3, W, Da]
        text = torch.zeros(1, cfg.latents_per_chunk, cfg.text_slots, cfg.text_dim, device=device)
        mask = torch.zeros(
            1, cfg.latents_per_chunk, cfg.text_slots, dtype=torch.bool, device=device
        )
        for slot, channel in enumerate(BEHAVIOR_CHANNELS):
            prompts = plan.prompts.get(channel, ())  # type: ignore[call-overload]
            if prompts:
                embeddings = self.parts.text.encode(list(prompts))  # [n, Dt]
                if self.parts.anchors is not None:
                    embeddings = self.parts.anchors.apply(embeddings, channel)
                embedding = embeddings.mean(0)  # [Dt]
                text[:, :, slot] = torch.nn.functional.normalize(embedding, dim=0).to(device)
                mask[:, :, slot] = True
        return ChunkCondition(plan.index, audio, text, mask)

    def _restore(self, index: int) -> None:
        state, groups = self._snapshots[index]
        self._audio_stream.state, self._groups = state.copy(), copy.copy(groups)
        for later in [i for i in self._snapshots if i >= index]:
            del self._snapshots[later]

    def _to_tensor(self, image: np.ndarray) -> Tensor:
        x = (
            torch.from_numpy(np.array(image)).to(self.parts.device).float() / 127.5 - 1.0
        )  # [H, W, 3]
        dtype = next(self.parts.vae.parameters()).dtype  # accel may run the VAE in bf16
        return x.permute(2, 0, 1)[None, None].to(dtype)  # [1, 1, 3, H, W]
