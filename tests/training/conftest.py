"""Fixtures of the training tests: a tiny world, its latents and conditioning on CPU."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from flowact.renderer import audio as audio_mod
from flowact.renderer import vae as vae_mod
from flowact.renderer.presets import get_preset
from flowact.renderer.text import HashTextEncoder
from flowact.renderer.training import behaviors as bh
from flowact.renderer.training import data, world


@pytest.fixture(scope="session")
def tiny_config():
    return get_preset("tiny")


@pytest.fixture(scope="session")
def text_table() -> torch.Tensor:
    return HashTextEncoder().encode(bh.prompt_table()[0])


@pytest.fixture(scope="session")
def tiny_vae() -> vae_mod.CausalVideoVAE:
    torch.manual_seed(0)
    return vae_mod.build_vae("tiny").eval()


@pytest.fixture(scope="session")
def tiny_latents(tiny_vae) -> data.LatentSet:
    """4 clips of 8 chunks at 32x32, encoded by an untrained tiny VAE (layout is the subject)."""
    rng = np.random.default_rng(0)
    source = world.WorldClips(world.ClipConfig(size=(32, 32)))
    return data.build_latent_set(tiny_vae, source, 4, 8, rng, torch.device("cpu"), batch=4)


@pytest.fixture
def tiny_audio(tiny_config) -> audio_mod.LogMelAudioEncoder:
    torch.manual_seed(0)
    return audio_mod.LogMelAudioEncoder(
        replace(audio_mod.PRESETS["tiny"], dim=tiny_config.audio_dim)
    )
