"""The shipped checkpoint: DiT + VAE + audio encoder (+ the pose probe) as capped safetensors
shards through `renderer.weights.save_weights`, and `sampling.json` with how to run it and
what its DiT was trained on (`TRAINED_KEY`).

Large float tensors are stored in bfloat16 (the demo checkpoint must stay under 48 MiB);
small ones (norms, biases, latent statistics) stay float32. `load_into` casts back to the
modules' dtype on load, so the renderer loads it like any other checkpoint.

`combine_checkpoints` writes one checkpoint with the VAE of another that shares its latent
space (same encoder, same latent statistics), and / or another's probe: one run's DiT with
another run's decoder and instrument. It can also blend the DiT and audio encoder with
another's of the same latent space, weight by weight (`--blend-from`, `--blend`): two runs of
one lineage, say a checkpoint and its continuation, averaged.

    python -m flowact.renderer.training.export --base out/ckpt5 --vae-from checkpoints/demo \
        --out out/ckpt5_vae
    python -m flowact.renderer.training.export --base out/ckpt6 --vae-from out/refit \
        --probe-from out/refit --out out/ckpt6_refit
    python -m flowact.renderer.training.export --base checkpoints/demo --blend-from out/ckpt20 \
        --blend 0.5 --out out/blend
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Mapping, Sequence
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
# in `sampling.json`: per behavior channel, the phrasings the checkpoint's DiT was trained on
# (`flowact eval --prompts train` draws from these, and checks the held-out ones are not there)
TRAINED_KEY = "trained_phrasings"


def phrasings_record(
    trained: Mapping[str, Sequence[str]], earlier: Mapping[str, Sequence[str]] | None = None
) -> dict[str, list[str]]:
    """What a checkpoint records under `TRAINED_KEY`: per channel the phrasings its run trained
    on (`trained`), then those of `earlier`, the record of the checkpoint its DiT started from,
    that the run did not train on again."""
    earlier = earlier or {}
    out = {ch: list(p) for ch, p in trained.items()}
    for ch, phrasings in earlier.items():
        have = out.setdefault(ch, [])
        have += [p for p in phrasings if p not in have]
    return out


def trained_phrasings(sampling: Mapping[str, Any]) -> frozenset[str] | None:
    """Every phrasing a checkpoint's `sampling.json` says its DiT was trained on, or None where
    it does not say (checkpoints exported before the record was kept)."""
    record = sampling.get(TRAINED_KEY)
    if record is None:
        return None
    if not isinstance(record, Mapping) or not all(
        isinstance(p, list | tuple) and all(isinstance(t, str) for t in p) for p in record.values()
    ):
        raise ValueError(f"{TRAINED_KEY} must map behavior channels to lists of phrasings")
    return frozenset(t for p in record.values() for t in p)


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


def combine_checkpoints(
    base: str | Path,
    out: str | Path,
    vae_from: str | Path | None = None,
    probe_from: str | Path | None = None,
    blend_from: str | Path | None = None,
    blend: float = 0.5,
) -> Path:
    """`base` with the VAE of `vae_from` and / or the probe of `probe_from`, and / or its DiT
    and audio encoder blended with those of `blend_from` (`blend_modules`, `blend` of the
    other's), written to `out` (with `base`'s sampling, whose record of what was trained on
    gains the other's where blended, and, where `base` has none, a source's reference frame).
    The DiT of `base` was trained on its VAE's latents, so only a VAE with the same encoder and
    latent statistics is taken: one whose decoder alone differs, and only a DiT trained in that
    latent space is blended. Raises `ValueError` naming what differs, or what is missing."""
    if vae_from is None and probe_from is None and blend_from is None:
        raise ValueError("nothing to combine: give vae_from, probe_from, blend_from or more")
    first = load_checkpoint(base)
    vae, probe, sampling = first.vae, first.probe, dict(first.sampling)
    if vae_from is not None:
        vae = _same_latent_space(first.vae, load_checkpoint(vae_from).vae, base, vae_from)
    if probe_from is not None:
        probe = load_checkpoint(probe_from).probe
        if probe is None:
            raise ValueError(f"{probe_from} holds no probe")
    if blend_from is not None:
        other = load_checkpoint(blend_from)
        _same_latent_space(first.vae, other.vae, base, blend_from)
        blend_modules(first.model, other.model, blend, f"{blend_from}'s DiT")
        blend_modules(first.audio, other.audio, blend, f"{blend_from}'s audio encoder")
        records = [trained_phrasings(b.sampling) for b in (first, other)]
        if None not in records:
            sampling[TRAINED_KEY] = phrasings_record(
                sampling[TRAINED_KEY], other.sampling[TRAINED_KEY]
            )
        else:  # one of them does not say what it was trained on, so neither can the blend
            sampling.pop(TRAINED_KEY, None)
    directory = export_checkpoint(out, first.model, vae, first.audio, probe, sampling)
    copy_reference(directory, base, vae_from, probe_from)
    return directory


def blend_modules(mine: nn.Module, theirs: nn.Module, weight: float, name: str) -> None:
    """Move `mine`'s floating-point weights `weight` of the way to `theirs` (0 keeps mine, 1
    takes theirs), in float32. Raises `ValueError` where the two are not one architecture
    (`name` says whose is other) or `weight` lies outside [0, 1]."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"blend must lie in [0, 1], not {weight}")
    a, b = mine.state_dict(), theirs.state_dict()
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise ValueError(f"{name} is a different architecture")
    mine.load_state_dict(
        {
            k: (v.float() * (1 - weight) + b[k].float() * weight).to(v.dtype)
            if v.is_floating_point()
            else v
            for k, v in a.items()
        }
    )


