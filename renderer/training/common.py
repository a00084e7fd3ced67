"""Pieces every training stage shares: resumable state files, a time-budgeted step loop, EMA,
and the device / precision choice.

A stage keeps one state file (`<workdir>/<stage>/state.pt`: modules, optimizer, step, losses).
`run_steps` continues from the saved step, saves every `save_every` steps and when its
wall-clock budget runs out, so a long run is many short pieces (each a few minutes) that pick
up where the last one stopped.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
from torch import nn
from tqdm import tqdm

log = structlog.get_logger(__name__)


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision on CPU (tests compare losses exactly there)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def save_atomically(blob: object, path: Path) -> None:
    """`torch.save` to a temporary file beside `path`, then rename: a piece cut off mid-save
    leaves the last complete state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)


@dataclass
class StageState:
    """What a stage saves: its modules and optimizers by name, the step, the loss history.

    A module named in `optional` may be missing from a saved state (one the stage gained after
    the state was written, as a seeded VAE stage gains its control head): it keeps its fresh
    weights, and the optimizers, whose state would not fit it, start fresh too."""

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    step: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0  # wall-clock time spent in this stage over all pieces
    optional: frozenset[str] = frozenset()

    def save(self, path: Path) -> None:
        blob = {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "step": self.step,
            "losses": self.losses,
            "seconds": self.seconds,
        }
        save_atomically(blob, path)

    def load(self, path: Path) -> bool:
        """Restore from `path` if it exists; returns whether it did."""
        if not path.is_file():
            return False
        blob = torch.load(path, map_location="cpu", weights_only=False)
        fresh = [k for k in self.modules if k in self.optional and k not in blob["modules"]]
        # modules the saved stage trained and this one does not (a VAE stage without its control
        # head, seeded from a run that had one): left behind, with the optimizer state they share
        dropped = [k for k in blob["modules"] if k not in self.modules]
        for k, m in self.modules.items():
            if k in fresh:
                continue
            try:
                m.load_state_dict(blob["modules"][k])
            except RuntimeError as err:  # a setting that shapes the module changed since
                first = str(err).splitlines()[-1].strip()
                raise ValueError(
                    f"{path} holds a {k!r} of another shape than this stage builds (was it "
                    f"saved with other settings?): {first}"
                ) from None
        for k, o in self.optimizers.items():
            if k in blob["optimizers"] and not (fresh or dropped):
                o.load_state_dict(blob["optimizers"][k])
        if fresh:
            log.info("stage_modules_fresh", path=str(path), modules=fresh)
        if dropped:
            log.info("stage_modules_dropped", path=str(path), modules=dropped)
        self.step, self.losses = blob["step"], blob["losses"]
        self.seconds = blob.get("seconds", 0.0)
        log.info("stage_resumed", path=str(path), step=self.step)
        return True

    def summary(self) -> dict:
        """The stage's figures in a run's summary: steps, seconds and its loss at the start and
        at the end (the mean of the first and of the last 50 steps)."""
        return {
            "steps": self.step,
            "seconds": round(self.seconds, 1),
            "loss_first50": float(np.mean(self.losses[:50])) if self.losses else None,
            "loss_last50": float(np.mean(self.losses[-50:])) if self.losses else None,
        }


def run_steps(
    state: StageState,
    step_fn: Callable[[int], float | torch.Tensor],
    steps: int,
    path: Path | None,
    seconds: float = math.inf,
    save_every: int = 500,
    desc: str = "train",
    progress: bool = True,
    sync_every: int = 20,
) -> StageState:
    """Call `step_fn(step)` from `state.step` up to `steps`, within `seconds` of wall time
    (checked before every step, so a spent budget runs nothing); saves to `path` every
    `save_every` steps and at the end when any step ran.

    `step_fn` may return its loss as a tensor: losses are read back to the host every
    `sync_every` steps, so a GPU step never waits for the one before it to finish.
    """
    start = last = time.monotonic()
    first = state.step
    pending: list[float | torch.Tensor] = []

    def flush() -> None:
        if pending:
            values = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in pending])
            state.losses.extend(values.cpu().tolist())
            pending.clear()

    bar = tqdm(total=steps, initial=state.step, desc=desc, disable=not progress)
    while state.step < steps and time.monotonic() - start < seconds:
        pending.append(_detached(step_fn(state.step)))
        state.step += 1
        bar.update(1)
        if state.step % sync_every == 0:
            flush()
            bar.set_postfix(loss=f"{mean_of(state.losses, sync_every):.4f}")
        now = time.monotonic()
        state.seconds += now - last
        last = now
        if path is not None and state.step % save_every == 0:
            flush()
            state.save(path)
    flush()
    bar.close()
    if path is not None and state.step > first:
        state.save(path)
    log.info("stage_piece_done", desc=desc, step=state.step, seconds=round(state.seconds, 1))
    return state


def _detached(loss: float | torch.Tensor) -> float | torch.Tensor:
    return loss.detach().float() if isinstance(loss, torch.Tensor) else float(loss)


def progress_of(state: StageState, steps: int, seconds: float) -> float:
    """How far a stage is, 0..1, by steps or by its whole wall-clock budget."""
    by_time = state.seconds / seconds if math.isfinite(seconds) and seconds > 0 else 0.0
    return min(1.0, max(state.step / max(1, steps), by_time))


def cosine_lr(base: float, step: int, progress: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to `floor * base` by progress 1."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    return base * warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class EMA:
    """Exponential moving average of a module's parameters (the weights that get shipped)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # warm start: early on the average follows the model closely
        decay = min(self.decay, (1 + step) / (10 + step))
        ema = list(self.model.parameters())
        torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1 - decay)


def batches(n: int, size: int) -> Iterator[slice]:
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def mean_of(values: list[float], last: int) -> float:
    tail = values[-last:]
    return sum(tail) / max(1, len(tail))


def describe(state: StageState) -> dict[str, Any]:
    return {
        "step": state.step,
        "seconds": round(state.seconds, 1),
        "loss_last100": round(mean_of(state.losses, 100), 5),
    }
