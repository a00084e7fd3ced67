"""The synthetic avatar world: procedural characters drawn from ground-truth controls.

An identity is a row of `len(IDENTITY)` floats (face shape, skin / hair / shirt / iris colours,
hair style, glasses, hat, background colours and pattern). `render(identity, controls, size)`
draws frames `[B, T, 3, H, W]` in [-1, 1] at any resolution: every part (background, torso,
arms, neck, head, hair, ears, eyes, brows, nose, mouth, glasses, hat) is a signed-distance
shape composited with a one-pixel anti-aliased edge, all frames at once in torch, so the same
code draws on CPU for tests and on the GPU for training.

Identities are drawn from seeds: `sample_identities(n, split="train")` never yields an identity
of `split="eval"` (disjoint seed ranges), which is how evaluation gets unseen characters.
`make_clips` generates training clips: frames, 16 kHz speech, controls and prompts;
`WorldClips` is the world as a `base.ClipSource`, what the VAE stage and the latents draw from.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from flowact.renderer.training import behaviors as bh
from flowact.renderer.training import speech
from flowact.renderer.training.base import Clip
from flowact.schemas.timebase import FRAMES_PER_CHUNK, SAMPLES_PER_FRAME

# ------------------------------------------------------------------------------- identities

_FIELDS: tuple[tuple[str, int], ...] = (
    ("skin", 3),
    ("hair", 3),
    ("shirt", 3),
    ("bg1", 3),
    ("bg2", 3),
    ("iris", 3),
    ("hat_rgb", 3),
    ("glasses_rgb", 3),
    ("face_w", 1),
    ("face_ratio", 1),
    ("eye_gap", 1),
    ("mouth_w", 1),
    ("mouth_y", 1),
    ("glasses", 1),
    ("hat", 1),
    ("hair_style", 1),
    ("pattern", 1),
    ("pattern_freq", 1),
    ("pattern_angle", 1),
    ("pattern_phase", 1),
)
IDENTITY: dict[str, slice] = {}
_start = 0
for _name, _size in _FIELDS:
    IDENTITY[_name] = slice(_start, _start + _size)
    _start += _size
IDENTITY_DIM = _start
HAIR_STYLES = 4  # short, long, bald, bun
PATTERNS = 5  # flat, stripes, checker, gradient, dots
_EVAL_SEED_OFFSET = 1_000_000_007


def _hsv(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HSV in [0, 1] to RGB `[..., 3]`."""
    k = (np.stack([5.0, 3.0, 1.0], -1) + h[..., None] * 6) % 6
    return v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1)


def sample_identities(n: int, split: str = "train", seed: int = 0) -> Tensor:
    """`[n, IDENTITY_DIM]` identities; `split` "train" and "eval" never share one."""
    if split not in ("train", "eval"):
        raise ValueError("split is train or eval")
    rng = np.random.default_rng(seed + (_EVAL_SEED_OFFSET if split == "eval" else 0))
    out = np.zeros((n, IDENTITY_DIM), np.float32)

    def put(name: str, value: np.ndarray) -> None:
        out[:, IDENTITY[name]] = value.reshape(n, -1)

    tone = rng.uniform(0, 1, n)[:, None]
    light, dark = np.array([0.98, 0.84, 0.72]), np.array([0.36, 0.23, 0.15])
    put("skin", np.clip(light + (dark - light) * tone + rng.normal(0, 0.03, (n, 3)), 0, 1))
    hair_palette = np.array(
        [
            [0.08, 0.06, 0.05],
            [0.35, 0.2, 0.1],
            [0.85, 0.7, 0.35],
            [0.6, 0.2, 0.08],
            [0.7, 0.7, 0.72],
        ]
    )
    hair = hair_palette[rng.integers(0, len(hair_palette), n)]
    vivid = _hsv(rng.uniform(0, 1, n), np.full(n, 0.8), np.full(n, 0.8))
    put("hair", np.where(rng.random((n, 1)) < 0.2, vivid, hair))
    put("shirt", _hsv(rng.uniform(0, 1, n), rng.uniform(0.4, 0.9, n), rng.uniform(0.35, 0.95, n)))
    bg_hue = rng.uniform(0, 1, n)
    put("bg1", _hsv(bg_hue, rng.uniform(0.1, 0.6, n), rng.uniform(0.4, 0.95, n)))
    put(
        "bg2",
        _hsv(
            (bg_hue + rng.uniform(-0.2, 0.2, n)) % 1,
            rng.uniform(0.1, 0.7, n),
            rng.uniform(0.2, 0.9, n),
        ),
    )
    irises = np.array([[0.25, 0.15, 0.08], [0.2, 0.4, 0.7], [0.25, 0.5, 0.3], [0.4, 0.4, 0.45]])
    put("iris", irises[rng.integers(0, len(irises), n)])
    put("hat_rgb", _hsv(rng.uniform(0, 1, n), rng.uniform(0.3, 0.9, n), rng.uniform(0.2, 0.9, n)))
    put("glasses_rgb", rng.uniform(0.0, 0.5, (n, 1)) * np.ones(3) + rng.normal(0, 0.05, (n, 3)))
    put("face_w", rng.uniform(0.15, 0.2, n))
    put("face_ratio", rng.uniform(1.1, 1.35, n))
    put("eye_gap", rng.uniform(0.055, 0.075, n))
    put("mouth_w", rng.uniform(0.04, 0.058, n))
    put("mouth_y", rng.uniform(0.36, 0.46, n))
    put("glasses", (rng.random(n) < 0.3).astype(np.float32))
    put("hat", (rng.random(n) < 0.25).astype(np.float32))
    put("hair_style", rng.integers(0, HAIR_STYLES, n).astype(np.float32))
    put("pattern", rng.integers(0, PATTERNS, n).astype(np.float32))
    put("pattern_freq", rng.uniform(3, 9, n))
    put("pattern_angle", rng.uniform(0, math.pi, n))
    put("pattern_phase", rng.uniform(0, 2 * math.pi, n))
    return torch.from_numpy(out)