def copy_reference(directory: Path, *sources: str | Path | None) -> None:
    """Give `directory` the reference frame of the first of `sources` that has one (None
    sources are skipped), unless it has one already."""
    target = Path(directory) / "reference.png"
    for source in sources:
        ref = Path(source) / "reference.png" if source is not None else None
        if ref is not None and ref.is_file() and not target.is_file():
            shutil.copyfile(ref, target)


def _same_latent_space(mine_vae, their_vae, base, vae_from) -> vae_mod.CausalVideoVAE:
    """`their_vae`, once it is known to encode as `mine_vae` does (it may decode otherwise)."""
    if mine_vae.config != their_vae.config:
        raise ValueError(f"{vae_from}'s VAE is a different architecture from {base}'s")
    mine, theirs = mine_vae.state_dict(), their_vae.state_dict()
    differ = [
        n for n in mine if not n.startswith("decoder.") and not torch.equal(mine[n], theirs[n])
    ]
    if differ:
        raise ValueError(
            f"{vae_from}'s VAE has another latent space than {base}'s ({differ[0]} differs, "
            f"{len(differ)} tensors in all): {base}'s DiT cannot decode through it"
        )
    return their_vae


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Write one checkpoint's DiT and audio encoder with another's VAE (the same "
        "latent space, another decoder) and / or another's probe, or blended with another's DiT "
        "and audio encoder of the same latent space."
    )
    parser.add_argument("--base", required=True, help="checkpoint whose DiT and audio encoder")
    parser.add_argument("--vae-from", help="checkpoint whose VAE (default: the base's)")
    parser.add_argument("--probe-from", help="checkpoint whose probe (default: the base's)")
    parser.add_argument(
        "--blend-from", help="checkpoint whose DiT and audio encoder to blend the base's with"
    )
    parser.add_argument(
        "--blend",
        type=float,
        default=0.5,
        help="how far toward --blend-from's weights, 0 to 1 (default: 0.5, the mean)",
    )
    parser.add_argument("--out", required=True, help="directory to write")
    args = parser.parse_args()
    try:
        combine_checkpoints(
            args.base, args.out, args.vae_from, args.probe_from, args.blend_from, args.blend
        )
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    print(f"wrote {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()
