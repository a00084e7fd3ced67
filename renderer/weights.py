"""Checkpoints of the renderer: several state dicts as size-capped safetensors shards + an index.

A checkpoint is a directory:

    index.json                           format, version, shard list, and for every part
                                         ("vae", "dit", "audio", ...) its config and tensors
    weights-00001-of-0000N.safetensors   at most `max_shard_bytes` each (16 MiB by default,
    ...                                  headers included)

Inside the shards a tensor `name` of part `part` is stored under the key `part/name`. A tensor
larger than a shard is flattened and split into pieces `part/name#0`, `part/name#1`, ..., each
in its own shard; the index lists the pieces in order with the tensor's dtype and shape, so
loading concatenates them back. The index is written last, so a crashed save never looks like a
valid checkpoint.

Loading is strict: a tensor the index names but a shard lacks, a shard that is missing, or a
shape or dtype that differs from the index raises `WeightsError` naming the tensor; so does a
model parameter the checkpoint lacks (or the reverse) in `load_into`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import structlog
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

log = structlog.get_logger(__name__)

FORMAT = "flowact-weights"
VERSION = 1
INDEX_NAME = "index.json"
SAMPLING_NAME = "sampling.json"  # how the checkpoint is meant to be sampled (guidance, steps)
MAX_SHARD_BYTES = 16 * 1024 * 1024
_SHARD_PREFIX = "weights-"
_SHARD_SUFFIX = ".safetensors"


class WeightsError(RuntimeError):
    """A checkpoint that does not match what the index, or the model, expects."""


class Checkpoint(NamedTuple):
    state_dicts: dict[str, dict[str, Tensor]]
    configs: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


class _Piece(NamedTuple):
    key: str  # key inside the shard
    tensor: Tensor  # contiguous, on CPU


@dataclasses.dataclass
class _Shard:
    pieces: list[_Piece] = dataclasses.field(default_factory=list)
    nbytes: int = 8  # the header-length prefix

    def fits(self, cost: int, limit: int) -> bool:
        return self.nbytes + cost <= limit


def _header_cost(key: str, shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Upper bound of the bytes a tensor's entry adds to a safetensors header."""
    entry = {key: {"dtype": "BF16", "shape": list(shape), "data_offsets": [2**53, 2**53]}}
    return len(json.dumps(entry, separators=(",", ":"))) + 8  # comma, alignment padding


def _config_json(config: Any) -> Any:
    if config is None:
        return None
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    elif hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    try:
        return json.loads(json.dumps(config))
    except TypeError as err:
        raise WeightsError(f"config is not JSON-serialisable: {err}") from err


def _split(key: str, tensor: Tensor, limit: int) -> list[_Piece]:
    """One piece if the tensor fits an empty shard, else flat slices that each do."""
    nbytes = tensor.numel() * tensor.element_size()
    room = limit - 8 - _header_cost(key + "#999999", (tensor.numel(),), tensor.dtype)
    if nbytes + _header_cost(key, tuple(tensor.shape), tensor.dtype) <= limit - 8:
        return [_Piece(key, tensor)]
    per_piece = room // tensor.element_size()
    if per_piece <= 0:
        raise WeightsError(f"max_shard_bytes={limit} cannot hold a single element of {key}")
    flat = tensor.reshape(-1)
    return [
        _Piece(f"{key}#{i}", flat[start : start + per_piece].clone())
        for i, start in enumerate(range(0, flat.numel(), per_piece))
    ]


def _pack(pieces: list[_Piece], limit: int) -> list[_Shard]:
    shards = [_Shard()]
    for piece in pieces:
        t = piece.tensor
        cost = t.numel() * t.element_size() + _header_cost(piece.key, tuple(t.shape), t.dtype)
        if not shards[-1].fits(cost, limit) and shards[-1].pieces:
            shards.append(_Shard())
        shards[-1].pieces.append(piece)
        shards[-1].nbytes += cost
    return shards


def _as_state_dict(part: Mapping[str, Tensor] | nn.Module) -> Mapping[str, Tensor]:
    return part.state_dict() if isinstance(part, nn.Module) else part