def identity_targets(identity: Tensor) -> Tensor:
    """What the probe reads as identity: visible colours, shape, accessories, style and
    pattern as one-hots; `[B, 30]`, roughly unit scale."""
    f = {name: identity[:, sl] for name, sl in IDENTITY.items()}
    style = torch.nn.functional.one_hot(f["hair_style"][:, 0].long(), HAIR_STYLES).float()
    pattern = torch.nn.functional.one_hot(f["pattern"][:, 0].long(), PATTERNS).float()
    shape = torch.cat([(f["face_w"] - 0.175) / 0.015, (f["face_ratio"] - 1.225) / 0.075], 1)
    colours = torch.cat([f["skin"], f["hair"], f["shirt"], f["bg1"], f["bg2"]], 1) * 2 - 1
    return torch.cat([colours, shape, f["glasses"], f["hat"], style, pattern], 1)


IDENTITY_TARGET_DIM = 15 + 2 + 2 + HAIR_STYLES + PATTERNS

# ---------------------------------------------------------------------------------- drawing


def _ellipse(x: Tensor, y: Tensor, cx: Tensor, cy: Tensor, rx: Tensor, ry: Tensor) -> Tensor:
    """Approximate signed distance to an ellipse (exact on the axes, good near the edge)."""
    qx, qy = (x - cx) / rx, (y - cy) / ry
    k = torch.sqrt(qx * qx + qy * qy + 1e-12)
    grad = torch.sqrt((qx / rx) ** 2 + (qy / ry) ** 2 + 1e-12)
    return k * (k - 1) / grad


def _capsule(x: Tensor, y: Tensor, ax, ay, bx, by, r) -> Tensor:
    """Signed distance to the segment a-b thickened by r."""
    px, py, dx, dy = x - ax, y - ay, bx - ax, by - ay
    h = ((px * dx + py * dy) / (dx * dx + dy * dy + 1e-12)).clamp(0, 1)
    return torch.sqrt((px - h * dx) ** 2 + (py - h * dy) ** 2 + 1e-12) - r


def _box(x: Tensor, y: Tensor, cx, cy, hx, hy) -> Tensor:
    dx, dy = (x - cx).abs() - hx, (y - cy).abs() - hy
    outside = torch.sqrt(dx.clamp_min(0) ** 2 + dy.clamp_min(0) ** 2 + 1e-12)
    return outside + torch.maximum(dx, dy).clamp_max(0)


