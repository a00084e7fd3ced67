import math

import pytest
import torch
import torch.nn.functional as F

from flowact.renderer.audio import (
    PRESETS,
    AudioGroupStream,
    LogMel,
    LogMelAudioEncoder,
    WhisperAudioEncoder,
    group_per_latent,
    mel_filterbank,
)
from flowact.schemas.timebase import (
    FRAMES_PER_CHUNK,
    FRAMES_PER_LATENT,
    LATENTS_PER_CHUNK,
    SAMPLE_RATE,
    SAMPLES_PER_CHUNK,
    SAMPLES_PER_FRAME,
)


@pytest.fixture(scope="module")
def encoder() -> LogMelAudioEncoder:
    torch.manual_seed(0)
    return LogMelAudioEncoder(PRESETS["tiny"]).eval()


def speechlike(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / SAMPLE_RATE
    tone = torch.sin(2 * math.pi * 220 * t) * (0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t))
    return 0.3 * tone + 0.05 * torch.randn(batch, samples, generator=g)


def test_features_are_25_per_second(encoder: LogMelAudioEncoder) -> None:
    pcm = speechlike(2, 2 * SAMPLES_PER_CHUNK + 100)
    with torch.no_grad():
        feats = encoder(pcm)
    assert feats.shape == (2, 2 * FRAMES_PER_CHUNK, encoder.dim)
    assert torch.isfinite(feats).all()
    with torch.no_grad():
        assert encoder(pcm[:, : SAMPLES_PER_FRAME - 1]).shape == (2, 0, encoder.dim)


def test_log_mel_puts_a_tone_in_the_right_band() -> None:
    config = PRESETS["tiny"]
    mel = LogMel(config)
    t = torch.arange(SAMPLE_RATE) / SAMPLE_RATE
    spec = mel(torch.sin(2 * math.pi * 1000.0 * t)[None])  # [1, 25, n_mels]
    assert spec.shape == (1, SAMPLE_RATE // SAMPLES_PER_FRAME, config.n_mels)
    filters = mel_filterbank(config.n_fft // 2 + 1, config.n_mels, config.f_min, config.f_max)
    bin_1k = round(1000.0 / (SAMPLE_RATE / config.n_fft))
    assert spec[0, 5:].argmax(dim=-1).eq(filters[bin_1k].argmax()).all()


def test_features_are_causal(encoder: LogMelAudioEncoder) -> None:
    pcm = speechlike(1, SAMPLES_PER_CHUNK)
    cut = 5 * SAMPLES_PER_FRAME
    changed = pcm.clone()
    changed[:, cut:] = 0.0
    with torch.no_grad():
        a, b = encoder(pcm), encoder(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5], atol=0, rtol=0)
    assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-3


@pytest.mark.parametrize("sizes", [[SAMPLES_PER_CHUNK] * 4, [1000, 7000, 333, 12000, 10387]])
def test_stream_equals_whole_clip(encoder: LogMelAudioEncoder, sizes: list[int]) -> None:
    pcm = speechlike(2, sum(sizes), seed=1)
    with torch.no_grad():
        whole = encoder(pcm)
    stream = encoder.stream()
    pieces, start = [], 0
    for size in sizes:
        pieces.append(stream.push(pcm[:, start : start + size]))
        start += size
    if sizes[0] == SAMPLES_PER_CHUNK:
        assert all(p.shape[1] == FRAMES_PER_CHUNK for p in pieces)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, atol=1e-5, rtol=0)


def test_stream_state_is_bounded(encoder: LogMelAudioEncoder) -> None:
    stream = encoder.stream()
    pcm = speechlike(1, 8 * SAMPLES_PER_CHUNK)
    sizes = []
    for k in range(8):
        stream.push(pcm[:, k * SAMPLES_PER_CHUNK : (k + 1) * SAMPLES_PER_CHUNK])
        sizes.append(stream.state_nbytes())
    assert sizes[0] > 0 and len(set(sizes)) == 1
    stream.reset()
    assert stream.state_nbytes() == 0


