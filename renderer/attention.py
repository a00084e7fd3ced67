"""Fake-causal attention over the stream buffer.

The buffer is `n_context` clean latents (reference + memory) followed by the denoising stream,
each latent `tokens_per_latent` tokens, frame-major. Stream queries see every key; context queries
see only context keys, so what the clean latents compute never depends on the noisy stream
(paper 2.2). Because the mask is two rectangles, every backend here can exploit it:

- `split`: two dense calls (context over context, stream over everything); SDPA underneath,
  so it takes the fused flash/cuDNN kernels. The default (`auto`) unless flash-attn is there:
  on an H100 the paper-480p forward (bf16, whole model compiled) took 245 ms with it against
  301 ms with compiled FlexAttention.
- `flash`: the same split through flash-attn (CUDA, half precision) where it is installed.
- `flex`: FlexAttention with a cached BlockMask; compiled on CUDA (and traced into an outer
  torch.compile), eager elsewhere (slow there, kept for testing against the other paths).
- `sdpa`: SDPA with the explicit boolean mask; simple, slow for long buffers.

All take and return `[B, H, L, Dh]`. `attention_reference` is the naive masked softmax that the
tests hold the backends to.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("split", "flash", "flex", "sdpa")

AttentionFn = Callable[[Tensor, Tensor, Tensor, int], Tensor]  # (q, k, v, boundary)
DenseFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def fake_causal_mask(
    n_context: int, n_latents: int, tokens_per_latent: int, device: torch.device | str | None = None
) -> Tensor:
    """Boolean mask `[L, L]`, True where query row may attend to key column."""
    length = n_latents * tokens_per_latent
    boundary = n_context * tokens_per_latent
    index = torch.arange(length, device=device)
    return (index[:, None] >= boundary) | (index[None, :] < boundary)


def attention_reference(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Naive masked softmax attention in float32; `mask` `[L, L]` True = attend."""
    scores = q.float() @ k.float().transpose(-2, -1) / q.shape[-1] ** 0.5  # [B, H, L, L]
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


def _split(q: Tensor, k: Tensor, v: Tensor, boundary: int, dense: DenseFn) -> Tensor:
    """Context queries over context keys, stream queries over all keys; `[B, H, L, Dh]`."""
    if boundary == 0 or boundary == q.shape[2]:
        return dense(q, k, v)
    context = dense(q[:, :, :boundary], k[:, :, :boundary], v[:, :, :boundary])
    stream = dense(q[:, :, boundary:], k, v)
    return torch.cat([context, stream], dim=2)


def _sdpa_dense(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def _flash_dense(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from flash_attn import flash_attn_func

    # flash-attn wants [B, L, H, Dh] in fp16/bf16
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def split_attention(q: Tensor, k: Tensor, v: Tensor, boundary: int) -> Tensor:
    return _split(q, k, v, boundary, _sdpa_dense)


def flash_attention(q: Tensor, k: Tensor, v: Tensor, boundary: int) -> Tensor:
    return _split(q, k, v, boundary, _flash_dense)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, boundary: int) -> Tensor:
    index = torch.arange(q.shape[2], device=q.device)
    mask = (index[:, None] >= boundary) | (index[None, :] < boundary)  # [L, L]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _make_block_mask(boundary: int, length: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= boundary) | (kv_idx < boundary)

    return create_block_mask(mask_mod, None, None, length, length, device=device)


# the buffer's shape is fixed, so one mask per (boundary, length, device) is built once
_cached_block_mask = functools.lru_cache(maxsize=32)(_make_block_mask)


@functools.cache
def _flex_kernel(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if compiled else flex_attention


def flex_attention(q: Tensor, k: Tensor, v: Tensor, boundary: int) -> Tensor:
    if torch.compiler.is_compiling():
        # inside the caller's torch.compile: trace mask and kernel into its graph rather than
        # calling a cache and a nested compiled function, which would break the graph
        from torch.nn.attention.flex_attention import flex_attention as flex

        return flex(q, k, v, block_mask=_make_block_mask(boundary, q.shape[2], q.device))
    block_mask = _cached_block_mask(boundary, q.shape[2], q.device)
    return _flex_kernel(q.is_cuda)(q, k, v, block_mask=block_mask)


_BACKEND_FNS: dict[str, AttentionFn] = {
    "split": split_attention,
    "flash": flash_attention,
    "flex": flex_attention,
    "sdpa": sdpa_attention,
}


def flash_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def available_backends(device: torch.device | str) -> list[str]:
    """Backends that run on `device` in this environment."""
    cuda = torch.device(device).type == "cuda"
    names = ["split", "sdpa", "flex"]
    if cuda and flash_available():
        names.append("flash")
    return names


def resolve_backend(name: str, q: Tensor) -> str:
    """`auto` picks flash on CUDA in half precision where flash-attn is installed, else split."""
    if name == "auto":
        half = q.dtype in (torch.float16, torch.bfloat16)
        return "flash" if q.is_cuda and half and flash_available() else "split"
    if name not in _BACKEND_FNS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKENDS} or auto")
    if name == "flash" and not (q.is_cuda and flash_available()):
        raise RuntimeError("the flash backend needs CUDA and flash-attn (pip install flowact[gpu])")
    return name


def fake_causal_attention(
    q: Tensor, k: Tensor, v: Tensor, n_context_tokens: int, backend: str = "auto"
) -> Tensor:
    """Fake-causal attention; q, k, v `[B, H, L, Dh]`, first `n_context_tokens` are context."""
    return _BACKEND_FNS[resolve_backend(backend, q)](q, k, v, n_context_tokens)
