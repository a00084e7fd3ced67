"""The shipped checkpoint: DiT + VAE + audio encoder (+ the pose probe) as capped safetensors
shards through `renderer.weights.save_weights`, and `sampling.json` with how to run it.

Large float tensors are stored in bfloat16 (the demo checkpoint must stay under 48 MiB);
small ones (norms, biases, latent statistics) stay float32. `load_into` casts back to the
modules' dtype on load, so the renderer loads it like any other checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowact.renderer import audio as audio_mod
from flowact.renderer import vae as vae_mod
from flowact.renderer.model import FlowActMMDiT
from flowact.renderer.presets import RendererConfig
from flowact.renderer.training.probe import PoseProbe, ProbeConfig
from flowact.renderer.weights import (
    SAMPLING_NAME,
    load_into,
    read_index,
    read_sampling,
    save_weights,
)

SMALL_TENSOR = 4096  # elements; smaller float tensors keep float32


def compact_state(module: nn.Module, dtype: torch.dtype = torch.bfloat16) -> dict[str, Tensor]:
    """State dict with large float tensors cast to `dtype`."""
    out = {}
    for name, tensor in module.state_dict().items():
        big = tensor.is_floating_point() and tensor.numel() >= SMALL_TENSOR
        out[name] = tensor.detach().to(dtype) if big else tensor.detach()
    return out


def export_checkpoint(
    directory: str | Path,
    model: FlowActMMDiT,
    vae: vae_mod.CausalVideoVAE,
    audio: audio_mod.LogMelAudioEncoder,
    probe: PoseProbe | None = None,
    sampling: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write the renderer checkpoint; returns the directory."""
    directory = Path(directory)
    parts: dict[str, Any] = {
        "dit": compact_state(model, dtype),
        "vae": compact_state(vae, dtype),
        "audio": compact_state(audio, dtype),
    }
    configs: dict[str, Any] = {"dit": model.config, "vae": vae.config, "audio": audio.config}
    if probe is not None:
        parts["probe"] = compact_state(probe, dtype)
        configs["probe"] = probe.config
    save_weights(directory, parts, configs)
    (directory / SAMPLING_NAME).write_text(json.dumps(sampling or {}, indent=1) + "\n")
    return directory


@dataclass
class Bundle:
    """A loaded checkpoint, in eval mode on one device."""

    config: RendererConfig
    model: FlowActMMDiT
    vae: vae_mod.CausalVideoVAE
    audio: audio_mod.LogMelAudioEncoder
    probe: PoseProbe | None
    sampling: dict[str, Any]


def _tuples(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Build every part from the configs stored in the index and load its weights."""
    directory = Path(directory)
    parts = read_index(directory)["parts"]
    config = RendererConfig(**_tuples(parts["dit"]["config"]))
    model = FlowActMMDiT(config)
    vae = vae_mod.CausalVideoVAE(vae_mod.VAEConfig.from_dict(parts["vae"]["config"]))
    audio = audio_mod.LogMelAudioEncoder(audio_mod.LogMelConfig.from_dict(parts["audio"]["config"]))
    modules: dict[str, nn.Module] = {"dit": model, "vae": vae, "audio": audio}
    probe = None
    if "probe" in parts:
        probe = PoseProbe(ProbeConfig(**_tuples(parts["probe"]["config"])))
        modules["probe"] = probe
    load_into(directory, modules)
    for module in modules.values():
        module.to(device).eval()
    sampling = read_sampling(directory)
    return Bundle(config, model, vae, audio, probe, sampling)


def checkpoint_bytes(directory: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).glob("weights-*.safetensors"))
