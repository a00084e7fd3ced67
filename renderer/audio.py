"""Audio conditioning: 16 kHz mono PCM -> 25 features a second -> one window per latent.

Contract of an audio encoder: `encoder(pcm)` maps float PCM `[B, S]` in [-1, 1] at 16 kHz to
features `[B, S // 640, Da]`, feature `t` describing samples `[640t, 640(t + 1))`, the audio of
video frame `t`; `encoder.dim` is `Da`. Two implementations:

- `LogMelAudioEncoder` (default): a log-mel spectrogram with hop 640 (one mel frame per video
  frame) and a small stack of causal 1-D convs. Everything is causal, so `AudioFeatureStream`
  computes the same features chunk by chunk with a small, fixed state.
- `WhisperAudioEncoder`: the Whisper encoder of a local checkpoint (never downloaded), its 50/s
  states average-pooled to 25/s and optionally projected to `Da`. Whisper attends over a whole
  30 s window, so it has no exact streaming form; it encodes whatever audio it is given.

`group_per_latent` turns features into the per-latent windows the DiT cross-attends to,
`[B, F, 4 + 2 * overlap, Da]`, and `AudioGroupStream` does the same chunk by chunk.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowact.schemas.timebase import FPS, FRAMES_PER_LATENT, SAMPLE_RATE, SAMPLES_PER_FRAME

# ---------------------------------------------------------------------------------------------
# Log-mel encoder
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogMelConfig:
    """Sizes of the default audio encoder. The hop is fixed by the time base: one video frame.

    Mel frame `t` is the window of `n_fft` samples ending at sample `640(t + 1)`, so a feature
    never looks ahead of its own frame (look-ahead comes from the per-latent overlap instead).
    """

    dim: int = 128  # Da
    hidden: int = 128
    n_fft: int = 1024
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float = SAMPLE_RATE / 2
    kernel_size: int = 3
    dilations: tuple[int, ...] = (1, 2, 4)
    log_floor: float = 1e-6

    def __post_init__(self) -> None:
        if self.n_fft < SAMPLES_PER_FRAME:
            raise ValueError(f"n_fft must cover a hop of {SAMPLES_PER_FRAME} samples")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogMelConfig:
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fixed)


PRESETS: dict[str, LogMelConfig] = {
    "tiny": LogMelConfig(dim=32, hidden=32, n_fft=1024, n_mels=32, dilations=(1, 2)),
    "small": LogMelConfig(dim=128, hidden=128),
}


@dataclass
class AudioState:
    """Carried between stream calls: unconsumed samples and each causal conv's last inputs."""

    samples: Tensor | None = None  # [B, n_fft - hop + remainder]
    convs: dict[nn.Module, Tensor] = field(default_factory=dict)

    def copy(self) -> AudioState:
        """A snapshot to go back to. Streams replace these tensors rather than write into
        them, so sharing the tensors is safe; the conv modules stay the keys."""
        return AudioState(self.samples, dict(self.convs))

    def nbytes(self) -> int:
        tensors = list(self.convs.values()) + ([self.samples] if self.samples is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)


def mel_filterbank(n_freqs: int, n_mels: int, f_min: float, f_max: float) -> Tensor:
    """Triangular filters on the HTK mel scale, area-normalised: `[n_freqs, n_mels]`."""

    def to_mel(hz: Tensor) -> Tensor:
        return 2595.0 * torch.log10(1.0 + hz / 700.0)

    edges_mel = torch.linspace(
        to_mel(torch.tensor(f_min)).item(), to_mel(torch.tensor(f_max)).item(), n_mels + 2
    )
    edges = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)  # [n_mels + 2] Hz
    freqs = torch.linspace(0.0, SAMPLE_RATE / 2, n_freqs)[:, None]  # [n_freqs, 1]
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs - lower) / (center - lower)
    falling = (upper - freqs) / (upper - center)
    triangles = torch.minimum(rising, falling).clamp_min(0.0)  # [n_freqs, n_mels]
    return triangles * (2.0 / (upper - lower))


