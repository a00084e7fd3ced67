"""JPEG encoders for a chunk of frames: Pillow on one thread or several, or nvJPEG on the GPU.

Contract: `encoder.encode(frames, quality)` takes frames `[T, H, W, 3]` uint8 (a NumPy array or
a tensor on any device) and returns one JPEG per frame, in order; `encoder.on_device` says
whether it wants the frames left on the GPU. Pillow releases the GIL while it compresses, so
`PilJpegEncoder(threads=n)` really runs n frames at once; `NvJpegEncoder` (torchvision's
`encode_jpeg` on CUDA tensors) compresses the batch on the GPU, on the caller's current stream,
and copies back only the compressed bytes.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import structlog
import torch
from torch import Tensor

from flowact.renderer.media import encode_jpeg

log = structlog.get_logger(__name__)


class JpegEncoder(Protocol):
    on_device: bool

    def encode(self, frames: np.ndarray | Tensor, quality: int) -> list[bytes]: ...


class PilJpegEncoder:
    """Pillow (libjpeg-turbo), frames spread over `threads` worker threads."""

    on_device = False

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, "jpeg") if threads > 1 else None

    def encode(self, frames: np.ndarray | Tensor, quality: int) -> list[bytes]:
        if isinstance(frames, Tensor):
            frames = frames.cpu().numpy()
        if self._pool is None:
            return encode_jpeg(frames, quality)
        pieces = self._pool.map(lambda f: encode_jpeg(f[None], quality)[0], frames)
        return list(pieces)


class NvJpegEncoder:
    """nvJPEG through torchvision; frames go to `device` first if they are not there.

    Calls are serialised: sessions share one encoder, and 12 frames take a few milliseconds.
    """

    on_device = True

    def __init__(self, device: str | torch.device = "cuda") -> None:
        try:
            from torchvision.io import encode_jpeg as tv_encode_jpeg
        except ImportError as err:
            raise RuntimeError("GPU JPEG needs torchvision (pip install torchvision)") from err
        self._encode = tv_encode_jpeg
        self.device = torch.device(device)
        self._lock = threading.Lock()

    def encode(self, frames: np.ndarray | Tensor, quality: int) -> list[bytes]:
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(frames)
        chw = frames.to(self.device).permute(0, 3, 1, 2).contiguous()  # [T, 3, H, W]
        with self._lock:
            encoded = self._encode(list(chw), quality=quality)
            return [bytes(e.cpu().numpy()) for e in encoded]


def check_jpeg_name(name: str) -> None:
    """Raise ValueError unless `name` names an encoder: pil, pil-<n>, nvjpeg or auto."""
    if name in ("pil", "nvjpeg", "auto"):
        return
    threads = name.removeprefix("pil-")
    if name.startswith("pil-") and threads.isdigit() and int(threads) > 0:
        return
    raise ValueError(f"unknown JPEG encoder {name!r}; use pil, pil-<threads>, nvjpeg or auto")


def build_jpeg_encoder(name: str, device: str | torch.device = "cuda") -> JpegEncoder:
    """`pil`, `pil-<n>` (n threads), `nvjpeg`, or `auto`: nvJPEG on a CUDA device where
    torchvision is installed, else Pillow."""
    check_jpeg_name(name)
    if name == "auto":
        if torch.device(device).type != "cuda":
            return PilJpegEncoder()
        try:
            return NvJpegEncoder(device)
        except RuntimeError as err:
            log.warning("JPEG on the CPU", reason=str(err))
            return PilJpegEncoder()
    if name == "pil":
        return PilJpegEncoder()
    if name.startswith("pil-"):
        return PilJpegEncoder(int(name.removeprefix("pil-")))
    return NvJpegEncoder(device)
