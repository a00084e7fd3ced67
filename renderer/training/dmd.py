"""Stage 3, second part: score distillation (DMD) on simulated streaming rollouts (paper 2.4).

Three models: the step-distilled student (the generator, trained), a frozen real score (the
stage-2 teacher, with classifier-free guidance) and a fake score that tracks what the student
makes (trained alongside it). Student and fake score both start from the step-distilled model.

One step:

1. **Rollout.** A session of the student is streamed exactly as the renderer streams it
   (`StreamingGenerator`, 3 NFE, image-to-video start from the clip's reference, the clip's own
   audio and prompts), for a random number of chunks, without gradients. Memory and the stream
   then hold the student's own output, the state inference is in.
2. **Generate.** The oldest stream chunk's last step is taken again with gradients: its clean
   latents `x0` as the student makes them from that buffer.
3. **Score.** `x0` is noised to a random level in the buffer's oldest slot (the rest of the
   buffer as it was) and both scores predict it clean. The generator's loss pulls `x0` along
   `x0_fake - x0_real`: towards what the teacher would make and away from what the student
   usually makes, normalised per sample.
4. **Fake score update.** `fake_updates` flow-matching steps of the fake score on the
   (detached) generated chunks, in the same buffers.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from flowact.renderer.buffer import ChunkCondition, ModelInputs
from flowact.renderer.model import FlowActMMDiT
from flowact.renderer.sampler import FlowMatchEulerSampler, shift_sigmas
from flowact.renderer.stream import StreamConfig, StreamingGenerator
from flowact.renderer.training.common import (
    EMA,
    StageState,
    autocast,
    cosine_lr,
    progress_of,
    run_steps,
)
from flowact.renderer.training.data import LatentSet, audio_windows, chunk_condition, face_weight
from flowact.renderer.training.distill import guided_velocity
from flowact.schemas.timebase import SAMPLES_PER_CHUNK


@dataclass(frozen=True)
class DMDConfig:
    name: str = "stage3_dmd"
    steps: int = 2000
    batch: int = 16
    lr: float = 2e-5
    fake_lr: float = 1e-4
    warmup: int = 50
    seconds: float = math.inf
    save_every: int = 250
    seed: int = 0
    shift: float = 3.0
    guidance: float = 2.0  # the real score's CFG scale, and the student's guidance input
    max_rollout: int = 6  # chunks streamed before the one that is scored (0 .. this many)
    level_range: tuple[float, float] = (0.02, 0.98)  # scoring levels, before the shift
    fake_updates: int = 2
    ema_decay: float = 0.999


def session_conditions(
    data: LatentSet,
    rows: Tensor,
    encoder: nn.Module,
    table: Tensor,
    latents_per_chunk: int,
    overlap: int,
    chunks: int,
) -> list[ChunkCondition]:
    """Conditioning of the first `chunks` chunks of clips `rows` (their audio and prompts)."""
    pcm = data.pcm[rows, : chunks * SAMPLES_PER_CHUNK]
    with torch.no_grad():
        windows = audio_windows(encoder, pcm, overlap)  # [B, chunks * L, W, Da]
    lpc = latents_per_chunk
    return [
        chunk_condition(k, windows[:, k * lpc : (k + 1) * lpc], data.prompt[rows, k], table, lpc)
        for k in range(chunks)
    ]


@torch.no_grad()
def rollout(
    student: FlowActMMDiT,
    reference: Tensor,
    conditions: list[ChunkCondition],
    emitted: int,
    guidance: Tensor,
    generator: torch.Generator,
    shift: float,
) -> tuple[ModelInputs, Tensor]:
    """Stream `emitted` chunks (`conditions` holds `emitted + stream_chunks`), then return the
    buffer's next forward input (copies) and the oldest stream chunk's level."""
    chunks = student.config.stream_chunks
    gen = StreamingGenerator(
        student,
        FlowMatchEulerSampler(shift, chunks, 1),
        StreamConfig(guidance=float(guidance[0])),
    )
    gen.start(reference, conditions[:chunks], generator)
    for k in range(emitted):
        gen.next_chunk(conditions[k + chunks])
    buffer = gen.buffer
    assert buffer is not None
    inputs = buffer.model_inputs()
    copied = ModelInputs(*(t.clone() for t in _args(inputs)[:-1]), inputs.n_context)
    return copied, buffer.stream_levels[0].clone()


def _with_oldest(inputs: ModelInputs, x0: Tensor, level: Tensor, noise: Tensor) -> ModelInputs:
    """The buffer with its oldest stream chunk replaced by `x0` noised to `level` `[B]`."""
    n_ctx, lpc = inputs.n_context, x0.shape[1]
    frames = slice(n_ctx, n_ctx + lpc)
    tt = level[:, None, None, None, None]
    x, t = inputs.x.clone(), inputs.t.clone()
    x[:, frames] = ((1 - tt) * x0 + tt * noise).to(x.dtype)
    t[:, frames] = level[:, None]
    return ModelInputs(x, t, inputs.audio, inputs.text, inputs.text_mask, n_ctx)


def _oldest(velocity: Tensor, inputs: ModelInputs, lpc: int) -> Tensor:
    return velocity[:, inputs.n_context : inputs.n_context + lpc].float()


def generated(
    student: FlowActMMDiT, inputs: ModelInputs, oldest_level: Tensor, guidance: Tensor
) -> Tensor:
    """The oldest stream chunk's clean latents `[B, L, C, h, w]`: its last Euler step (to
    level 0) from the rollout buffer, with gradients when they are on."""
    lpc = student.config.latents_per_chunk
    with autocast(inputs.x.device):
        v = student(*_args(inputs), guidance=guidance)
    frames = slice(inputs.n_context, inputs.n_context + lpc)
    return inputs.x[:, frames].float() - oldest_level * _oldest(v, inputs, lpc)


def generator_loss(
    x0: Tensor,
    fake: FlowActMMDiT,
    teacher: FlowActMMDiT,
    inputs: ModelInputs,
    guidance: Tensor,
    cfg: DMDConfig,
    gen: torch.Generator,
) -> Tensor:
    """The DMD loss of generated chunks `x0` (from `generated`) in their rollout buffers."""
    lpc, device = x0.shape[1], x0.device
    frames = slice(inputs.n_context, inputs.n_context + lpc)
    level, noise = _level_and_noise(x0, cfg, gen)
    noisy = _with_oldest(inputs, x0.detach(), level, noise)
    tt = level[:, None, None, None, None]
    x_t = noisy.x[:, frames].float()
    with torch.no_grad(), autocast(device):
        real = guided_velocity(teacher, *_args(noisy)[:-1], guidance)
        fake_v = fake(*_args(noisy))
    x0_real = x_t - tt * _oldest(real, noisy, lpc)
    x0_fake = x_t - tt * _oldest(fake_v, noisy, lpc)
    scale = (x0.detach() - x0_real).abs().mean((1, 2, 3, 4), keepdim=True).clamp_min(1e-6)
    direction = (x0_fake - x0_real) / scale
    target = (x0 - direction).detach()  # the loss's gradient wrt x0 is the direction
    return 0.5 * ((x0 - target).pow(2) * face_weight(fake.config).to(device)).mean()


def fake_loss(
    fake: FlowActMMDiT, inputs: ModelInputs, x0: Tensor, cfg: DMDConfig, gen: torch.Generator
) -> Tensor:
    """Flow matching of the fake score on generated chunks `x0`, in their rollout buffers."""
    lpc = x0.shape[1]
    level, noise = _level_and_noise(x0, cfg, gen)
    noisy = _with_oldest(inputs, x0, level, noise)
    with autocast(x0.device):
        v = fake(*_args(noisy))
    err = (_oldest(v, noisy, lpc) - (noise - x0)).pow(2)
    return (err * face_weight(fake.config).to(x0.device)).mean()


def _level_and_noise(x0: Tensor, cfg: DMDConfig, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    low, high = cfg.level_range
    u = torch.rand(x0.shape[0], generator=gen, device=x0.device) * (high - low) + low
    noise = torch.randn(x0.shape, generator=gen, device=x0.device)
    return shift_sigmas(u, cfg.shift), noise


def train_dmd(
    cfg: DMDConfig,
    student: FlowActMMDiT,
    teacher: FlowActMMDiT,
    encoder: nn.Module,
    data: LatentSet,
    text_table: Tensor,
    workdir: Path | None,
    progress: bool = True,
    piece_seconds: float = math.inf,
) -> tuple[FlowActMMDiT, EMA, StageState]:
    """DMD of `student` (a copy is trained; the fake score starts from it too) against the
    frozen `teacher`; resumable, at most `piece_seconds` now out of the stage's `cfg.seconds`."""
    device = data.latents.device
    teacher = teacher.eval().requires_grad_(False)
    encoder = encoder.eval().requires_grad_(False)
    student = copy.deepcopy(student).requires_grad_(True).train()
    fake = copy.deepcopy(student).train()
    ema = EMA(student, cfg.ema_decay)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, betas=(0.0, 0.99), weight_decay=0)
    fake_opt = torch.optim.AdamW(fake.parameters(), lr=cfg.fake_lr, betas=(0.0, 0.99))
    state = StageState(
        {"student": student, "fake": fake, "ema": ema.model}, {"opt": opt, "fake_opt": fake_opt}
    )
    path = workdir / cfg.name / "state.pt" if workdir is not None else None
    if path is not None:
        state.load(path)
    gen = torch.Generator(device).manual_seed(cfg.seed + state.step)
    mc = student.config
    max_rollout = min(cfg.max_rollout, data.chunks - mc.stream_chunks)

    def step(i: int) -> Tensor:
        lr = cosine_lr(cfg.lr, i, progress_of(state, cfg.steps, cfg.seconds), cfg.warmup, 0.2)
        for group in opt.param_groups:
            group["lr"] = lr
        rows = torch.randint(len(data), (cfg.batch,), generator=gen, device=device)
        emitted = int(torch.randint(max_rollout + 1, (1,), generator=gen, device=device))
        conditions = session_conditions(
            data,
            rows,
            encoder,
            text_table,
            mc.latents_per_chunk,
            mc.audio_overlap,
            emitted + mc.stream_chunks,
        )
        guidance = torch.full((cfg.batch,), cfg.guidance, device=device)
        reference = data.latents[rows, :1].float()
        inputs, level = rollout(student, reference, conditions, emitted, guidance, gen, cfg.shift)
        x0 = generated(student, inputs, level, guidance)
        g_loss = generator_loss(x0, fake, teacher, inputs, guidance, cfg, gen)
        opt.zero_grad(set_to_none=True)
        g_loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        ema.update(student, i)
        with torch.no_grad():  # the fake score follows the updated student
            x0 = generated(student, inputs, level, guidance)
        for _ in range(cfg.fake_updates):
            loss = fake_loss(fake, inputs, x0, cfg, gen)
            fake_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(fake.parameters(), 1.0)
            fake_opt.step()
        return g_loss.detach()

    budget = min(piece_seconds, cfg.seconds - state.seconds)
    run_steps(state, step, cfg.steps, path, budget, cfg.save_every, cfg.name, progress)
    student.eval()
    return student, ema, state


def _args(inputs: ModelInputs) -> tuple:
    return inputs.x, inputs.t, inputs.audio, inputs.text, inputs.text_mask, inputs.n_context