def test_group_per_latent_windows() -> None:
    overlap, latents, dim = 2, 3, 5
    feats = (
        torch.arange(1, 1 + latents * FRAMES_PER_LATENT).float()[None, :, None].repeat(2, 1, dim)
    )
    groups = group_per_latent(feats, overlap)
    assert groups.shape == (2, latents, FRAMES_PER_LATENT + 2 * overlap, dim)
    for f in range(latents):
        for j in range(groups.shape[2]):
            t = FRAMES_PER_LATENT * f - overlap + j
            expected = float(t + 1) if 0 <= t < feats.shape[1] else 0.0
            assert groups[0, f, j, 0].item() == expected
    with pytest.raises(ValueError, match="latents of"):
        group_per_latent(feats[:, :-1], overlap)


@pytest.mark.parametrize("overlap", [0, 2, 4])
def test_group_stream_matches_whole_clip(overlap: int) -> None:
    chunks = 4
    feats = torch.randn(2, chunks * FRAMES_PER_CHUNK, 3)
    whole = group_per_latent(feats, overlap)
    stream = AudioGroupStream(overlap)
    finals = []
    for k in range(chunks):
        part = feats[:, k * FRAMES_PER_CHUNK : (k + 1) * FRAMES_PER_CHUNK]
        out = stream.push(part)
        assert out.current.shape == (2, LATENTS_PER_CHUNK, FRAMES_PER_LATENT + 2 * overlap, 3)
        # provisional windows: as if the clip ended with this chunk
        seen = group_per_latent(feats[:, : (k + 1) * FRAMES_PER_CHUNK], overlap)
        torch.testing.assert_close(out.current, seen[:, k * LATENTS_PER_CHUNK :])
        if k == 0:
            assert out.previous is None
        else:
            finals.append(out.previous)
    finals.append(out.current)  # the clip ends: the last provisional windows are final
    torch.testing.assert_close(torch.cat(finals, dim=1), whole)


# ---------------------------------------------------------------------------------------------
# Whisper, from a small random checkpoint written to disk (nothing is downloaded)
# ---------------------------------------------------------------------------------------------

WINDOW_SECONDS = 1


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory):
    transformers = pytest.importorskip("transformers")
    config = transformers.WhisperConfig(
        vocab_size=64,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        max_source_positions=50 * WINDOW_SECONDS,  # 50 encoder states a second
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(config).eval()
    path = tmp_path_factory.mktemp("whisper")
    model.save_pretrained(path)
    extractor = transformers.WhisperFeatureExtractor(feature_size=80, chunk_length=WINDOW_SECONDS)
    extractor.save_pretrained(path)
    return path, model, extractor


def test_whisper_encoder_features(whisper_dir) -> None:
    path, model, extractor = whisper_dir
    pcm = speechlike(2, int(1.5 * SAMPLE_RATE))  # two windows, the second zero-padded
    encoder = WhisperAudioEncoder(path, dim=16)
    feats = encoder(pcm)
    assert feats.shape == (2, pcm.shape[1] // SAMPLES_PER_FRAME, 16)
    assert not any(p.requires_grad for p in encoder.whisper.parameters())
    assert all(p.requires_grad for p in encoder.proj.parameters())

    raw = WhisperAudioEncoder(path)  # no projection: Da is Whisper's width
    got = raw(pcm)
    assert raw.dim == 32 and got.shape[-1] == 32
    # the saved checkpoint's own encoder on the first window, pooled 50/s -> 25/s
    mels = extractor([pcm[0, :SAMPLE_RATE].numpy()], sampling_rate=SAMPLE_RATE, return_tensors="pt")
    with torch.no_grad():
        states = model.model.encoder(mels.input_features).last_hidden_state  # [1, 50, 32]
    expected = F.avg_pool1d(states.transpose(1, 2), 2).transpose(1, 2)[0]
    torch.testing.assert_close(got[0, : expected.shape[0]], expected, atol=1e-5, rtol=1e-4)


def test_whisper_needs_a_local_checkpoint(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no local Whisper checkpoint"):
        WhisperAudioEncoder(tmp_path / "missing")