class _Canvas:
    """Frames `[N, 3, H, W]` and the composite operation."""

    def __init__(self, n: int, height: int, width: int, device: torch.device) -> None:
        self.pixel = 1.0 / height
        ys = (torch.arange(height, device=device) + 0.5) / height
        xs = (torch.arange(width, device=device) + 0.5) / height + 0.5 - 0.5 * width / height
        self.y = ys.view(1, height, 1).expand(n, height, width)
        self.x = xs.view(1, 1, width).expand(n, height, width)
        self.image = torch.zeros(n, 3, height, width, device=device)

    def alpha(self, sd: Tensor) -> Tensor:
        return (0.5 - sd / self.pixel).clamp(0, 1)

    def paint(self, sd_or_alpha: Tensor, colour: Tensor, is_alpha: bool = False) -> None:
        """colour `[N, 3]`; paints where the shape is (or with the given coverage)."""
        a = (sd_or_alpha if is_alpha else self.alpha(sd_or_alpha))[:, None]  # [N, 1, H, W]
        self.image = self.image + a * (colour[:, :, None, None] - self.image)


def _p(t: Tensor) -> Tensor:
    """Per-frame scalar `[N]` to `[N, 1, 1]` for broadcasting over pixels."""
    return t[:, None, None]


def render(identity: Tensor, controls: Tensor, size: tuple[int, int], batch: int = 256) -> Tensor:
    """identity `[B, IDENTITY_DIM]`, controls `[B, T, K]` -> frames `[B, T, 3, H, W]` in [-1, 1]."""
    b, t, _ = controls.shape
    ident = identity.to(controls.device, controls.dtype)[:, None].expand(b, t, -1)
    flat_i, flat_c = ident.reshape(b * t, -1), controls.reshape(b * t, -1)
    out = [
        _draw(flat_i[s : s + batch], flat_c[s : s + batch], size) for s in range(0, b * t, batch)
    ]
    return torch.cat(out).view(b, t, 3, *size) * 2 - 1


def _draw(ident: Tensor, ctrl: Tensor, size: tuple[int, int]) -> Tensor:
    """One batch of frames `[N, 3, H, W]` in [0, 1]."""
    cv = _Canvas(ident.shape[0], size[0], size[1], ident.device)
    f = {name: ident[:, sl] for name, sl in IDENTITY.items()}
    c = {name: ctrl[:, i] for i, name in enumerate(bh.CONTROLS)}
    _background(cv, f)
    # lean: the body grows about the bottom centre, as if closer to the camera
    zoom = _p(1 + 0.1 * c["lean"])
    x0 = 0.5
    cv.x = x0 + (cv.x - x0) / zoom
    cv.y = 1.0 + (cv.y - 1.0) / zoom
    _body(cv, f, c, x0)
    _head(cv, f, c, x0)
    _arms(cv, f, c, x0)
    return cv.image.clamp(0, 1)


def _background(cv: _Canvas, f: dict[str, Tensor]) -> None:
    pattern = f["pattern"][:, 0].round()
    freq, angle, phase = (
        _p(f[k][:, 0]) for k in ("pattern_freq", "pattern_angle", "pattern_phase")
    )
    u = cv.x * torch.cos(angle) + cv.y * torch.sin(angle)
    stripes = (torch.sin(2 * math.pi * freq * u + phase) * 3).sigmoid()
    checker = (
        torch.sin(2 * math.pi * freq * cv.x) * torch.sin(2 * math.pi * freq * cv.y) * 6
    ).sigmoid()
    cell_x = (cv.x * freq) % 1 - 0.5
    cell_y = (cv.y * freq) % 1 - 0.5
    dots = cv.alpha((torch.sqrt(cell_x**2 + cell_y**2) - 0.25) / freq)
    masks = torch.stack([torch.zeros_like(u), stripes, checker, cv.y.clone(), dots])  # [5, N, H, W]
    mix = masks.gather(0, pattern.long().view(1, -1, 1, 1).expand(1, *u.shape))[0]
    cv.image = f["bg1"][:, :, None, None] + mix[:, None] * (f["bg2"] - f["bg1"])[:, :, None, None]


def _body(cv: _Canvas, f: dict[str, Tensor], c: dict[str, Tensor], x0: float) -> None:
    skin = f["skin"]
    cv.paint(_box(cv.x, cv.y, x0, 0.68, 0.045, 0.1), skin * 0.88)  # neck
    torso = _ellipse(cv.x, cv.y, x0, 1.06, _p(torch.full_like(c["lean"], 0.34)), 0.3)
    cv.paint(torso, f["shirt"])
    collar = _ellipse(cv.x, cv.y, x0, 0.765, 0.06, 0.03)
    cv.paint(torch.maximum(collar, 0.765 - cv.y), skin * 0.88)