class LogMel(nn.Module):
    """PCM `[B, S]` -> log-mel `[B, S // 640, n_mels]`; no parameters, buffers from the config."""

    def __init__(self, cfg: LogMelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.context = cfg.n_fft - SAMPLES_PER_FRAME
        filters = mel_filterbank(cfg.n_fft // 2 + 1, cfg.n_mels, cfg.f_min, cfg.f_max)
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        self.register_buffer("filters", filters, persistent=False)

    def forward(self, pcm: Tensor, state: AudioState | None = None) -> Tensor:
        prev = state.samples if state is not None else None
        if prev is None:
            prev = pcm.new_zeros(pcm.shape[0], self.context)
        audio = torch.cat([prev, pcm], dim=1)  # [B, context + S']
        frames = (audio.shape[1] - self.context) // SAMPLES_PER_FRAME
        if state is not None:
            state.samples = audio[:, frames * SAMPLES_PER_FRAME :].clone()
        if frames == 0:
            return pcm.new_zeros(pcm.shape[0], 0, self.cfg.n_mels)
        windows = audio.unfold(1, self.cfg.n_fft, SAMPLES_PER_FRAME)[:, :frames]  # [B, T, n_fft]
        power = torch.fft.rfft(windows * self.window).abs().pow(2)  # [B, T, n_fft/2 + 1]
        mel = power @ self.filters  # [B, T, n_mels]
        # fixed affine instead of per-clip statistics, which a stream cannot know in advance
        return (torch.log10(mel.clamp_min(self.cfg.log_floor)) + 4.0) / 4.0


class CausalConv1d(nn.Conv1d):
    """Conv over time padded on the left; a state replaces the padding by earlier inputs."""

    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__(channels, channels, kernel_size, dilation=dilation)
        self.time_pad = (kernel_size - 1) * dilation

    def forward(self, x: Tensor, state: AudioState | None = None) -> Tensor:  # [B, C, T]
        prev = state.convs.get(self) if state is not None else None
        if prev is None:
            prev = x.new_zeros(x.shape[0], x.shape[1], self.time_pad)
        x = torch.cat([prev, x], dim=2)  # [B, C, pad + T]
        if state is not None and self.time_pad:
            state.convs[self] = x[:, :, -self.time_pad :].clone()
        return super().forward(x)


class ConvBlock(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.conv = CausalConv1d(channels, kernel_size, dilation)

    def forward(self, x: Tensor, state: AudioState | None = None) -> Tensor:  # [B, T, C]
        h = F.gelu(self.norm(x)).transpose(1, 2)  # [B, C, T]
        return x + self.conv(h, state).transpose(1, 2)


class LogMelAudioEncoder(nn.Module):
    """PCM `[B, S]` at 16 kHz -> features `[B, S // 640, Da]`, causal (no look-ahead)."""

    def __init__(self, config: LogMelConfig) -> None:
        super().__init__()
        self.config = config
        self.dim = config.dim
        self.mel = LogMel(config)
        self.proj_in = nn.Linear(config.n_mels, config.hidden)
        self.blocks = nn.ModuleList(
            ConvBlock(config.hidden, config.kernel_size, d) for d in config.dilations
        )
        self.norm_out = nn.LayerNorm(config.hidden)
        self.proj_out = nn.Linear(config.hidden, config.dim)

    @property
    def receptive_field(self) -> int:
        """Samples of the past (own frame included) that one feature depends on."""
        conv_frames = sum((self.config.kernel_size - 1) * d for d in self.config.dilations)
        return conv_frames * SAMPLES_PER_FRAME + self.config.n_fft

    def forward(self, pcm: Tensor, state: AudioState | None = None) -> Tensor:
        x = self.proj_in(self.mel(pcm, state))  # [B, T, hidden]
        if x.shape[1] == 0:
            return x.new_zeros(x.shape[0], 0, self.dim)
        for block in self.blocks:
            x = block(x, state)
        return self.proj_out(self.norm_out(x))  # [B, T, Da]

    def stream(self) -> AudioFeatureStream:
        return AudioFeatureStream(self)


class AudioFeatureStream:
    """Features of a PCM stream pushed piece by piece, equal to those of the whole clip.

    State: the last `n_fft - 640` samples plus any remainder short of a whole frame, and the
    last `(kernel - 1) * dilation` inputs of each causal conv; fixed size, whatever the stream
    length. Pushes may have any length; a 7,680-sample chunk yields exactly 12 features.
    """

    def __init__(self, encoder: LogMelAudioEncoder) -> None:
        self.encoder = encoder
        self.state = AudioState()

    def reset(self) -> None:
        self.state = AudioState()

    def state_nbytes(self) -> int:
        return self.state.nbytes()

    @torch.no_grad()
    def push(self, pcm: Tensor) -> Tensor:
        """PCM `[B, S]` -> the features `[B, T, Da]` of the frames completed by it."""
        return self.encoder(pcm, self.state)


# ---------------------------------------------------------------------------------------------
# Whisper encoder (local weights only)
# ---------------------------------------------------------------------------------------------


class WhisperAudioEncoder(nn.Module):
    """A Whisper encoder from a local checkpoint, pooled to 25 features a second.

    `weights_path` is a directory holding a Whisper checkpoint (`config.json` and weights) and
    its `preprocessor_config.json`; nothing is downloaded. The encoder is frozen; with `dim`
    the pooled states `[B, T, d_model]` go through a learned linear map to `[B, T, dim]` (its
    weights, `proj`, are the only trainable part), without it `Da = d_model`.
    Audio is encoded in consecutive windows of the checkpoint's length (30 s for OpenAI's),
    the last one zero-padded.
    """

    def __init__(self, weights_path: str | Path, dim: int | None = None) -> None:
        super().__init__()
        try:
            from transformers import WhisperFeatureExtractor, WhisperForAudioClassification
        except ImportError as err:  # pragma: no cover - transformers ships with the package
            raise ImportError("WhisperAudioEncoder needs `pip install transformers`") from err
        path = Path(weights_path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no local Whisper checkpoint at {path} (config.json)")
        self.extractor = WhisperFeatureExtractor.from_pretrained(path, local_files_only=True)
        # the classification head class instantiates only the encoder: a full speech-to-text
        # checkpoint loads without building (or holding) its decoder
        whisper = WhisperForAudioClassification.from_pretrained(path, local_files_only=True)
        self.whisper = whisper.encoder.eval().requires_grad_(False)
        width = whisper.config.d_model
        self.window_samples = self.extractor.n_samples
        self.window_features = self.window_samples // SAMPLES_PER_FRAME
        states = whisper.config.max_source_positions
        if states % self.window_features:
            raise ValueError(f"{states} encoder states a window do not pool to {FPS} per second")
        self.pool = states // self.window_features
        self.proj = nn.Linear(width, dim) if dim is not None else None
        self.dim = dim if dim is not None else width

    def train(self, mode: bool = True) -> WhisperAudioEncoder:
        super().train(mode)
        self.whisper.eval()  # frozen: no dropout, whatever the wrapper's mode
        return self

    def forward(self, pcm: Tensor) -> Tensor:
        """PCM `[B, S]` -> features `[B, S // 640, Da]`."""
        b, s = pcm.shape
        frames = s // SAMPLES_PER_FRAME
        count = max(1, math.ceil(s / self.window_samples))
        padded = F.pad(pcm, (0, count * self.window_samples - s))
        windows = padded.view(b * count, self.window_samples)  # [B*n, window]
        mels = self.extractor(
            [w.float().cpu().numpy() for w in windows],
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
        ).input_features  # [B*n, mels, 2 * states]
        param = next(self.whisper.parameters())
        with torch.no_grad():
            states = self.whisper(mels.to(param.device, param.dtype)).last_hidden_state
        pooled = F.avg_pool1d(states.transpose(1, 2), self.pool).transpose(1, 2)
        feats = pooled.reshape(b, count * self.window_features, -1)[:, :frames]  # [B, T, d_model]
        feats = feats.to(pcm.dtype) if pcm.is_floating_point() else feats
        return self.proj(feats) if self.proj is not None else feats


# ---------------------------------------------------------------------------------------------
# Per-latent windows
# ---------------------------------------------------------------------------------------------


def window_size(overlap: int) -> int:
    return FRAMES_PER_LATENT + 2 * overlap


def _windows(left: Tensor, body: Tensor, right: Tensor) -> Tensor:
    """Windows of `body`'s latents with the given context: `[B, T/4, W, Da]`."""
    x = torch.cat([left, body, right], dim=1)  # [B, T + 2o, Da]
    size = window_size(left.shape[1])
    return x.unfold(1, size, FRAMES_PER_LATENT).permute(0, 1, 3, 2).contiguous()


def _check_frames(features: Tensor) -> None:
    if features.shape[1] % FRAMES_PER_LATENT:
        raise ValueError(
            f"{features.shape[1]} features do not split into latents of {FRAMES_PER_LATENT}"
        )


def group_per_latent(features: Tensor, overlap: int) -> Tensor:
    """Features `[B, T, Da]` -> per-latent windows `[B, T / 4, 4 + 2 * overlap, Da]`.

    Window `f` holds features `4f - overlap .. 4f + 3 + overlap`: the latent's own 4 frames and
    `overlap` on each side; positions outside the clip are zeros.
    """
    _check_frames(features)
    pad = features.new_zeros(features.shape[0], overlap, features.shape[2])
    return _windows(pad, features, pad)


class GroupedAudio(NamedTuple):
    """One `AudioGroupStream.push`.

    current: `[B, F, W, Da]`, windows of the latents just pushed; the trailing overlap of the
        last ones is zeros, exactly as if the clip ended here (provisional).
    previous: `[B, F', W, Da]`, the previous push's windows again, now final: their trailing
        overlap holds this push's first features. None on the first push.
    """

    current: Tensor
    previous: Tensor | None


class AudioGroupStream:
    """`group_per_latent` chunk by chunk.

    A latent's window reaches `overlap` features into the next chunk, whose audio may not have
    arrived. Rather than hold a chunk back (adding latency), each push returns its windows at
    once with the unknown trailing overlap zero-filled, the same padding a clip's last latent
    gets, and returns the previous chunk's windows completed. A renderer conditions a chunk
    entering its denoising stream on `current` and switches to `previous` from the next
    forward on; concatenating every `previous` and the last `current` gives the whole-clip
    windows. State: the previous push and the `overlap` features before it.
    """

    def __init__(self, overlap: int) -> None:
        self.overlap = overlap
        self._prev: Tensor | None = None  # [B, T', Da]
        self._prev_left: Tensor | None = None  # [B, overlap, Da]

    def reset(self) -> None:
        self._prev = self._prev_left = None

    def push(self, features: Tensor) -> GroupedAudio:
        """Features `[B, T, Da]` (T a multiple of 4, at least `overlap`) -> `GroupedAudio`."""
        _check_frames(features)
        o = self.overlap
        if features.shape[1] < o:
            raise ValueError(f"push at least overlap={o} features to complete the previous ones")
        zeros = features.new_zeros(features.shape[0], o, features.shape[2])
        if self._prev is None:
            left, previous = zeros, None
        else:
            history = torch.cat([self._prev_left, self._prev], dim=1)
            left = history[:, history.shape[1] - o :]
            previous = _windows(self._prev_left, self._prev, features[:, :o])
        current = _windows(left, features, zeros)
        self._prev, self._prev_left = features, left
        return GroupedAudio(current, previous)
