import json

import pytest
import torch
from torch import nn

from flowact.renderer.audio import PRESETS as AUDIO_PRESETS
from flowact.renderer.audio import LogMelAudioEncoder, LogMelConfig
from flowact.renderer.vae import PRESETS as VAE_PRESETS
from flowact.renderer.vae import CausalVideoVAE, VAEConfig
from flowact.renderer.weights import (
    INDEX_NAME,
    MAX_SHARD_BYTES,
    WeightsError,
    load_into,
    load_weights,
    read_index,
    save_weights,
)


class Tied(nn.Module):
    """Two names on one parameter, as with tied embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("steps", torch.tensor(7, dtype=torch.int64))


def build_parts() -> tuple[dict[str, nn.Module], dict[str, object]]:
    torch.manual_seed(0)
    vae = CausalVideoVAE(VAE_PRESETS["tiny"])
    audio = LogMelAudioEncoder(AUDIO_PRESETS["tiny"])
    parts = {"vae": vae, "audio": audio, "dit": Tied().to(torch.bfloat16)}
    return parts, {"vae": vae.config, "audio": audio.config, "dit": {"depth": 2}}


def test_round_trip(tmp_path) -> None:
    parts, configs = build_parts()
    index_path = save_weights(tmp_path, parts, configs)
    assert index_path == tmp_path / INDEX_NAME
    checkpoint = load_weights(tmp_path, verify=True)
    assert set(checkpoint.state_dicts) == {"vae", "audio", "dit"}
    for part, module in parts.items():
        expected = module.state_dict()
        assert checkpoint.state_dicts[part].keys() == expected.keys()
        for name, tensor in expected.items():
            got = checkpoint.state_dicts[part][name]
            assert got.dtype == tensor.dtype, name
            torch.testing.assert_close(got, tensor, atol=0, rtol=0)
    assert VAEConfig.from_dict(checkpoint.configs["vae"]) == configs["vae"]
    assert LogMelConfig.from_dict(checkpoint.configs["audio"]) == configs["audio"]
    assert checkpoint.configs["dit"] == {"depth": 2}

    fresh, _ = build_parts()
    with torch.no_grad():
        for p in fresh["vae"].parameters():
            p.zero_()
    returned = load_into(tmp_path, {"vae": fresh["vae"]})
    assert set(returned) == {"vae"}
    torch.testing.assert_close(fresh["vae"].state_dict(), parts["vae"].state_dict())


def test_shards_respect_the_size_limit(tmp_path) -> None:
    limit = 64 * 1024
    big = torch.randn(300, 100)  # 120 KB: split over shards
    parts = {"dit": {"big": big, "small": torch.arange(10)}, "vae": {"w": torch.randn(50, 50)}}
    save_weights(tmp_path, parts, max_shard_bytes=limit)
    index = read_index(tmp_path)
    sizes = [(tmp_path / s["file"]).stat().st_size for s in index["shards"]]
    assert len(sizes) >= 2 and max(sizes) <= limit
    assert sizes[0] > 0.9 * limit  # split pieces fill a shard rather than open a new one
    assert len(index["parts"]["dit"]["tensors"]["big"]["pieces"]) >= 2
    loaded = load_weights(tmp_path).state_dicts
    torch.testing.assert_close(loaded["dit"]["big"], big, atol=0, rtol=0)
    torch.testing.assert_close(loaded["vae"]["w"], parts["vae"]["w"], atol=0, rtol=0)

    # saving again with fewer shards leaves no stale shard behind
    save_weights(tmp_path, {"vae": parts["vae"]}, max_shard_bytes=limit)
    names = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert names == [s["file"] for s in read_index(tmp_path)["shards"]]


def test_default_limit_is_16_mib(tmp_path) -> None:
    huge = torch.zeros(4400, 2500, dtype=torch.bfloat16)  # 22 MB
    huge[::97] = 1.5
    save_weights(tmp_path, {"dit": {"embed": huge}})
    index = read_index(tmp_path)
    assert index["max_shard_bytes"] == MAX_SHARD_BYTES == 16 * 1024 * 1024
    assert len(index["shards"]) == 2
    assert all(s["bytes"] <= MAX_SHARD_BYTES for s in index["shards"])
    torch.testing.assert_close(load_weights(tmp_path).state_dicts["dit"]["embed"], huge)


def test_strict_errors_name_the_tensor(tmp_path) -> None:
    parts, configs = build_parts()
    save_weights(tmp_path, parts, configs)

    wider = CausalVideoVAE(VAEConfig.from_dict({**configs["vae"].to_dict(), "base_channels": 4}))
    with pytest.raises(WeightsError, match=r"vae\.encoder\.conv_in\.weight: checkpoint shape"):
        load_into(tmp_path, {"vae": wider})

    extra = LogMelAudioEncoder(AUDIO_PRESETS["tiny"])
    extra.gain = nn.Parameter(torch.ones(1))
    with pytest.raises(WeightsError, match=r"audio\.gain: missing from the checkpoint"):
        load_into(tmp_path, {"audio": extra})
    lacking = Tied()
    del lacking.steps
    with pytest.raises(WeightsError, match=r"dit\.steps: in the checkpoint, not in the model"):
        load_into(tmp_path, {"dit": lacking})
    load_into(tmp_path, {"dit": lacking.to(torch.bfloat16)}, strict=False)
    torch.testing.assert_close(lacking.embed.weight, parts["dit"].embed.weight, atol=0, rtol=0)
    with pytest.raises(WeightsError, match=r"no part\(s\) \['planner'\]"):
        load_weights(tmp_path, parts=["planner"])

    index = json.loads((tmp_path / INDEX_NAME).read_text())
    entry = index["parts"]["audio"]["tensors"]["proj_in.weight"]
    entry["pieces"][0]["key"] = "audio/renamed"
    (tmp_path / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(WeightsError, match=r"tensor audio\.proj_in\.weight: 'audio/renamed'"):
        load_weights(tmp_path)

    entry["pieces"][0]["key"] = "audio/proj_in.weight"
    entry["dtype"] = "float16"
    (tmp_path / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(WeightsError, match=r"tensor audio\.proj_in\.weight: shards hold"):
        load_weights(tmp_path)

    (tmp_path / index["shards"][0]["file"]).unlink()
    with pytest.raises(WeightsError, match="is missing from"):
        load_weights(tmp_path)


def test_bad_inputs(tmp_path) -> None:
    with pytest.raises(WeightsError, match="no checkpoint index"):
        load_weights(tmp_path)
    with pytest.raises(WeightsError, match="no weights"):
        save_weights(tmp_path, {"vae": {}}, configs={"dit": {}})
    with pytest.raises(WeightsError, match="JSON"):
        save_weights(tmp_path, {"vae": {}}, configs={"vae": {"bad": object()}})