def _head(cv: _Canvas, f: dict[str, Tensor], c: dict[str, Tensor], x0: float) -> None:
    # head-local coordinates: rotate about the neck by the roll angle
    angle = _p(c["roll"] * 0.35)
    pivot_y = 0.62
    dx, dy = cv.x - x0, cv.y - pivot_y
    x = x0 + dx * torch.cos(angle) + dy * torch.sin(angle)
    y = pivot_y - dx * torch.sin(angle) + dy * torch.cos(angle)
    yaw, pitch = _p(c["yaw"]), _p(c["pitch"])
    rx = _p(f["face_w"][:, 0]) * (1 - 0.06 * yaw.abs())
    ry = _p(f["face_w"][:, 0] * f["face_ratio"][:, 0])
    cx, cy = x0 + 0.02 * yaw, 0.38 + 0.02 * pitch
    fx, fy = cx + 0.05 * yaw, cy + 0.04 * pitch  # features move more: the head turns
    skin, hair = f["skin"], f["hair"]
    style = _p(f["hair_style"][:, 0].round())

    long_hair = torch.maximum(_ellipse(x, y, cx, cy + 0.06, rx * 1.3, ry * 1.2), y - cy - ry)
    cv.paint(long_hair + (style != 1) * 10.0, hair * 0.9)
    for side in (-1.0, 1.0):
        cv.paint(
            _ellipse(x, y, cx + side * rx * 0.97 - 0.01 * yaw, cy + 0.02, 0.028, 0.045), skin * 0.85
        )
    cv.paint(_ellipse(x, y, cx, cy, rx, ry), skin)
    cap = torch.maximum(_ellipse(x, y, cx, cy - 0.02, rx * 1.06, ry * 1.02), y - (cy - 0.5 * ry))
    cv.paint(cap + (style == 2) * 10.0, hair)
    bun = _ellipse(x, y, cx, cy - ry * 1.05, 0.055, 0.05)
    cv.paint(bun + (style != 3) * 10.0, hair)

    smile = _p(c["smile"])
    _eyes(cv, f, c, x, y, fx, fy)
    blush = _ellipse(x, y, fx, fy + 0.05, 0.12, 0.03)
    pink = torch.tensor([0.95, 0.45, 0.5], device=x.device).expand_as(skin)
    cv.paint(cv.alpha(blush) * 0.45 * smile.clamp(0, 1), pink, is_alpha=True)
    cv.paint(_ellipse(x, y, fx + 0.012 * yaw, fy + 0.035, 0.012, 0.022), skin * 0.82)  # nose
    _mouth(cv, f, c, x, y, fx, fy, ry)
    _accessories(cv, f, x, y, cx, cy, fx, fy, rx, ry)


def _eyes(cv, f, c, x, y, fx, fy) -> None:
    gap = _p(f["eye_gap"][:, 0])
    open_ = _p(c["eyes"].clamp(0, 1.3))
    brows = _p(c["brows"])
    frown = (-_p(c["smile"])).clamp(0, 1)
    ey = fy - 0.035
    white = torch.tensor([0.97, 0.97, 0.95], device=x.device).expand_as(f["skin"])
    dark = f["hair"] * 0.6
    # knitted brows shade the brow line, a band about as large as a smile's blush: the lips'
    # corners alone move a frown by less than half a latent cell, which no VAE kept
    furrow = _ellipse(x, y, fx, ey - 0.04, 0.10, 0.025)
    cv.paint(cv.alpha(furrow) * 0.5 * frown, f["skin"] * 0.5, is_alpha=True)
    for side in (-1.0, 1.0):
        ex = fx + side * gap
        eye = _ellipse(x, y, ex, ey, 0.03, 0.024 * open_ + 1e-3)
        cv.paint(eye, white)
        pupil = _ellipse(
            x, y, ex + 0.014 * _p(c["gaze_x"]), ey + 0.01 * _p(c["gaze_y"]), 0.013, 0.013
        )
        cv.paint(cv.alpha(torch.maximum(pupil, eye)), f["iris"] * 0.8, is_alpha=True)
        lashes = _capsule(x, y, ex - 0.03, ey, ex + 0.03, ey, 0.004)
        cv.paint(cv.alpha(lashes) * (1 - open_ / 0.3).clamp(0, 1), dark, is_alpha=True)
        # brows: raised with surprise, inner end lowered with a frown
        by = ey - 0.045 - 0.025 * brows
        tilt = 0.012 * frown
        inner_x, outer_x = ex - side * 0.028, ex + side * 0.032
        cv.paint(_capsule(x, y, inner_x, by + tilt, outer_x, by - 0.004, 0.007), dark)