def save_weights(
    directory: str | Path,
    parts: Mapping[str, Mapping[str, Tensor] | nn.Module],
    configs: Mapping[str, Any] | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Write `parts` (name -> state dict or module) as shards + `index.json`; returns the index.

    `configs` maps a part to its config (a dataclass, a pydantic model or plain JSON data),
    stored in the index next to that part's tensors.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    configs = configs or {}
    unknown = set(configs) - set(parts)
    if unknown:
        raise WeightsError(f"configs given for parts that have no weights: {sorted(unknown)}")
    index_parts: dict[str, Any] = {}
    pieces: list[_Piece] = []
    for part, tensors in parts.items():
        if "/" in part:
            raise WeightsError(f"part name {part!r} may not contain '/'")
        entries = {}
        for name, tensor in _as_state_dict(tensors).items():
            tensor = tensor.detach().to("cpu").contiguous()
            split = _split(f"{part}/{name}", tensor, max_shard_bytes)
            pieces += split
            entries[name] = {
                "dtype": str(tensor.dtype).removeprefix("torch."),
                "shape": list(tensor.shape),
                "pieces": [p.key for p in split],
            }
        index_parts[part] = {"config": _config_json(configs.get(part)), "tensors": entries}
    shards = _pack(pieces, max_shard_bytes)
    shard_meta = _write_shards(directory, shards, max_shard_bytes)
    _locate_pieces(index_parts, shard_meta)
    index = {
        "format": FORMAT,
        "version": VERSION,
        "max_shard_bytes": max_shard_bytes,
        "shards": [{k: v for k, v in m.items() if k != "keys"} for m in shard_meta],
        "parts": index_parts,
    }
    index_path = directory / INDEX_NAME
    tmp = index_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, index_path)
    _remove_stale_shards(directory, {m["file"] for m in shard_meta})
    log.info("weights_saved", path=str(directory), parts=list(parts), shards=len(shard_meta))
    return index_path


