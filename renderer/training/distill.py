"""Stage 3: distillation to 3 NFE per chunk, with classifier-free guidance folded in (paper 2.4).

The teacher is the stage-2 model run as the streaming sampler runs it with `micro_steps = M`:
one chunk period is M whole-buffer forwards, each with classifier-free guidance (conditional and
text-dropped branches, `v_u + g (v_c - v_u)`). The student takes the same period in one
forward (`micro_steps = 1`: 3 chunks x 1 step = 3 NFE per chunk): from the buffer before the
period, its velocity must carry every stream chunk to where the teacher's M guided micro-steps
carried it, `v* = (x_teacher_after - x_before) / (t_after - t_before)` per chunk. That is naive
step distillation with the NFEs partitioned into the 3 stream segments, and the guidance scale
enters the student through its CFG embedding (`guidance=g`); with `no_guidance_prob` the student
also learns the default scale with no guidance given, so a caller that passes none still gets a
guided model. Score distillation (DMD) on streaming rollouts follows in `dmd.py`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from flowact.renderer.model import FlowActMMDiT
from flowact.renderer.sampler import FlowMatchEulerSampler
from flowact.renderer.training.common import (
    EMA,
    StageState,
    autocast,
    cosine_lr,
    progress_of,
    run_steps,
)
from flowact.renderer.training.data import BufferBatch, LatentSet, face_weight, sample_buffer
from flowact.renderer.training.prompt_mix import PromptMix
from flowact.renderer.training.train import generated_memory


@dataclass(frozen=True)
class DistillConfig:
    name: str = "stage3"
    steps: int = 2000
    batch: int = 32
    lr: float = 1e-4
    warmup: int = 100
    seconds: float = math.inf
    save_every: int = 250
    seed: int = 0
    shift: float = 3.0
    teacher_micro_steps: int = 4
    guidance_range: tuple[float, float] = (1.0, 3.0)
    default_guidance: float = 2.0
    no_guidance_prob: float = 0.25
    i2v_prob: float = 0.5
    gen_memory_prob: float = 0.25
    gen_level: tuple[float, float] = (0.15, 0.5)
    ema_decay: float = 0.999
    compile: bool = False  # torch.compile the teacher's and the student's blocks
    prompt_mix: float = 0.0  # as DiffusionConfig.prompt_mix: the teacher is asked on them too


def guided_velocity(
    model: FlowActMMDiT,
    x: Tensor,
    t: Tensor,
    audio: Tensor,
    text: Tensor,
    text_mask: Tensor,
    scale: Tensor,
) -> Tensor:
    """Classifier-free guidance over the text prompts: `v_u + g (v_c - v_u)`, g `[B]`."""
    n_ctx = model.config.context_latents
    two = lambda z: torch.cat([z, z])  # noqa: E731
    mask = torch.cat([text_mask, torch.zeros_like(text_mask)])
    v = model(two(x), two(t), two(audio), two(text), mask, n_ctx).float()
    cond, uncond = v.chunk(2)
    return uncond + scale[:, None, None, None, None] * (cond - uncond)


@torch.no_grad()
def teacher_period(
    teacher: FlowActMMDiT, x: Tensor, b: BufferBatch, scale: Tensor, micro_steps: int, shift: float
) -> tuple[Tensor, Tensor, Tensor]:
    """One chunk period of the M-micro-step teacher from stream `x` `[B, S, C, h, w]` at the
    period's start levels. Returns (stream after, levels before `[chunks]`, levels after)."""
    mc = teacher.config
    sampler = FlowMatchEulerSampler(shift, mc.stream_chunks, micro_steps)
    table = sampler.level_table(x.device)  # [M + 1, chunks]
    ctx = b.x0[:, : mc.context_latents]
    lpc = mc.latents_per_chunk
    for s in range(micro_steps):
        t_stream = table[s].repeat_interleave(lpc).expand(x.shape[0], -1)
        t = torch.cat([torch.zeros(x.shape[0], ctx.shape[1], device=x.device), t_stream], 1)
        with autocast(x.device):
            full = torch.cat([ctx, x], 1)
            v = guided_velocity(teacher, full, t, b.audio, b.text, b.text_mask, scale)
            v = v[:, ctx.shape[1] :]
        x = sampler.step(v, table[s].repeat_interleave(lpc), table[s + 1].repeat_interleave(lpc), x)
    return x, table[0], table[-1]