def _mouth(cv, f, c, x, y, fx, fy, ry) -> None:
    mouth = _p(c["mouth"].clamp(0, 1))
    smile = _p(c["smile"])
    mw = _p(f["mouth_w"][:, 0]) * (1 - 0.2 * mouth)
    my = fy + _p(f["mouth_y"][:, 0]) * ry
    bend = y - my + 0.022 * smile * ((x - fx) / mw) ** 2  # corners up when smiling
    lips = f["skin"] * 0.6 + torch.tensor([0.3, 0.05, 0.08], device=x.device)
    cv.paint(_ellipse(x, bend, fx, 0.0, mw + 0.006, 0.006 + 0.03 * mouth), lips.clamp(0, 1))
    inside = torch.tensor([0.3, 0.05, 0.08], device=x.device).expand_as(lips)
    cv.paint(_ellipse(x, bend, fx, 0.0, mw, 0.002 + 0.028 * mouth), inside)


def _accessories(cv, f, x, y, cx, cy, fx, fy, rx, ry) -> None:
    glasses = _p(f["glasses"][:, 0]) < 0.5
    gap = _p(f["eye_gap"][:, 0])
    ey = fy - 0.035
    rings = [(_ellipse(x, y, fx + s * gap, ey, 0.042, 0.034)).abs() - 0.005 for s in (-1.0, 1.0)]
    bridge = _capsule(x, y, fx - gap + 0.042, ey, fx + gap - 0.042, ey, 0.004)
    frame = torch.minimum(torch.minimum(rings[0], rings[1]), bridge)
    cv.paint(frame + glasses * 10.0, f["glasses_rgb"].clamp(0, 1))
    no_hat = _p(f["hat"][:, 0]) < 0.5
    crown = _box(x, y, cx, cy - ry * 0.95, rx * 0.85, 0.07)
    brim = _box(x, y, cx, cy - ry * 0.78, rx * 1.3, 0.016)
    cv.paint(torch.minimum(crown, brim) + no_hat * 10.0, f["hat_rgb"])


def _arms(cv: _Canvas, f: dict[str, Tensor], c: dict[str, Tensor], x0: float) -> None:
    upper, fore, width = 0.13, 0.12, 0.035
    sleeve = f["shirt"] * 0.85
    for side, prefix in ((-1.0, "l"), (1.0, "r")):
        theta = _p(c[f"{prefix}_raise"]) * math.pi
        theta_f = theta + _p(c[f"{prefix}_bend"]) * 0.75 * math.pi
        sx, sy = x0 + side * 0.2, 0.8
        ex, ey = sx + side * upper * torch.sin(theta), sy + upper * torch.cos(theta)
        hx, hy = ex + side * fore * torch.sin(theta_f), ey + fore * torch.cos(theta_f)
        arm = torch.minimum(
            _capsule(cv.x, cv.y, sx, sy, ex, ey, width),
            _capsule(cv.x, cv.y, ex, ey, hx, hy, width * 0.9),
        )
        cv.paint(arm, sleeve)
        cv.paint(_ellipse(cv.x, cv.y, hx, hy, 0.03, 0.03), f["skin"] * 0.95)


def face_region(height: int, width: int) -> Tensor:
    """`[height, width]` bool mask of the region the world draws faces in, on a grid of frame
    pixels or latent pixels."""
    ys = (torch.arange(height) + 0.5) / height
    xs = (torch.arange(width) + 0.5) / height + 0.5 - 0.5 * width / height
    return ((xs[None] - 0.5) / 0.22) ** 2 + ((ys[:, None] - 0.4) / 0.26) ** 2 <= 1


def mouth_region(height: int, width: int) -> Tensor:
    """`[height, width]` bool mask of the region the world draws mouths in, over the identities'
    mouth sizes and places and the head's poses (about 96% of the pixels that opening a mouth
    changes), on a grid of frame pixels or latent pixels."""
    ys = (torch.arange(height) + 0.5) / height
    xs = (torch.arange(width) + 0.5) / height + 0.5 - 0.5 * width / height
    return ((xs[None] - 0.5) / 0.11) ** 2 + ((ys[:, None] - 0.45) / 0.11) ** 2 <= 1


def eye_region(height: int, width: int) -> Tensor:
    """`[height, width]` bool mask of the band the world draws eyes in, over the identities'
    eyes and the head's poses (about 97% of the pixels that the gaze changes), on a grid of
    frame pixels or latent pixels."""
    ys = (torch.arange(height) + 0.5) / height
    xs = (torch.arange(width) + 0.5) / height + 0.5 - 0.5 * width / height
    return ((xs[None] - 0.5) / 0.2) ** 2 + ((ys[:, None] - 0.33) / 0.08) ** 2 <= 1