def _write_shards(directory: Path, shards: list[_Shard], limit: int) -> list[dict[str, Any]]:
    meta = []
    for number, shard in enumerate(shards, start=1):
        name = f"{_SHARD_PREFIX}{number:05d}-of-{len(shards):05d}{_SHARD_SUFFIX}"
        tensors, seen = {}, set()
        for key, tensor in shard.pieces:
            # safetensors refuses two keys on one storage (tied weights): give each its own
            ptr = tensor.untyped_storage().data_ptr()
            tensors[key] = tensor.clone() if ptr in seen and tensor.numel() else tensor
            seen.add(ptr)
        path = directory / name
        save_file(tensors, str(path))
        size = path.stat().st_size
        if size > limit:  # the header estimate is an upper bound; this would be a bug
            raise WeightsError(f"{name} is {size} bytes, over max_shard_bytes={limit}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        meta.append({"file": name, "bytes": size, "sha256": digest, "keys": list(tensors)})
    return meta


def _locate_pieces(index_parts: dict[str, Any], shard_meta: list[dict[str, Any]]) -> None:
    where = {key: m["file"] for m in shard_meta for key in m["keys"]}
    for part in index_parts.values():
        for entry in part["tensors"].values():
            entry["pieces"] = [{"key": key, "file": where[key]} for key in entry["pieces"]]


def _remove_stale_shards(directory: Path, keep: set[str]) -> None:
    for path in directory.glob(f"{_SHARD_PREFIX}*-of-*{_SHARD_SUFFIX}"):
        if path.name not in keep:
            path.unlink()


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def read_index(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / INDEX_NAME
    if not path.is_file():
        raise WeightsError(f"no checkpoint index at {path}")
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise WeightsError(f"{path} is not a {FORMAT} v{VERSION} index")
    return index


def load_weights(
    directory: str | Path,
    parts: list[str] | None = None,
    device: str | torch.device = "cpu",
    verify: bool = False,
) -> Checkpoint:
    """Read the state dicts (all parts, or `parts`) and configs of a checkpoint.

    `verify` also checks every shard's sha256 against the index (reads each file twice).
    """
    directory = Path(directory)
    index = read_index(directory)
    wanted = list(index["parts"]) if parts is None else parts
    missing = [p for p in wanted if p not in index["parts"]]
    if missing:
        raise WeightsError(f"checkpoint has no part(s) {missing}; it has {list(index['parts'])}")
    _check_shards(directory, index["shards"], verify)
    handles: dict[str, tuple[Any, set[str]]] = {}
    state_dicts = {}
    for part in wanted:
        tensors = index["parts"][part]["tensors"]
        state_dicts[part] = {
            name: _read_tensor(directory, handles, f"{part}.{name}", entry, device)
            for name, entry in tensors.items()
        }
    configs = {part: index["parts"][part]["config"] for part in wanted}
    return Checkpoint(state_dicts, configs)


def _check_shards(directory: Path, shards: list[dict[str, Any]], verify: bool) -> None:
    for shard in shards:
        path = directory / shard["file"]
        if not path.is_file():
            raise WeightsError(f"shard {shard['file']} is missing from {directory}")
        if path.stat().st_size != shard["bytes"]:
            raise WeightsError(
                f"shard {shard['file']} has {path.stat().st_size} bytes, "
                f"the index says {shard['bytes']}"
            )
        if verify and hashlib.sha256(path.read_bytes()).hexdigest() != shard["sha256"]:
            raise WeightsError(f"shard {shard['file']} does not match its sha256")


def _read_tensor(
    directory: Path,
    handles: dict[str, tuple[Any, set[str]]],
    name: str,
    entry: dict[str, Any],
    device: str | torch.device,
) -> Tensor:
    pieces = []
    for piece in entry["pieces"]:
        file = piece["file"]
        if file not in handles:
            handle = safe_open(str(directory / file), framework="pt", device=str(device))
            handles[file] = (handle, set(handle.keys()))
        handle, keys = handles[file]
        if piece["key"] not in keys:
            raise WeightsError(f"tensor {name}: {piece['key']!r} is missing from {file}")
        pieces.append(handle.get_tensor(piece["key"]))
    tensor = pieces[0] if len(pieces) == 1 else torch.cat([p.reshape(-1) for p in pieces])
    dtype = getattr(torch, entry["dtype"])
    shape = tuple(entry["shape"])
    if tensor.dtype != dtype or tensor.numel() != _numel(shape):
        raise WeightsError(
            f"tensor {name}: shards hold {tensor.dtype} x {tensor.numel()}, "
            f"the index says {dtype} {list(shape)}"
        )
    return tensor.reshape(shape)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def load_into(
    directory: str | Path,
    modules: Mapping[str, nn.Module],
    strict: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load parts into modules (`{"vae": vae, ...}`); returns those parts' configs.

    Strict: every tensor of each module must be in the checkpoint, and the checkpoint may hold
    nothing the module lacks; `strict=False` loads the tensors both have. Shapes must always
    agree. Problems are collected and raised together, each naming `part.tensor`, before any
    module is touched. Parts of the checkpoint not asked for are not read.
    """
    checkpoint = load_weights(directory, parts=list(modules), device=device)
    problems = []
    for part, module in modules.items():
        problems += _compare(part, module.state_dict(), checkpoint.state_dicts[part], strict)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise WeightsError(f"checkpoint {directory} does not fit the model:\n  {shown}{more}")
    for part, module in modules.items():
        module.load_state_dict(checkpoint.state_dicts[part], strict=strict)
    return checkpoint.configs


def _compare(
    part: str, expected: Mapping[str, Tensor], found: Mapping[str, Tensor], strict: bool
) -> list[str]:
    problems = []
    if strict:
        problems += [f"{part}.{k}: missing from the checkpoint" for k in expected if k not in found]
        problems += [
            f"{part}.{k}: in the checkpoint, not in the model" for k in found if k not in expected
        ]
    for key, tensor in expected.items():
        if key in found and found[key].shape != tensor.shape:
            problems.append(
                f"{part}.{key}: checkpoint shape {list(found[key].shape)}, "
                f"model shape {list(tensor.shape)}"
            )
    return problems


def shipped_checkpoint(preset: str) -> Path | None:
    """The checkpoint this project trained and ships for `preset` (`checkpoints/<preset>` of the
    source tree), or None when there is none."""
    directory = Path(__file__).resolve().parents[1] / "checkpoints" / preset
    return directory if (directory / INDEX_NAME).is_file() else None


def read_sampling(directory: str | Path) -> dict[str, Any]:
    """The checkpoint's sampling settings ({} when it has none)."""
    path = Path(directory) / SAMPLING_NAME
    return json.loads(path.read_text()) if path.is_file() else {}
