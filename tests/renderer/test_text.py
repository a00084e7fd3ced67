import pytest
import torch

from flowact.renderer.text import TEXT_DIM, HashTextEncoder, MiniLMTextEncoder

WAVE = "waves with the right hand"
WAVE_PARAPHRASE = "raises the right hand and waves hello"
UNRELATED = "nods slowly while listening"


def cosine(x: torch.Tensor) -> torch.Tensor:
    return x @ x.T  # rows are unit-norm


def test_hash_encoder_shape_norm_and_determinism() -> None:
    texts = [WAVE, "waves the right hand", UNRELATED, ""]
    a = HashTextEncoder().encode(texts)
    b = HashTextEncoder().encode(texts)  # a fresh instance: no shared cache
    assert a.shape == (4, TEXT_DIM) and a.dtype == torch.float32
    torch.testing.assert_close(a.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    sim = cosine(a)
    assert sim[0, 1] > 0.5 > sim[0, 2]
    other_seed = HashTextEncoder(seed=1).encode([WAVE])
    assert (other_seed[0] - a[0]).abs().max() > 0.01


def test_cache_is_lru_and_batches_misses() -> None:
    enc = HashTextEncoder(cache_size=2, batch_size=1)
    first = enc.encode(["a", "b", "a"])
    assert (enc.misses, enc.hits, enc.cache_len()) == (2, 0, 2)
    torch.testing.assert_close(first[0], first[2])
    enc.encode(["a"])  # "a" becomes most recent, so "b" is evicted next
    enc.encode(["c"])
    assert (enc.misses, enc.hits, enc.cache_len()) == (3, 1, 2)
    enc.encode(["a"])
    assert enc.hits == 2
    enc.encode(["b"])
    assert enc.misses == 4
    assert enc.encode([]).shape == (0, TEXT_DIM)
    with pytest.raises(TypeError):
        enc.encode("a single string")


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        return MiniLMTextEncoder(batch_size=2)


def test_minilm_paraphrases_are_closer(minilm: MiniLMTextEncoder) -> None:
    emb = minilm.encode([WAVE, WAVE_PARAPHRASE, UNRELATED, "ok"])
    assert emb.shape == (4, TEXT_DIM)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    sim = cosine(emb)
    assert sim[0, 1] > sim[0, 2] + 0.2
    assert sim[0, 1] > sim[1, 2] + 0.2
    # cached rows, and rows embedded alone, equal the batched (padded) ones
    hits = minilm.hits
    again = minilm.encode([UNRELATED, WAVE])
    assert minilm.hits == hits + 2
    torch.testing.assert_close(again, emb[[2, 0]], atol=0, rtol=0)
    torch.testing.assert_close(minilm._embed([WAVE_PARAPHRASE])[0], emb[1], atol=1e-5, rtol=0)