def face_weight(
    height: int, width: int, gain: float = 3.0, mouth_gain: float = 1.0, eye_gain: float = 1.0
) -> Tensor:
    """Loss weight per pixel of that grid: `gain` over `face_region`, 1 elsewhere; times
    `mouth_gain` over `mouth_region` and `eye_gain` over the rest of `eye_region` (where the
    two meet, the mouth's); mean-normalised to 1."""
    mouth = mouth_region(height, width)
    eyes = eye_region(height, width) & ~mouth
    weight = 1 + (gain - 1) * face_region(height, width).float()
    weight = weight * (1 + (mouth_gain - 1) * mouth.float() + (eye_gain - 1) * eyes.float())
    return weight / weight.mean()


# ------------------------------------------------------------------------------------ clips


@dataclass(frozen=True)
class ClipConfig:
    """One generated clip: `chunks` chunks of 12 frames after a neutral reference frame."""

    chunks: int = 8
    size: tuple[int, int] = (128, 128)
    split: str = "train"
    heldout_prompts: bool = False
    babble_prob: float = 0.3
    speak_prob: float = 0.7


def make_clips(
    n: int,
    cfg: ClipConfig,
    rng: np.random.Generator,
    bank: list[np.ndarray] | None = None,
    device: str | torch.device = "cpu",
    identities: Tensor | None = None,
) -> Clip:
    """`n` clips with fresh identities (of `cfg.split`), speech, behaviors and frames; frame 0
    is the neutral pose."""
    frames = cfg.chunks * FRAMES_PER_CHUNK
    if identities is None:
        identities = sample_identities(n, cfg.split, int(rng.integers(1 << 30)))
    tl_cfg = bh.TimelineConfig(heldout=cfg.heldout_prompts)
    pcms, ctrls, behs, prompts = [], [], [], []
    for _ in range(n):
        pcm = speech.conversation(
            frames * SAMPLES_PER_FRAME / 16000, rng, bank, cfg.speak_prob, cfg.babble_prob
        )
        pcm = pcm[: frames * SAMPLES_PER_FRAME]
        timeline = bh.sample_timeline(frames, rng, tl_cfg)
        ctrls.append(bh.controls_for(timeline, speech.mouth_from_pcm(pcm), rng))
        pcms.append(pcm)
        behs.append(timeline.behavior)
        prompts.append(timeline.prompt)
    controls = torch.from_numpy(np.stack(ctrls)).to(device)
    neutral = torch.from_numpy(bh.neutral_controls(1)).to(device).expand(n, 1, -1)
    video = render(identities.to(device), torch.cat([neutral, controls], 1), cfg.size)
    return Clip(
        identity=identities.to(device),
        frames=video,
        pcm=torch.from_numpy(np.stack(pcms)).to(device),
        controls=controls,
        behavior=torch.from_numpy(np.stack(behs)).to(device),
        prompt=torch.from_numpy(np.stack(prompts)).to(device),
    )


@dataclass(frozen=True)
class WorldClips:
    """The world as a `base.ClipSource`: `make_clips` with `config` at the length asked for,
    speech from `bank` (None: babble only). Its held-out clips are of unseen identities."""

    config: ClipConfig = ClipConfig()
    bank: list[np.ndarray] | None = field(default=None, repr=False, compare=False)
    ground_truth: ClassVar[bool] = True

    @property
    def size(self) -> tuple[int, int]:
        return self.config.size

    def make(
        self, n: int, chunks: int, rng: np.random.Generator, device: str | torch.device = "cpu"
    ) -> Clip:
        return make_clips(n, replace(self.config, chunks=chunks), rng, self.bank, device)

    def heldout(self) -> WorldClips:
        return replace(self, config=replace(self.config, split="eval"))

    def training_phrasings(self) -> dict[str, list[str]]:
        return bh.training_phrasings()


def clip_stream(
    batch: int,
    cfg: ClipConfig,
    seed: int = 0,
    bank: list[np.ndarray] | None = None,
    device: str | torch.device = "cpu",
) -> Iterator[Clip]:
    """Endless batches of fresh clips."""
    rng = np.random.default_rng(seed)
    while True:
        yield make_clips(batch, cfg, rng, bank, device)
