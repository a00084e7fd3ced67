import numpy as np
import pytest

from flowact.schemas import pcm


def test_s16_round_trip() -> None:
    x = np.array([0.0, 0.5, -0.5, -1.0, 0.999], dtype=np.float32)
    assert np.allclose(pcm.s16_to_float(pcm.float_to_s16(x)), x, atol=1 / 32768)


@pytest.mark.parametrize("rate", [16_000, 22_050, 24_000, 48_000, 8_000])
def test_resample_keeps_a_tone_and_pieces_join(rate: int) -> None:
    seconds = 0.5
    t = np.arange(int(rate * seconds)) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    whole = pcm.resample(tone, rate)
    assert len(whole) == 8_000
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(8_000) / 16_000)
    inner = slice(64, -64)  # the kernel sees zeros past the edges
    assert np.abs(whole[inner] - expected[inner]).max() < 0.02
    # Cut at odd places, resampled piece by piece on the absolute clock: same length, no gaps.
    cuts = [0, 1_001, 2_222, 7_000, len(tone)]
    stream = pcm.StreamResampler(rate)
    pieces = [stream.push(tone[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)] + [
        stream.flush()
    ]
    joined = np.concatenate(pieces)
    assert len(joined) == len(whole) and stream.produced == pcm.to_clock(len(tone), rate)
    assert np.allclose(joined, whole, atol=1e-5)


def test_downsampling_removes_what_16k_cannot_hold() -> None:
    rate = 48_000
    t = np.arange(rate) / rate
    high = np.sin(2 * np.pi * 12_000 * t).astype(np.float32)  # above 8 kHz Nyquist
    out = pcm.resample(high, rate)
    assert np.sqrt(np.mean(out[100:-100] ** 2)) < 0.1
