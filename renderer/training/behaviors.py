"""Behaviors of the synthetic avatar world: controls, labelled behaviors, timelines.

A character is driven by `len(CONTROLS)` ground-truth controls per frame (25 fps), each a float
in a small fixed range. Mouth openness comes from speech (`speech.mouth_from_pcm`); everything
else is idle motion (sways, blinks, glances) plus the behaviors commanded on the four prompt
channels, blended in and out over `RAMP_SECONDS` so that prompt changes are smooth transitions.

Every behavior has training prompts and held-out paraphrases (`heldout`) that training never
shows; evaluation commands behaviors with the held-out ones. The first four training phrasings
of each behavior were written with the held-out ones; the rest were written later, in two
sets, by people who never saw the held-out ones. The second set was kept only where no held-out
phrasing lies nearer to it in MiniLM space than `HELDOUT_CEILING`, the nearest any of the first
four came to one; the third (`ADDED_PHRASINGS`) only under the stricter `ADDED_CEILING`. So more
phrasings widen what training covers without bringing the test's phrasings into it.

`classify` reads behaviors back from a window of controls (ground truth or the pose probe's
reading of generated frames) by nearest prototype, which is what the behavior-accuracy metric
uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from flowact.renderer.presets import BEHAVIOR_CHANNELS
from flowact.renderer.training.phrasings import ADDED_PHRASINGS
from flowact.schemas.timebase import FPS, FRAMES_PER_CHUNK

CONTROLS: tuple[str, ...] = (
    "mouth",  # 0 closed .. 1 wide open, from the speech envelope
    "yaw",  # -1 .. 1 head turned screen-left .. screen-right
    "pitch",  # -1 up .. 1 down
    "roll",  # -1 .. 1 head tilted toward screen-left .. screen-right
    "smile",  # -1 frown .. 1 smile
    "brows",  # 0 rest .. 1 raised
    "gaze_x",  # -1 .. 1
    "gaze_y",  # -1 up .. 1 down
    "eyes",  # 0 shut (blink) .. 1 wide
    "l_raise",  # screen-left upper arm: 0 down .. 1 straight up
    "l_bend",  # forearm angle relative to the upper arm, -1 .. 1
    "r_raise",
    "r_bend",
    "lean",  # 0 upright .. 1 leaning toward the viewer
)
C = {name: i for i, name in enumerate(CONTROLS)}
# the largest MiniLM cosine of a training phrasing to a held-out one ("tilts the head to the
# left" against "head tilted over to the left", 0.922)
HELDOUT_CEILING = 0.925
# the nearest an added phrasing (`ADDED_PHRASINGS`) may come to a held-out one: under the 90th
# percentile of the second set's (0.82), so the test's phrasings stay as far from training
ADDED_CEILING = 0.80
RAMP_SECONDS = 0.24
EYES_REST = 0.75


@dataclass(frozen=True)
class Behavior:
    """A labelled behavior: what it sets, what oscillates, and how people ask for it."""

    name: str
    channel: str
    prompts: tuple[str, ...]  # training phrasings
    heldout: tuple[str, ...]  # evaluation phrasings, never trained on
    targets: tuple[tuple[str, float], ...] = ()  # control -> value held while active
    oscillate: tuple[tuple[str, float, float], ...] = ()  # control, amplitude, Hz


# fmt: off
_WRITTEN: tuple[Behavior, ...] = (
    # posture
    Behavior("tilt_left", "posture",
             ("tilts the head to the left", "leans the head to one side, left",
              "cocks the head toward the left shoulder", "tips the head left",
              "tilts the head slightly to the left, curious",
              "rolls the head toward the left side", "lets the head drop toward the left shoulder",
              "gives a quizzical head tilt to the left", "bends the neck sideways to the left",
              "tilts head left, puzzled", "angles the head over to the left",
              "holds the head tilted to the left", "cants the head leftward, as if wondering"),
             ("inclines the head leftward", "head tilted over to the left"),
             (("roll", -0.8),)),
    Behavior("tilt_right", "posture",
             ("tilts the head to the right", "leans the head to one side, right",
              "cocks the head toward the right shoulder", "tips the head right",
              "tilts the head slightly to the right, curious",
              "rolls the head toward the right side",
              "lets the head fall toward the right shoulder",
              "gives a puzzled head tilt to the right", "bends the neck sideways to the right",
              "tilts head right, confused", "angles the head over to the right",
              "holds the head tilted to the right", "cants the head rightward, as if wondering"),
             ("inclines the head rightward", "head tilted over to the right"),
             (("roll", 0.8),)),
    Behavior("lean_in", "posture",
             ("leans slightly forward, listening", "leans in toward the viewer",
              "moves closer to the camera", "bends forward with interest",
              "leans toward the camera", "tilts the upper body forward, engaged",
              "leans forward to hear better", "brings the torso closer to the viewer",
              "inclines the body forward attentively", "leans in closer, curious",
              "shifts the upper body toward the viewer", "bends the torso forward a little",
              "leans forward as if sharing a secret", "comes forward toward the screen"),
             ("draws nearer, attentive", "inclines the body toward the camera"),
             (("lean", 1.0),)),
    # gaze (the planner puts nods and head shakes on this channel too)
    Behavior("nod", "gaze",
             ("nods", "nods firmly", "gives a clear nod", "nods the head up and down",
              "nods in agreement", "nods a few times", "bobs the head up and down",
              "gives an approving nod", "nods yes", "nods along while listening",
              "moves the head up and down, agreeing", "nods slowly, understanding",
              "gives a couple of quick nods", "signals yes with a nod"),
             ("bobs the head in agreement", "signals yes with the head"),
             (), (("pitch", 0.8, 2.5),)),
    Behavior("shake", "gaze",
             ("shakes the head", "shakes the head slightly", "gives a small head shake",
              "turns the head side to side", "shakes the head no",
              "shakes the head in disagreement", "moves the head left and right, saying no",
              "gives a firm head shake", "shakes the head slowly, disapproving",
              "signals no by shaking the head", "shakes the head a few times",
              "refuses with a shake of the head", "shakes the head in disbelief"),
             ("signals no with the head", "wags the head left and right"),
             (), (("yaw", 0.8, 2.0),)),
    Behavior("look_up", "gaze",
             ("looks up and to the side, thinking", "glances upward in thought",
              "raises the eyes to the ceiling", "looks up", "looks upward, pondering",
              "gazes up at the ceiling", "turns the eyes upward, thinking it over",
              "glances up while remembering something", "lifts the gaze upward",
              "looks up thoughtfully", "raises the head and looks up",
              "stares up and to the side, recalling", "casts the eyes upward, searching for words",
              "directs the eyes upward in thought"),
             ("gazes upward, pondering", "eyes turned to the sky"),
             (("gaze_y", -1.0), ("gaze_x", 0.5), ("pitch", -0.5))),
    Behavior("look_down", "gaze",
             ("looks down for a moment", "looks down, considering the question", "lowers the gaze",
              "glances at the floor", "looks down at the ground", "drops the gaze to the floor",
              "looks down shyly", "lowers the head and eyes", "glances downward, thinking",
              "stares down at the floor for a second", "looks down, lost in thought",
              "turns the eyes down", "looks downward, reflecting"),
             ("casts the eyes downward", "peers down toward the ground"),
             (("gaze_y", 1.0), ("pitch", 0.6))),
    Behavior("look_left", "gaze",
             ("looks to the left", "glances aside briefly", "turns the eyes to the left",
              "looks off to the left side", "glances over to the left",
              "looks left and keeps looking", "gazes toward the left", "directs the eyes leftward",
              "looks away to the left", "peers toward something on the left",
              "moves the eyes left and holds there", "casts a glance to the left",
              "looks left, distracted"),
             ("peeks over to the left", "shifts the gaze leftward"),
             (("gaze_x", -1.0), ("yaw", -0.5))),
    Behavior("look_right", "gaze",
             ("looks to the right", "glances to the right side", "turns the eyes to the right",
              "looks off to the right", "glances over to the right",
              "looks right and holds the gaze", "gazes toward the right",
              "directs the eyes rightward", "looks away to the right",
              "peers toward something on the right", "casts a glance to the right",
              "looks right, distracted", "moves the eyes to the right side"),
             ("peeks over to the right", "shifts the gaze rightward"),
             (("gaze_x", 1.0), ("yaw", 0.5))),
    # face
    Behavior("smile", "face",
             ("smiles warmly", "breaks into a gentle smile", "smiles", "grins happily",
              "smiles brightly", "gives a friendly smile", "smiles softly, pleased",
              "puts on a big smile", "smiles back at the viewer", "flashes a quick smile",
              "looks happy and smiles", "shows a kind smile", "smiles with satisfaction"),
             ("beams with joy", "wears a cheerful expression"),
             (("smile", 1.0),)),
    Behavior("frown", "face",
             ("frowns", "looks displeased", "frowns with concern", "pulls a sad face",
              "frowns unhappily", "knits the brows and frowns", "looks sad",
              "scowls in displeasure", "turns down the corners of the mouth",
              "makes an unhappy face", "frowns, disappointed", "looks upset and frowns",
              "furrows the brow in disapproval"),
             ("scowls unhappily", "wears a gloomy expression"),
             (("smile", -1.0), ("brows", -0.3))),
    Behavior("surprise", "face",
             ("raises the eyebrows with a curious look", "looks surprised",
              "widens the eyes in surprise", "raises both eyebrows", "looks amazed",
              "opens the eyes wide, astonished", "raises the brows in surprise",
              "makes a surprised face", "looks startled", "reacts with wide eyes",
              "lifts the eyebrows high, shocked", "looks taken aback",
              "shows surprise with raised eyebrows", "stares wide-eyed in astonishment"),
             ("looks astonished", "appears startled, eyebrows up"),
             (("brows", 1.0), ("eyes", 1.15))),
    # gesture
    Behavior("wave", "gesture",
             ("waves with the right hand", "raises a hand and waves hello",
              "gives a friendly wave", "waves goodbye with the right hand", "waves hello",
              "waves the right hand in greeting", "lifts the right hand and waves",
              "waves at the viewer", "says hi with a wave", "waves bye",
              "greets the camera with a wave", "waves cheerfully", "raises the right hand, waving",
              "gives a little wave goodbye"),
             ("greets with a waving hand", "lifts a hand in a goodbye wave"),
             (("r_raise", 0.55), ("r_bend", 0.5)), (("r_bend", 0.2, 2.2),)),
    Behavior("spread", "gesture",
             ("spreads both arms wide", "opens the arms in a wide sweep",
              "stretches both arms out to the sides", "holds the arms wide open",
              "spreads the arms out wide", "opens both arms to the sides",
              "extends both arms outward", "flings both arms out to the sides",
              "holds both arms out sideways", "spreads the arms in a welcoming gesture",
              "stretches the arms wide apart", "makes a wide open-arms gesture",
              "reaches both arms out to either side", "spreads both arms, palms open"),
             ("extends the arms sideways", "arms flung out wide"),
             (("l_raise", 0.5), ("r_raise", 0.5), ("l_bend", 0.1), ("r_bend", 0.1))),
    Behavior("raise_both", "gesture",
             ("raises both hands", "throws both arms up in the air", "lifts both arms high",
              "puts both hands up", "raises both arms overhead", "puts both arms up in the air",
              "lifts both hands above the head", "throws both hands up, celebrating",
              "reaches both arms straight up", "raises the arms high in victory",
              "stretches both arms toward the sky", "holds both hands up high",
              "shoots both arms up, cheering", "lifts the arms straight above the head"),
             ("reaches both arms toward the sky", "holds both hands overhead"),
             (("l_raise", 0.85), ("r_raise", 0.85), ("l_bend", 0.0), ("r_bend", 0.0))),
    Behavior("point", "gesture",
             ("points to the side with the right hand", "points at something to the right",
              "extends the right arm and points", "indicates the right with a pointed arm",
              "points to the right", "points with the right hand to the side",
              "points off to the right side", "stretches the right arm out, pointing",
              "gestures to the right with a pointing finger",
              "points toward something on the right", "directs attention to the right by pointing",
              "holds the right arm out and points", "points sideways with the right arm",
              "points the right index finger to the side"),
             ("gestures toward the right with an outstretched arm", "directs attention rightward"),
             (("r_raise", 0.5), ("r_bend", 0.05))),
    Behavior("hand_chest", "gesture",
             ("touches the chest with the right hand", "places a hand on the heart",
              "rests a hand on the chest", "puts the right hand over the heart",
              "places the right hand on the chest", "lays a hand over the heart",
              "presses the right hand to the chest", "puts a hand on the chest, sincerely",
              "holds the right hand against the heart", "touches the heart, moved",
              "brings the right hand to the chest", "rests the right palm on the chest",
              "puts the hand on the heart, grateful", "covers the heart with the right hand"),
             ("lays a palm against the chest", "holds a hand to the heart"),
             (("r_raise", 0.05), ("r_bend", -0.6))),
)
# fmt: on

BEHAVIORS: tuple[Behavior, ...] = tuple(
    replace(b, prompts=b.prompts + ADDED_PHRASINGS.get(b.name, ())) for b in _WRITTEN
)

BEHAVIOR_INDEX = {b.name: i for i, b in enumerate(BEHAVIORS)}
CHANNEL_BEHAVIORS: dict[str, tuple[int, ...]] = {
    ch: tuple(i for i, b in enumerate(BEHAVIORS) if b.channel == ch) for ch in BEHAVIOR_CHANNELS
}


def prompt_table() -> tuple[list[str], dict[int, list[int]], dict[int, list[int]]]:
    """All prompt strings, and per behavior the ids of its training and held-out prompts."""
    texts: list[str] = []
    train: dict[int, list[int]] = {}
    heldout: dict[int, list[int]] = {}
    for i, b in enumerate(BEHAVIORS):
        train[i] = list(range(len(texts), len(texts) + len(b.prompts)))
        texts += b.prompts
        heldout[i] = list(range(len(texts), len(texts) + len(b.heldout)))
        texts += b.heldout
    return texts, train, heldout


def training_phrasings() -> dict[str, list[str]]:
    """Per behavior channel, the phrasings the world trains on (what a world-trained
    checkpoint's prompt anchors name)."""
    return {
        ch: [p for b in CHANNEL_BEHAVIORS[ch] for p in BEHAVIORS[b].prompts]
        for ch in BEHAVIOR_CHANNELS
    }


def heldout_neighbours(table: np.ndarray) -> list[dict]:
    """How a text encoder places each held-out paraphrase: `table` `[len(prompts), D]` holds the
    embeddings of `prompt_table()`'s strings. Per held-out prompt, the behavior whose training
    prompts' mean direction is nearest by cosine, the similarity to its own behavior's and the
    best other one's. A paraphrase nearer another behavior's prompts is one the renderer can
    only follow by what it learned beyond that nearness."""
    texts, train, heldout = prompt_table()
    unit = table / np.linalg.norm(table, axis=-1, keepdims=True)
    centres = np.stack([unit[train[b]].mean(0) for b in range(len(BEHAVIORS))])
    centres /= np.linalg.norm(centres, axis=-1, keepdims=True)
    rows = []
    for b, ids in heldout.items():
        for i in ids:
            sims = centres @ unit[i]
            other = int(np.argmax(np.where(np.arange(len(BEHAVIORS)) == b, -np.inf, sims)))
            rows.append(
                {
                    "behavior": BEHAVIORS[b].name,
                    "prompt": texts[i],
                    "nearest": BEHAVIORS[int(np.argmax(sims))].name,
                    "own": float(sims[b]),
                    "other": BEHAVIORS[other].name,
                    "other_similarity": float(sims[other]),
                }
            )
    return rows


# ---------------------------------------------------------------------------------- timelines


@dataclass(frozen=True)
class TimelineConfig:
    """How behavior segments are laid out over a clip; lengths in chunks (0.48 s)."""

    min_chunks: int = 2
    max_chunks: int = 8
    idle_prob: float = 0.35  # a segment with no prompt on that channel
    heldout: bool = False  # use the held-out paraphrases
    # the training phrasings to draw from, where not all of them (a checkpoint's record of what
    # it was trained on); the draws are the same, over each behavior's shorter list
    trained: frozenset[str] | None = None


@dataclass
class Timeline:
    """Per frame and channel: behavior id and prompt id (-1 = none). `[T, channels]` each."""

    behavior: np.ndarray
    prompt: np.ndarray

    @property
    def frames(self) -> int:
        return self.behavior.shape[0]


def sample_timeline(frames: int, rng: np.random.Generator, cfg: TimelineConfig) -> Timeline:
    """Random behavior segments per channel, switching on chunk boundaries."""
    texts, train, heldout = prompt_table()
    phrasings = heldout if cfg.heldout else train
    if cfg.trained is not None:
        if cfg.heldout:
            seen = sorted({texts[i] for ids in heldout.values() for i in ids} & cfg.trained)
            if seen:
                raise ValueError(
                    f"{len(seen)} held-out phrasings are among those trained on, such as "
                    f"{seen[0]!r}: a reading of them would not be held out"
                )
        else:
            phrasings = {b: [i for i in ids if texts[i] in cfg.trained] for b, ids in train.items()}
            missing = [BEHAVIORS[b].name for b, ids in phrasings.items() if not ids]
            if missing:
                raise ValueError(
                    f"none of the training phrasings of {', '.join(missing)} is among those "
                    "trained on"
                )
    behavior = np.full((frames, len(BEHAVIOR_CHANNELS)), -1, np.int64)
    prompt = np.full_like(behavior, -1)
    for ch, channel in enumerate(BEHAVIOR_CHANNELS):
        start = 0
        while start < frames:
            length = int(rng.integers(cfg.min_chunks, cfg.max_chunks + 1)) * FRAMES_PER_CHUNK
            stop = min(frames, start + length)
            if rng.random() >= cfg.idle_prob:
                b = int(rng.choice(CHANNEL_BEHAVIORS[channel]))
                behavior[start:stop, ch] = b
                prompt[start:stop, ch] = int(rng.choice(phrasings[b]))
            start = stop
    return Timeline(behavior, prompt)


def constant_timeline(frames: int, behaviors: dict[str, str], heldout: bool = True) -> Timeline:
    """One behavior per channel for the whole clip (first phrasing); channel -> behavior name."""
    _, train, held = prompt_table()
    phrasings = held if heldout else train
    behavior = np.full((frames, len(BEHAVIOR_CHANNELS)), -1, np.int64)
    prompt = np.full_like(behavior, -1)
    for ch, channel in enumerate(BEHAVIOR_CHANNELS):
        if channel in behaviors:
            b = BEHAVIOR_INDEX[behaviors[channel]]
            behavior[:, ch], prompt[:, ch] = b, phrasings[b][0]
    return Timeline(behavior, prompt)


# ----------------------------------------------------------------------------------- controls


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def idle_controls(frames: int, rng: np.random.Generator) -> np.ndarray:
    """Breathing sways, slow gaze drift and blinks, starting from the neutral pose; `[T, K]`."""
    t = np.arange(frames) / FPS
    out = np.zeros((frames, len(CONTROLS)), np.float32)

    def sway(amplitude: float) -> np.ndarray:
        freqs = rng.uniform(0.08, 0.35, 2)
        phases = rng.uniform(0, 2 * math.pi, 2)
        wave = sum(
            np.sin(2 * math.pi * f * t + p) - math.sin(p)
            for f, p in zip(freqs, phases, strict=True)
        )
        return amplitude * wave / 2

    for name, amplitude in (("yaw", 0.12), ("pitch", 0.08), ("roll", 0.08), ("lean", 0.05)):
        out[:, C[name]] = sway(amplitude)
    out[:, C["lean"]] = np.abs(out[:, C["lean"]])
    for name in ("gaze_x", "gaze_y"):
        out[:, C[name]] = sway(0.2)
    for side in ("l", "r"):
        out[:, C[f"{side}_raise"]] = 0.05 + np.abs(sway(0.03))
        out[:, C[f"{side}_bend"]] = 0.1 + sway(0.05)
    out[:, C["eyes"]] = EYES_REST * _blinks(frames, rng)
    return out


def _blinks(frames: int, rng: np.random.Generator) -> np.ndarray:
    """1 with dips to 0 every 2-6 s (a blink lasts about 0.16 s)."""
    open_ = np.ones(frames, np.float32)
    at = rng.uniform(0.5, 3.0) * FPS
    while at < frames:
        centre = int(at)
        for d, v in ((-2, 0.5), (-1, 0.1), (0, 0.0), (1, 0.2), (2, 0.6)):
            if 0 <= centre + d < frames:
                open_[centre + d] = min(open_[centre + d], v)
        at += rng.uniform(2.0, 6.0) * FPS
    return open_


def behavior_controls(base: np.ndarray, timeline: Timeline) -> np.ndarray:
    """Blend each channel's behavior segments into `base` controls `[T, K]`."""
    out = base.copy()
    frames = timeline.frames
    t = np.arange(frames) / FPS
    ramp = RAMP_SECONDS
    for ch in range(len(BEHAVIOR_CHANNELS)):
        ids = timeline.behavior[:, ch]
        edges = np.flatnonzero(np.diff(ids)) + 1
        starts = np.concatenate([[0], edges])
        stops = np.concatenate([edges, [frames]])
        for start, stop in zip(starts, stops, strict=True):
            b = ids[start]
            if b < 0:
                continue
            behavior = BEHAVIORS[b]
            t0, t1 = start / FPS, stop / FPS
            # segments at the clip start are already on: the clip begins mid-behavior
            rise = 1.0 if start == 0 else _smoothstep((t - t0) / ramp)
            env = rise * (1 - _smoothstep((t - t1) / ramp)) * (t >= t0)
            for name, value in behavior.targets:
                k = C[name]
                out[:, k] += env * (value - out[:, k])
            for name, amplitude, hz in behavior.oscillate:
                out[:, C[name]] += env * amplitude * np.sin(2 * math.pi * hz * (t - t0))
    return out


def controls_for(
    timeline: Timeline, mouth: np.ndarray, rng: np.random.Generator, start_neutral: bool = True
) -> np.ndarray:
    """Ground-truth controls `[T, K]`: idle motion, behaviors and the speech mouth."""
    base = idle_controls(timeline.frames, rng)
    if not start_neutral:
        base[:, C["eyes"]] = EYES_REST
    out = behavior_controls(base, timeline)
    out[:, C["mouth"]] = mouth[: timeline.frames]
    return out


def neutral_controls(frames: int = 1) -> np.ndarray:
    """The rest pose of a reference image: mouth closed, eyes open, arms down; `[T, K]`."""
    out = np.zeros((frames, len(CONTROLS)), np.float32)
    out[:, C["eyes"]] = EYES_REST
    for side in ("l", "r"):
        out[:, C[f"{side}_raise"]] = 0.05
        out[:, C[f"{side}_bend"]] = 0.1
    return out


def random_controls(n: int, rng: np.random.Generator) -> np.ndarray:
    """Independent controls spread over their ranges: probe training sees every combination."""
    u = rng.uniform(-1, 1, (n, len(CONTROLS))).astype(np.float32)
    out = u.copy()
    out[:, C["mouth"]] = np.clip(rng.uniform(-0.3, 1.0, n), 0, 1)
    out[:, C["brows"]] = rng.uniform(-0.3, 1.0, n)
    out[:, C["eyes"]] = np.clip(rng.uniform(-0.2, 1.2, n), 0, 1.15)
    for side in ("l", "r"):
        out[:, C[f"{side}_raise"]] = rng.uniform(0, 0.9, n)
        out[:, C[f"{side}_bend"]] = rng.uniform(-0.7, 0.75, n)
    out[:, C["lean"]] = rng.uniform(0, 1, n)
    return out


# ----------------------------------------------------------------------------- classification


def _channel_features() -> dict[str, tuple[tuple[str, str], ...]]:
    """What each channel's classifier looks at in a window of controls: the spread of every
    control one of the channel's behaviors oscillates, and the mean of every control one holds
    or oscillates (a surprise is its raised brows and its wide eyes)."""
    out = {}
    for channel in BEHAVIOR_CHANNELS:
        swung: list[str] = []
        held: list[str] = []
        for b in BEHAVIORS:
            if b.channel != channel:
                continue
            swung += [name for name, *_ in b.oscillate if name not in swung]
            held += [name for name, _ in b.targets if name not in held]
        held += [name for name in swung if name not in held]
        out[channel] = tuple(("std", n) for n in swung) + tuple(("mean", n) for n in held)
    return out


_FEATURES = _channel_features()


def window_features(controls: np.ndarray, channel: str) -> np.ndarray:
    """Features of windows of controls `[..., T, K]` for one channel -> `[..., n]`."""
    cols = []
    for stat, name in _FEATURES[channel]:
        x = controls[..., C[name]]
        cols.append(x.mean(-1) if stat == "mean" else x.std(-1))
    return np.stack(cols, -1)


def prototypes(window: int = 2 * FRAMES_PER_CHUNK, seed: int = 0) -> dict[str, np.ndarray]:
    """Per channel `[1 + n_behaviors, n]`: row 0 idle, then the channel's behaviors in order,
    each the feature mean of steady-state ground-truth windows."""
    rng = np.random.default_rng(seed)
    frames = 6 * window
    out = {}
    for channel in BEHAVIOR_CHANNELS:
        rows = []
        for b in (None, *CHANNEL_BEHAVIORS[channel]):
            feats = []
            for _ in range(16):
                spec = {} if b is None else {channel: BEHAVIORS[b].name}
                timeline = constant_timeline(frames, spec)
                ctrl = controls_for(timeline, np.zeros(frames, np.float32), rng, False)
                wins = ctrl[: (frames // window) * window].reshape(-1, window, len(CONTROLS))
                feats.append(window_features(wins, channel))
            rows.append(np.concatenate(feats).mean(0))
        out[channel] = np.stack(rows)
    return out


def feature_names(channel: str) -> list[str]:
    """`window_features`' columns for one channel, named as "mean smile", "std yaw"."""
    return [f"{stat} {name}" for stat, name in _FEATURES[channel]]


def own_features(behavior: Behavior) -> list[str]:
    """The `feature_names` a behavior sets: the mean of each control it holds and the spread
    of each it swings."""
    held = [f"mean {name}" for name, _ in behavior.targets]
    return held + [f"std {name}" for name, *_ in behavior.oscillate]


# The least `classify` divides a feature's distance by. A feature that barely differs between
# a channel's behaviors must not decide among them by less than the pose probe can read it:
# the left forearm's bend spreads by 0.039 over the gesture prototypes, and the probe reads a
# window's mean bend from ground-truth renders with an error of 0.065 (`probe_error`, the
# eighth checkpoint's probe), so unfloored, ground truth's gestures read 0.90 (0.96 floored at
# 0.05, 0.998 at 0.1, 2 minutes x 4 unseen characters). Only the gesture channel's two bend
# features spread by less.
SCALE_FLOOR = 0.1


def classifier_scale(
    channel: str, protos: dict[str, np.ndarray], floor: float = SCALE_FLOOR
) -> np.ndarray:
    """What `classify` divides each feature's distance by `[n]`: its spread over the channel's
    prototypes, and never less than `floor`."""
    return np.maximum(protos[channel].std(0), floor)


def classify(
    controls: np.ndarray, channel: str, protos: dict[str, np.ndarray], floor: float = SCALE_FLOOR
) -> np.ndarray:
    """Windows of controls `[N, T, K]` -> behavior id per window (-1 idle), by nearest prototype
    in features scaled by `classifier_scale`."""
    return classify_features(window_features(controls, channel), channel, protos, floor)


def classify_features(
    feats: np.ndarray, channel: str, protos: dict[str, np.ndarray], floor: float = SCALE_FLOOR
) -> np.ndarray:
    """`classify` of windows already turned into `window_features` `[N, n]`."""
    table = protos[channel]
    scale = classifier_scale(channel, protos, floor)
    dist = (((feats[:, None] - table[None]) / scale) ** 2).sum(-1)  # [N, 1 + behaviors]
    labels = np.array((-1, *CHANNEL_BEHAVIORS[channel]))
    return labels[dist.argmin(-1)]
