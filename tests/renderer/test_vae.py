import dataclasses
import json

import pytest
import torch

from flowact.renderer.vae import (
    PRESETS,
    CausalVideoVAE,
    VAEConfig,
    build_vae,
    frames_for_latents,
    kl_divergence,
    latents_for_frames,
    param_count,
    temporal_reach,
)
from flowact.schemas.timebase import FRAMES_PER_CHUNK, FRAMES_PER_LATENT, LATENTS_PER_CHUNK

SIZE = 32  # frame side for the tiny configs


def tiny_vae(**overrides) -> CausalVideoVAE:
    torch.manual_seed(0)
    config = dataclasses.replace(PRESETS["tiny"], **overrides)
    return CausalVideoVAE(config).eval()


def random_latents(vae: CausalVideoVAE, batch: int, count: int) -> torch.Tensor:
    side = SIZE // vae.config.spatial_factor
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, count, vae.config.latent_channels, side, side, generator=g)


@pytest.fixture(scope="module")
def vae() -> CausalVideoVAE:
    return tiny_vae()


def test_shapes_round_trip(vae: CausalVideoVAE) -> None:
    frames = torch.rand(2, 1 + 2 * FRAMES_PER_LATENT, 3, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(frames)
        image_latent = vae.encode(frames[:, :1])
        recon = vae.decode(latents)
    side = SIZE // 8
    assert latents.shape == (2, 3, vae.config.latent_channels, side, side)
    assert image_latent.shape == (2, 1, vae.config.latent_channels, side, side)
    assert recon.shape == frames.shape
    assert recon.abs().max() <= 1.0
    # the reference image is encoded alone: its latent does not see later frames
    torch.testing.assert_close(image_latent[:, 0], latents[:, 0], atol=1e-5, rtol=0)


def test_frame_counts() -> None:
    assert latents_for_frames(1) == 1
    assert latents_for_frames(1 + 4 * FRAMES_PER_LATENT) == 5
    assert frames_for_latents(1 + LATENTS_PER_CHUNK) == 1 + FRAMES_PER_CHUNK
    with pytest.raises(ValueError, match="1 \\+ 4n"):
        latents_for_frames(FRAMES_PER_LATENT)


def test_encode_rejects_bad_clips(vae: CausalVideoVAE) -> None:
    with pytest.raises(ValueError, match="frames"):
        vae.encode(torch.zeros(1, 4, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="multiple of 8"):
        vae.encode(torch.zeros(1, 1, 3, SIZE + 4, SIZE))


@pytest.mark.parametrize("kernels", [(1, 3, 3, 3), (3, 3, 3, 3)])
def test_stream_decode_equals_whole_clip(kernels: tuple[int, ...]) -> None:
    vae = tiny_vae(temporal_kernels=kernels)
    chunks = 4
    latents = random_latents(vae, 2, 1 + chunks * LATENTS_PER_CHUNK)
    with torch.no_grad():
        whole = vae.decode(latents)
    stream = vae.decode_stream()
    pieces = [stream.push(latents[:, :1])]
    assert pieces[0].shape[1] == 1
    for k in range(chunks):
        start = 1 + k * LATENTS_PER_CHUNK
        piece = stream.push(latents[:, start : start + LATENTS_PER_CHUNK])
        assert piece.shape[1] == FRAMES_PER_CHUNK
        pieces.append(piece)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, atol=1e-5, rtol=0)
    assert stream.latents_seen == latents.shape[1]


def test_compiled_channels_last_decoder_streams_the_same_frames_in_two_graphs() -> None:
    """`to_channels_last` + `Decoder.compile_body` (the GPU path) keep the numbers, and a stream
    compiles once for its first call and once for its chunks, not once per position."""
    vae = tiny_vae()
    eager = tiny_vae()
    eager.load_state_dict(vae.state_dict())
    graphs = []

    def counting_backend(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(graph)
        return graph.forward  # run the captured graph as it is: only the capture is counted

    vae.to_channels_last()
    assert vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last_3d)
    vae.decoder.compile_body(backend=counting_backend)
    latents = random_latents(vae, 1, 1 + 3 * LATENTS_PER_CHUNK)
    for _ in range(2):  # two sessions' streams
        streams = vae.decode_stream(), eager.decode_stream()
        for start, stop in [(0, 1), (1, 4), (4, 7), (7, 10)]:
            got, want = (s.push(latents[:, start:stop]) for s in streams)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert len(graphs) == 2


def test_stream_decode_any_split(vae: CausalVideoVAE) -> None:
    latents = random_latents(vae, 1, 8)
    with torch.no_grad():
        whole = vae.decode(latents)
    stream = vae.decode_stream()
    one_by_one = torch.cat([stream.push(latents[:, i : i + 1]) for i in range(8)], dim=1)
    torch.testing.assert_close(one_by_one, whole, atol=1e-5, rtol=0)
    stream.reset()
    ragged = torch.cat([stream.push(latents[:, :3]), stream.push(latents[:, 3:])], dim=1)
    torch.testing.assert_close(ragged, whole, atol=1e-5, rtol=0)


def test_stream_state_is_bounded(vae: CausalVideoVAE) -> None:
    latents = random_latents(vae, 1, 1 + 8 * LATENTS_PER_CHUNK)
    stream = vae.decode_stream()
    stream.push(latents[:, :1])
    sizes = []
    for k in range(8):
        start = 1 + k * LATENTS_PER_CHUNK
        stream.push(latents[:, start : start + LATENTS_PER_CHUNK])
        sizes.append(stream.state_nbytes())
    assert sizes[0] > 0
    assert len(set(sizes)) == 1
    stream.reset()
    assert stream.state_nbytes() == 0 and stream.latents_seen == 0


def test_decoder_is_causal(vae: CausalVideoVAE) -> None:
    latents = random_latents(vae, 1, 4)
    changed = latents.clone()
    changed[:, 2] += 1.0
    with torch.no_grad():
        a, b = vae.decode(latents), vae.decode(changed)
    first_affected = 1 + FRAMES_PER_LATENT  # latent 2 starts at frame 5
    torch.testing.assert_close(a[:, :first_affected], b[:, :first_affected], atol=0, rtol=0)
    assert (a[:, first_affected:] - b[:, first_affected:]).abs().max() > 1e-4


def test_encoder_is_causal(vae: CausalVideoVAE) -> None:
    frames = torch.rand(1, 1 + 3 * FRAMES_PER_LATENT, 3, SIZE, SIZE) * 2 - 1
    changed = frames.clone()
    changed[:, 1 + FRAMES_PER_LATENT] = 0.0  # first frame of latent 2
    with torch.no_grad():
        a, b = vae.encode(frames), vae.encode(changed)
    torch.testing.assert_close(a[:, :2], b[:, :2], atol=0, rtol=0)
    assert (a[:, 2:] - b[:, 2:]).abs().max() > 1e-6


def test_training_api() -> None:
    vae = tiny_vae()
    frames = torch.rand(2, 1 + FRAMES_PER_LATENT, 3, SIZE, SIZE) * 2 - 1
    out = vae(frames)
    assert out.recon.shape == frames.shape and out.mean.shape == out.logvar.shape
    loss = (out.recon - frames).pow(2).mean() + 1e-3 * kl_divergence(out.mean, out.logvar)
    loss.backward()
    assert vae.encoder.conv_in.weight.grad.abs().sum() > 0
    zeros = torch.zeros(3, 4)
    assert kl_divergence(zeros, zeros).item() == 0.0
    assert kl_divergence(zeros + 1.0, zeros).item() > 0.0


def test_sampling_and_normalisation() -> None:
    frames = torch.rand(1, 1 + FRAMES_PER_LATENT, 3, SIZE, SIZE) * 2 - 1
    vae = tiny_vae()
    with torch.no_grad():
        mean, _ = vae.encode_posterior(frames)
        s1 = vae.encode(frames, sample=True, generator=torch.Generator().manual_seed(3))
        s2 = vae.encode(frames, sample=True, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(s1, s2)
        assert (s1 - mean).abs().max() > 0
        c = vae.config.latent_channels
        vae.set_latent_stats(torch.full((c,), 0.5), torch.full((c,), 2.0))
        torch.testing.assert_close(vae.encode(frames), (mean - 0.5) / 2.0)
        z = vae.encode(frames)
        torch.testing.assert_close(vae.denormalize(vae.normalize(z)), z)


def test_config_round_trip_through_json() -> None:
    for config in PRESETS.values():
        assert VAEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="frames a latent"):
        VAEConfig(temporal_down=(False, False, True))


def test_presets_sizes() -> None:
    assert param_count(build_vae("tiny")) < 1_000_000
    with torch.device("meta"):
        full = build_vae("full")
    assert full.config.latent_channels == 16 and full.config.spatial_factor == 8
    assert 80e6 < param_count(full) < 200e6
    latents = torch.empty(1, 1 + LATENTS_PER_CHUNK, 16, 60, 104, device="meta")
    assert full.decode(latents).shape == (1, 1 + FRAMES_PER_CHUNK, 3, 480, 832)


def test_temporal_reach_follows_the_temporal_convs():
    tiny = PRESETS["tiny"]
    spatial_only = dataclasses.replace(tiny, temporal_kernels=(1, 1, 1, 1))
    deeper = dataclasses.replace(tiny, num_res_blocks=2)
    # without temporal convs a frame only reaches the frames of its own latent
    assert temporal_reach(spatial_only) < FRAMES_PER_LATENT
    # stacked causal convs look back far past a 13-frame clip, and further with more of them
    assert temporal_reach(tiny) > 1 + FRAMES_PER_CHUNK
    assert temporal_reach(deeper) > temporal_reach(tiny)
