"""Stages 1 and 2: diffusion forcing on the stream-buffer layout (paper 2.2).

Every step trains the velocity model on a batch of buffers cut from world latents
(`data.sample_buffer`):

- per-chunk noise levels: mostly the staggered pattern inference produces (chunk c of the
  stream at `u = (c + r) / chunks`, one shared r), otherwise independent sorted levels (plain
  diffusion forcing); both warped by the sampler's shift;
- the fake-causal mask through `n_context` (reference + memory are clean context);
- intra- and cross-prompt segments: the world switches behaviors on chunk boundaries, so many
  buffers hold a prompt change (`BufferBatch.prompt_change` counts them);
- image-to-video: buffers at the session start are, with `i2v_prob`, built as inference builds
  them (every stream chunk the reference latent noised to its start level) and the first chunk's
  loss is weighted by `i2v_weight`;
- generated-GT memory (the self-forcing variant): with `gen_memory_prob`, after
  `gen_memory_after` steps, memory latents are replaced by the model's own one-step denoising of
  their noised versions, so memory carries the errors inference memory carries;
- a refinement-format loss every `refine_every` steps: the short-term latent noised and denoised
  with reference and long-term memory as context, the input memory refinement uses;
- condition dropout (text, audio) so that classifier-free guidance has an unconditional branch;
- with `behavior_weight` and a frozen `BehaviorHead`, the behavior readout term
  (`behavior_readout.behavior_loss`): the x0 prediction of each stream chunk read as the
  ground-truth chunk is read.

Stage 1 runs with zero audio; stage 2 (`audio=True`) trains the audio encoder jointly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from flowact.renderer.model import FlowActMMDiT
from flowact.renderer.sampler import shift_sigmas
from flowact.renderer.training.behavior_readout import BehaviorHead, behavior_loss
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


@dataclass(frozen=True)
class DiffusionConfig:
    name: str = "stage1"  # state directory under the workdir
    audio: bool = False  # stage 2: audio conditioning on, encoder trained jointly
    steps: int = 4000
    batch: int = 32
    lr: float = 3e-4
    audio_lr: float = 1e-3
    warmup: int = 200
    seconds: float = math.inf  # the stage's whole wall-clock budget (over all pieces)
    save_every: int = 500
    seed: int = 0
    shift: float = 3.0  # the sampler's level warp
    staggered_prob: float = 0.7
    start_prob: float = 0.2  # buffers near the session start (placeholder memory)
    i2v_prob: float = 0.5  # of buffers at chunk 0: built as at inference start
    i2v_weight: float = 2.0
    text_drop: float = 0.1
    audio_drop: float = 0.1
    gen_memory_prob: float = 0.25
    gen_memory_after: int = 500
    gen_level: tuple[float, float] = (0.15, 0.5)
    refine_every: int = 4
    refine_weight: float = 0.5
    ema_decay: float = 0.999
    behavior_weight: float = 0.0  # the behavior readout term; needs a head (train_diffusion)
    # the chance that a training phrasing's embedding is mixed with another of its behavior's,
    # per buffer (`prompt_mix.PromptMix`, the world's prompts only); 0 = none
    prompt_mix: float = 0.0
    compile: bool = False  # torch.compile the DiT's blocks (each buffer shape compiles once)


def sample_levels(
    batch: int, chunks: int, cfg: DiffusionConfig, gen: torch.Generator, device: torch.device
) -> Tensor:
    """Noise level of each stream chunk, oldest first; `[B, chunks]`."""
    r = 1 - torch.rand(batch, 1, generator=gen, device=device)  # (0, 1]
    staggered = (torch.arange(chunks, device=device) + r) / chunks
    independent = torch.rand(batch, chunks, generator=gen, device=device).sort(-1).values
    pick = torch.rand(batch, 1, generator=gen, device=device) < cfg.staggered_prob
    return shift_sigmas(torch.where(pick, staggered, independent), cfg.shift)


def _forward(
    model: FlowActMMDiT, x: Tensor, t: Tensor, b: BufferBatch, frames: slice, n_context: int
) -> Tensor:
    return model(x, t, b.audio[:, frames], b.text[:, frames], b.text_mask[:, frames], n_context)


@torch.no_grad()
def generated_memory(
    model: FlowActMMDiT, b: BufferBatch, level: Tensor, gen: torch.Generator
) -> Tensor:
    """Memory latents noised to `level` `[B]` and denoised in one step by the model, with the
    reference as context: the generated-GT latents of paper 2.2. Returns `[B, M, C, h, w]`."""
    cfg = model.config
    frames = slice(0, cfg.context_latents)
    x0 = b.x0[:, frames]
    noise = torch.randn(x0.shape, generator=gen, device=x0.device)
    t = torch.cat([torch.zeros_like(level)[:, None], level[:, None].expand(-1, frames.stop - 1)], 1)
    tt = t[..., None, None, None]
    x_t = torch.cat([x0[:, :1], ((1 - tt) * x0 + tt * noise)[:, 1:]], 1)
    v = _forward(model, x_t, t, b, frames, 1)
    return (x_t - tt * v)[:, 1:].float()


def diffusion_loss(
    model: FlowActMMDiT,
    b: BufferBatch,
    cfg: DiffusionConfig,
    gen: torch.Generator,
    use_gen_memory: bool = False,
    refine: bool = False,
    head: BehaviorHead | None = None,
) -> Tensor:
    """The stage-1/2 loss on one batch of buffers (modifies `b` in place: memory, dropout);
    with `head` and `cfg.behavior_weight`, the behavior readout term added."""
    mc = model.config
    batch, device = b.x0.shape[0], b.x0.device
    lpc, n_ctx = mc.latents_per_chunk, mc.context_latents
    dropped = _drop_conditions(b, cfg, gen)
    if use_gen_memory:
        level = torch.empty(batch, device=device).uniform_(*cfg.gen_level, generator=gen)
        pick = torch.rand(batch, 1, generator=gen, device=device) < cfg.gen_memory_prob
        keep = ~(pick & b.real_memory)[..., None, None, None]
        with autocast(device):
            fake = generated_memory(model, b, level, gen)
        b.x0[:, 1:n_ctx] = torch.where(keep, b.x0[:, 1:n_ctx], fake)

    levels = sample_levels(batch, mc.stream_chunks, cfg, gen, device)  # [B, chunks]
    start = (b.k == 0) & (torch.rand(batch, generator=gen, device=device) < cfg.i2v_prob)
    exact = (torch.arange(mc.stream_chunks, device=device) + 1.0) / mc.stream_chunks
    levels = torch.where(start[:, None], shift_sigmas(exact, cfg.shift), levels)
    t_stream = levels.repeat_interleave(lpc, 1)  # [B, stream latents]
    tt = t_stream[..., None, None, None]
    x0 = b.x0[:, n_ctx:]
    noise = torch.randn(x0.shape, generator=gen, device=device)
    anchor = torch.where(start[:, None, None, None, None], b.x0[:, :1].expand_as(x0), x0)
    x_t = (1 - tt) * anchor + tt * noise
    # target: the velocity whose Euler step lands on x0 (plain flow matching when anchor = x0)
    target = torch.where(
        start[:, None, None, None, None], (x_t - x0) / tt.clamp_min(1e-3), noise - x0
    )
    x = torch.cat([b.x0[:, :n_ctx], x_t], 1)
    t = torch.cat([torch.zeros(batch, n_ctx, device=device), t_stream], 1)
    with autocast(device):
        v = _forward(model, x, t, b, slice(0, mc.buffer_latents), n_ctx)[:, n_ctx:]
    pixel = face_weight(mc).to(device)  # [h, w]
    err = ((v.float() - target).pow(2) * pixel).mean((2, 3, 4))  # [B, stream latents]
    weight = torch.ones_like(err)
    weight[:, :lpc] = torch.where(start[:, None], cfg.i2v_weight, 1.0)
    loss = (err * weight).sum() / weight.sum()
    if head is not None and cfg.behavior_weight > 0:
        x0_pred = x_t - tt * v.float()  # where the velocity's Euler step to level 0 lands
        readout = behavior_loss(head, x0_pred, x0, b.x0[:, 0], levels, ~dropped)
        loss = loss + cfg.behavior_weight * readout
    if refine:
        loss = loss + cfg.refine_weight * refinement_loss(model, b, gen)
    return loss


def refinement_loss(model: FlowActMMDiT, b: BufferBatch, gen: torch.Generator) -> Tensor:
    """Denoise the short-term memory with reference + long-term memory as context (paper 2.5);
    only buffers whose short-term slot holds a real latent count."""
    mc = model.config
    anchors = 1 + mc.long_term_size
    frames = slice(0, mc.context_latents)
    device = b.x0.device
    real = b.real_memory[:, -mc.short_term_size :].all(-1)  # [B]
    if not real.any():
        return b.x0.new_zeros(())
    x0 = b.x0[:, anchors : mc.context_latents]
    level = torch.rand(x0.shape[0], 1, generator=gen, device=device) * 0.6 + 0.02
    noise = torch.randn(x0.shape, generator=gen, device=device)
    tt = level[..., None, None, None]
    x = torch.cat([b.x0[:, :anchors], (1 - tt) * x0 + tt * noise], 1)
    t = torch.cat(
        [torch.zeros(x.shape[0], anchors, device=device), level.expand(-1, mc.short_term_size)], 1
    )
    with autocast(device):
        v = _forward(model, x, t, b, frames, anchors)[:, anchors:]
    err = ((v.float() - (noise - x0)).pow(2) * face_weight(mc).to(device)).mean((1, 2, 3, 4))
    return (err * real).sum() / real.sum()


def _drop_conditions(b: BufferBatch, cfg: DiffusionConfig, gen: torch.Generator) -> Tensor:
    """Drop text and audio of random buffers; returns which lost their text `[B]`."""
    batch, device = b.x0.shape[0], b.x0.device
    drop_text = torch.rand(batch, generator=gen, device=device) < cfg.text_drop
    b.text_mask &= ~drop_text[:, None, None]
    b.text = b.text * (~drop_text)[:, None, None, None]
    drop_audio = torch.rand(batch, generator=gen, device=device) < cfg.audio_drop
    b.audio = b.audio * (~drop_audio)[:, None, None, None]
    return drop_text


def train_diffusion(
    cfg: DiffusionConfig,
    model: FlowActMMDiT,
    encoder: nn.Module,
    data: LatentSet,
    text_table: Tensor,
    workdir: Path | None,
    ema: EMA | None = None,
    progress: bool = True,
    piece_seconds: float = math.inf,
    head: BehaviorHead | None = None,
) -> StageState:
    """Run a diffusion-forcing stage (resumable from `workdir/<name>/state.pt`) for at most
    `piece_seconds` now; the schedule spans `cfg.steps` or `cfg.seconds`, whichever ends first.
    `head`, frozen, reads the behavior readout term where `cfg.behavior_weight` asks for it."""
    if cfg.behavior_weight > 0 and head is None:
        raise ValueError(f"{cfg.name}: behavior_weight {cfg.behavior_weight} needs a behavior head")
    device = data.latents.device
    ema = ema or EMA(model, cfg.ema_decay)
    groups = [{"params": list(model.parameters()), "lr": cfg.lr, "base": cfg.lr}]
    if cfg.audio:
        groups.append(
            {"params": list(encoder.parameters()), "lr": cfg.audio_lr, "base": cfg.audio_lr}
        )
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.99), weight_decay=0.01)
    modules = {"model": model, "encoder": encoder, "ema": ema.model}
    state = StageState(modules, {"opt": opt})
    path = workdir / cfg.name / "state.pt" if workdir is not None else None
    if path is not None:
        state.load(path)
    gen = torch.Generator(device).manual_seed(cfg.seed + state.step)
    mix = PromptMix.world(cfg.prompt_mix) if cfg.prompt_mix > 0 else None
    if cfg.compile:
        model.compile_blocks()
    model.train()
    encoder.train(cfg.audio)

    def step(i: int) -> float:
        progress_ = progress_of(state, cfg.steps, cfg.seconds)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(group["base"], i, progress_, cfg.warmup)
        audio = encoder if cfg.audio else None
        b = sample_buffer(data, model.config, text_table, gen, cfg.batch, audio, mix=mix)
        loss = diffusion_loss(
            model,
            b,
            cfg,
            gen,
            use_gen_memory=i >= cfg.gen_memory_after and cfg.gen_memory_prob > 0,
            refine=cfg.refine_every > 0 and i % cfg.refine_every == 0,
            head=head,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        ema.update(model, i)
        return loss.detach()

    budget = min(piece_seconds, cfg.seconds - state.seconds)
    run_steps(state, step, cfg.steps, path, budget, cfg.save_every, cfg.name, progress)
    model.eval()
    encoder.eval()
    return state


def fixed_batch_losses(
    model: FlowActMMDiT, b: BufferBatch, cfg: DiffusionConfig, seed: int = 0
) -> float:
    """The loss on a fixed batch with fixed noise (for tests and progress checks)."""
    gen = torch.Generator(b.x0.device).manual_seed(seed)
    copy = BufferBatch(**{k: v.clone() for k, v in vars(b).items()})
    with torch.no_grad():
        return float(diffusion_loss(model, copy, cfg, gen))
