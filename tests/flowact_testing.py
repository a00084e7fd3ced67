"""Helpers shared by tests (tests/ is on sys.path through its conftest)."""

from __future__ import annotations

import asyncio

import numpy as np

from flowact.schemas import codec
from flowact.schemas import timebase as tb
from flowact.schemas.messages import AudioSegment
from flowact.schemas.pcm import float_to_s16
from flowact.schemas.streams import stream_name


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * tb.SAMPLE_RATE)
    envelope = 0.3 * (1 + np.sin(2 * np.pi * 3 * np.arange(n) / tb.SAMPLE_RATE))
    return (rng.standard_normal(n) * 0.1 * envelope).astype(np.float32)


def segments(utterance: str, samples: np.ndarray, piece: int = 3_200):
    pieces = [samples[i : i + piece] for i in range(0, len(samples), piece)]
    for seq, p in enumerate(pieces):
        yield AudioSegment(
            utterance=utterance,
            seq=seq,
            pcm=float_to_s16(p),
            start_sample=0 if seq == 0 else None,
            end=seq == len(pieces) - 1,
        )


async def collect(bus, session: str, kind: str, until, timeout: float = 60.0) -> list:
    """Read a stream from the start until `until(messages)` holds."""
    stream, after, out = stream_name(session, kind), "0", []
    async with asyncio.timeout(timeout):
        while not until(out):
            for entry in await bus.read(stream, after, block_ms=100):
                after = entry.id
                out.append(codec.decode(entry.fields, stream))
    return out
