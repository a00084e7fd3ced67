"""FP8 linear layers for inference: e4m3 weights and activations with row-wise scales.

A weight `[N, K]` is quantised once, one scale per output channel; an activation `[M, K]` is
quantised at every call, one scale per token, so an outlier token costs only its own row's
precision. `torch._scaled_mm` multiplies the two in FP8 on the tensor cores (twice the bf16 rate
on Hopper) and writes `(a_fp8 @ w_fp8.T) * scale_a * scale_b + bias` in bf16.

Only the large token-wise linears are worth it (`FP8_TARGETS`); embedders, modulation and the
text/audio key-value projections see a few hundred rows and stay in bf16. `relative_error`
is the figure the benchmark reports: `|v_fp8 - v_bf16| / |v_bf16|` of the predicted velocity.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
# name suffixes of the DiT linears that see every token of the buffer
FP8_TARGETS: tuple[str, ...] = (
    "self_attn.qkv",
    "self_attn.out",
    "cross_attn.q",
    "cross_attn.out",
    "ffn.up",
    "ffn.down",
)


@functools.cache
def fp8_supported(device: str = "cuda") -> bool:
    """Whether this torch runs row-wise scaled FP8 matmuls on `device` (CUDA needs compute
    capability 8.9+; CPU kernels arrived in later torch releases)."""
    try:
        a = torch.ones(16, 16, device=device).to(FP8)
        scale = torch.ones(16, 1, device=device)
        torch._scaled_mm(a, a.t(), scale_a=scale, scale_b=scale.t(), out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError):
        return False
    return True


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """`[M, K]` -> (`[M, K]` e4m3, `[M, 1]` float32 scales) with `x ~= q * scale` per row."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)  # [M, 1]
    inverse = (FP8_MAX / amax).to(x.dtype)
    # the cast does not saturate (out of range becomes NaN), and bf16 rounding can pass 448
    q = (x * inverse).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, amax / FP8_MAX


class Float8Linear(nn.Module):
    """Drop-in for an `nn.Linear` at inference: `[..., K]` -> `[..., N]` in the linear's dtype."""

    def __init__(self, linear: nn.Linear, fast_accum: bool = False) -> None:
        super().__init__()
        n, k = linear.weight.shape
        if n % 16 or k % 16:
            raise ValueError(f"FP8 matmuls need sizes divisible by 16, got {n}x{k}")
        self.in_features, self.out_features = k, n
        self.out_dtype = linear.weight.dtype
        self.fast_accum = fast_accum
        weight, scale = quantize_rows(linear.weight.detach())
        self.register_buffer("weight", weight)  # [N, K] e4m3
        self.register_buffer("weight_scale", scale.reshape(1, n).contiguous())  # [1, N]
        bias = linear.bias.detach().to(self.out_dtype) if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        q, scale = quantize_rows(x.reshape(-1, self.in_features))  # [M, K], [M, 1]
        out = torch._scaled_mm(
            q,
            self.weight.t(),  # column-major [K, N], as the kernel wants its second operand
            scale_a=scale,
            scale_b=self.weight_scale,
            bias=self.bias,
            out_dtype=self.out_dtype,
            use_fast_accum=self.fast_accum,
        )
        return out.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, fast_accum={self.fast_accum}"


def convert_to_fp8(
    model: nn.Module, targets: Sequence[str] = FP8_TARGETS, fast_accum: bool = False
) -> list[str]:
    """Replace, in place, every `nn.Linear` whose name ends with one of `targets`; returns the
    names replaced. Convert after casting the model to its inference dtype."""
    chosen = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(name.endswith(t) for t in targets)
    ]
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, Float8Linear(getattr(parent, child), fast_accum))
    return chosen


def relative_error(value: Tensor, reference: Tensor) -> float:
    """`|value - reference| / |reference|` (Frobenius norms, float32)."""
    value, reference = value.detach().float(), reference.detach().float()
    return float((value - reference).norm() / reference.norm().clamp(min=1e-30))