def distill_loss(
    student: FlowActMMDiT,
    teacher: FlowActMMDiT,
    b: BufferBatch,
    cfg: DistillConfig,
    gen: torch.Generator,
) -> Tensor:
    """Step-distillation loss of one batch (memory may be swapped for generated latents)."""
    mc = student.config
    batch, device = b.x0.shape[0], b.x0.device
    n_ctx, lpc = mc.context_latents, mc.latents_per_chunk
    if cfg.gen_memory_prob > 0:
        level = torch.empty(batch, device=device).uniform_(*cfg.gen_level, generator=gen)
        pick = torch.rand(batch, 1, generator=gen, device=device) < cfg.gen_memory_prob
        keep = ~(pick & b.real_memory)[..., None, None, None]
        with autocast(device):
            fake = generated_memory(teacher, b, level, gen)
        b.x0[:, 1:n_ctx] = torch.where(keep, b.x0[:, 1:n_ctx], fake)

    sampler = FlowMatchEulerSampler(cfg.shift, mc.stream_chunks, 1)
    t0 = sampler.level_table(device)[0].repeat_interleave(lpc)  # [S]
    tt = t0[None, :, None, None, None]
    x0 = b.x0[:, n_ctx:]
    start = (b.k == 0) & (torch.rand(batch, generator=gen, device=device) < cfg.i2v_prob)
    anchor = torch.where(start[:, None, None, None, None], b.x0[:, :1].expand_as(x0), x0)
    x_start = (1 - tt) * anchor + tt * torch.randn(x0.shape, generator=gen, device=device)

    low, high = cfg.guidance_range
    scale = torch.rand(batch, generator=gen, device=device) * (high - low) + low
    none = torch.rand(batch, generator=gen, device=device) < cfg.no_guidance_prob
    scale = torch.where(none, torch.full_like(scale, cfg.default_guidance), scale)
    x_end, before, after = teacher_period(
        teacher, x_start, b, scale, cfg.teacher_micro_steps, cfg.shift
    )
    delta = (after - before).repeat_interleave(lpc)[None, :, None, None, None]
    target = (x_end - x_start) / delta

    t = torch.cat([torch.zeros(batch, n_ctx, device=device), t0.expand(batch, -1)], 1)
    x = torch.cat([b.x0[:, :n_ctx], x_start], 1)
    with autocast(device):
        v_given = student(x, t, b.audio, b.text, b.text_mask, n_ctx, guidance=scale)
        v_none = student(x, t, b.audio, b.text, b.text_mask, n_ctx) if none.any() else v_given
    v = torch.where(none[:, None, None, None, None], v_none, v_given)[:, n_ctx:]
    return ((v.float() - target).pow(2) * face_weight(mc).to(device)).mean()


def train_distill(
    cfg: DistillConfig,
    teacher: FlowActMMDiT,
    encoder: nn.Module,
    data: LatentSet,
    text_table: Tensor,
    workdir: Path | None,
    student: FlowActMMDiT | None = None,
    progress: bool = True,
    piece_seconds: float = math.inf,
) -> tuple[FlowActMMDiT, EMA, StageState]:
    """Distil `teacher` (frozen) into a student initialised from it; resumable, at most
    `piece_seconds` now out of the stage's `cfg.seconds`."""
    device = data.latents.device
    teacher = teacher.eval().requires_grad_(False)
    encoder = encoder.eval().requires_grad_(False)
    if student is None:
        student = copy.deepcopy(teacher).requires_grad_(True)
        if student.guidance_embed is not None:
            # a zero guidance embedding: the student starts out as the teacher
            nn.init.zeros_(student.guidance_embed.mlp[-1].weight)
            nn.init.zeros_(student.guidance_embed.mlp[-1].bias)
    student.train()
    ema = EMA(student, cfg.ema_decay)  # before compiling: the copy that is shipped stays plain
    if cfg.compile:
        teacher.compile_blocks()
        student.compile_blocks()
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    state = StageState({"student": student, "ema": ema.model}, {"opt": opt})
    path = workdir / cfg.name / "state.pt" if workdir is not None else None
    if path is not None:
        state.load(path)
    gen = torch.Generator(device).manual_seed(cfg.seed + state.step)
    mix = PromptMix.world(cfg.prompt_mix) if cfg.prompt_mix > 0 else None

    def step(i: int) -> float:
        lr = cosine_lr(cfg.lr, i, progress_of(state, cfg.steps, cfg.seconds), cfg.warmup, 0.2)
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.no_grad():
            b = sample_buffer(data, student.config, text_table, gen, cfg.batch, encoder, mix=mix)
        loss = distill_loss(student, teacher, b, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        ema.update(student, i)
        return loss.detach()

    budget = min(piece_seconds, cfg.seconds - state.seconds)
    run_steps(state, step, cfg.steps, path, budget, cfg.save_every, cfg.name, progress)
    student.eval()
    return student, ema, state
