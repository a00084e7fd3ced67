import pytest
import torch

from flowact.renderer.attention import (
    attention_reference,
    available_backends,
    fake_causal_attention,
    fake_causal_mask,
    resolve_backend,
)

# eager flex on CPU is the unfused reference path; its warning is expected here
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

CPU_BACKENDS = available_backends("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _qkv(seed: int, length: int, batch: int = 2, heads: int = 2, head_dim: int = 16, **to):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, heads, length, head_dim)
    return [torch.randn(shape, generator=gen).to(**to) for _ in range(3)]


def test_mask_blocks():
    mask = fake_causal_mask(n_context=2, n_latents=5, tokens_per_latent=3)
    boundary = 6
    assert mask.shape == (15, 15)
    assert mask[:boundary, :boundary].all()  # context sees context
    assert not mask[:boundary, boundary:].any()  # context never sees the stream
    assert mask[boundary:].all()  # stream sees everything


def test_mask_edge_cases():
    assert fake_causal_mask(0, 3, 2).all()  # no context: plain full attention
    assert fake_causal_mask(3, 3, 2).all()  # all context: full attention among context


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("n_context", [0, 1, 5, 14])
def test_backends_match_reference(backend, n_context):
    tokens, latents = 4, 14
    q, k, v = _qkv(n_context, latents * tokens)
    mask = fake_causal_mask(n_context, latents, tokens)
    expected = attention_reference(q, k, v, mask)
    out = fake_causal_attention(q, k, v, n_context * tokens, backend=backend)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_context_rows_ignore_stream(backend):
    tokens, latents, n_context = 4, 14, 5
    boundary = n_context * tokens
    q, k, v = _qkv(7, latents * tokens)
    out = fake_causal_attention(q, k, v, boundary, backend=backend)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, boundary:] += 3.0
    v2[:, :, boundary:] -= 2.0
    out2 = fake_causal_attention(q, k2, v2, boundary, backend=backend)
    assert torch.allclose(out[:, :, :boundary], out2[:, :, :boundary], atol=1e-6)
    assert not torch.allclose(out[:, :, boundary:], out2[:, :, boundary:], atol=1e-3)


def test_auto_is_split_on_cpu():
    q = torch.zeros(1, 1, 4, 8)
    assert resolve_backend("auto", q) == "split"
    with pytest.raises(ValueError):
        resolve_backend("nope", q)


def test_flash_refused_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present; covered by the CUDA test")
    with pytest.raises(RuntimeError, match="flash"):
        fake_causal_attention(*_qkv(0, 8), 4, backend="flash")


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["flex", "split", "sdpa", "flash"])
def test_cuda_backends_match_reference(backend):
    if backend not in available_backends("cuda"):
        pytest.skip(f"{backend} not installed")
    tokens, latents, n_context = 64, 14, 5
    q, k, v = _qkv(3, latents * tokens, head_dim=64, device="cuda", dtype=torch.bfloat16)
    mask = fake_causal_mask(n_context, latents, tokens, device="cuda")
    expected = attention_reference(q, k, v, mask)
    out = fake_causal_attention(q, k, v, n_context * tokens, backend=backend)
    torch.testing.assert_close(out.float(), expected.float(), atol=2e-2, rtol=2e-2)
