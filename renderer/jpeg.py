"""JPEG encoders for a chunk of frames: Pillow on one thread or several, or nvJPEG on the GPU.

Contract: `encoder.encode(frames, quality)` takes frames `[T, H, W, 3]` uint8 (a NumPy array or
a tensor on any device) and returns one JPEG per frame, in order. Pillow releases the GIL while
it compresses, so `PilJpegEncoder(threads=n)` really runs n frames at once; `NvJpegEncoder`
(torchvision's `encode_jpeg` on CUDA tensors) compresses the batch on the GPU and copies back
only the compressed bytes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from flowact.renderer.media import encode_jpeg


class JpegEncoder(Protocol):
    def encode(self, frames: np.ndarray | Tensor, quality: int) -> list[bytes]: ...


class PilJpegEncoder:
    """Pillow (libjpeg-turbo), frames spread over `threads` worker threads."""

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
    """nvJPEG through torchvision; frames go to `device` first if they are not there."""

    def __init__(self, device: str | torch.device = "cuda") -> None:
        try:
            from torchvision.io import encode_jpeg as tv_encode_jpeg
        except ImportError as err:
            raise RuntimeError("GPU JPEG needs torchvision (pip install torchvision)") from err
        self._encode = tv_encode_jpeg
        self.device = torch.device(device)

    def encode(self, frames: np.ndarray | Tensor, quality: int) -> list[bytes]:
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(frames)
        chw = frames.to(self.device).permute(0, 3, 1, 2).contiguous()  # [T, 3, H, W]
        encoded = self._encode(list(chw), quality=quality)
        return [bytes(e.cpu().numpy()) for e in encoded]


def build_jpeg_encoder(name: str, device: str | torch.device = "cuda") -> JpegEncoder:
    """`pil`, `pil-<n>` (n threads) or `nvjpeg`."""
    if name == "pil":
        return PilJpegEncoder()
    if name.startswith("pil-"):
        return PilJpegEncoder(int(name.removeprefix("pil-")))
    if name == "nvjpeg":
        return NvJpegEncoder(device)
    raise ValueError(f"unknown JPEG encoder {name!r}; use pil, pil-<threads> or nvjpeg")
