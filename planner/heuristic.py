"""`HeuristicPlanner`: behaviors from prosody and keywords, no model.

Speaking: a speaking stance at the start of an utterance, a wave at greetings, gestures on words
that invite one ("huge", "you", "first"), beat gestures on emphasis, a nod at pauses, a curious
look on questions, smiles on warm words. Listening: an attentive stance and nods at the user's
pauses. Thinking: a pensive pose before the answer. Every behavior has several phrasings and a
seeded generator picks among them, avoiding the last ones used, so motion does not loop.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict, deque
from dataclasses import dataclass

from flowact.planner.base import PlanRequest, prompt, select
from flowact.planner.prosody import Prosody, analyse
from flowact.schemas import timebase as tb
from flowact.schemas.agent_settings import PlannerSettings
from flowact.schemas.messages import BehaviorPrompt, Channel

SECOND = tb.FPS


@dataclass(frozen=True)
class Cue:
    """A behavior: its channel, how long it holds, its rank (lower wins), its phrasings."""

    name: str
    channel: Channel
    frames: int
    rank: int
    phrases: tuple[str, ...]


# Durations are in frames; rank orders what is kept when a window offers too much (lower wins).
# The table is kept dense by hand.
# fmt: off
GREET = Cue("greet", "gesture", 2 * SECOND, 0, (
    "waves with the right hand", "raises a hand and waves hello", "gives a friendly wave"))
FAREWELL = Cue("farewell", "gesture", 2 * SECOND, 0, (
    "waves goodbye with the right hand", "lifts a hand in a goodbye wave"))
BIG = Cue("big", "gesture", 3 * SECOND // 2, 2, (
    "spreads both arms wide", "opens the arms in a wide sweep"))
SMALL = Cue("small", "gesture", 3 * SECOND // 2, 2, (
    "holds thumb and finger close together", "shows a small size with both hands"))
COUNT = Cue("count", "gesture", 3 * SECOND // 2, 2, (
    "counts on the fingers", "raises one finger to make a point"))
YOU = Cue("you", "gesture", 3 * SECOND // 2, 3, (
    "gestures toward the viewer with an open palm", "points gently at the viewer"))
SELF = Cue("self", "gesture", 3 * SECOND // 2, 3, (
    "touches the chest with the right hand", "places a hand on the heart"))
UNSURE = Cue("unsure", "gesture", 3 * SECOND // 2, 3, (
    "shrugs the shoulders slightly", "tilts a hand from side to side"))
BEAT = Cue("beat", "gesture", 6 * SECOND // 5, 4, (
    "moves the right hand to stress a point", "makes a small chopping motion with one hand",
    "opens both hands outward", "gestures with an open palm", "taps the air with a finger"))
AGREE = Cue("agree", "gaze", 4 * SECOND // 5, 2, ("nods firmly", "gives a clear nod"))
DISAGREE = Cue("disagree", "gaze", 4 * SECOND // 5, 2, (
    "shakes the head slightly", "gives a small head shake"))
NOD = Cue("nod", "gaze", 4 * SECOND // 5, 5, ("nods slightly", "gives a small nod", "nods slowly"))
GLANCE = Cue("glance", "gaze", SECOND, 6, ("glances aside briefly", "looks down for a moment"))
QUESTION = Cue("question", "face", 2 * SECOND, 1, (
    "raises the eyebrows with a curious look", "tilts the head with an inquiring expression"))
SMILE = Cue("smile", "face", 2 * SECOND, 3, (
    "smiles warmly", "breaks into a gentle smile", "smiles with the eyes"))
SPEAK = Cue("speak", "posture", 4 * SECOND, 1, (
    "faces the viewer and talks in a relaxed stance", "stands upright, engaged and talking",
    "talks with a relaxed, open posture"))
LISTEN = Cue("listen", "posture", 4 * SECOND, 1, (
    "leans slightly forward, listening", "stands still and listens attentively"))
ATTEND = Cue("attend", "gaze", 3 * SECOND, 2, (
    "looks at the speaker attentively", "keeps eye contact with the speaker"))
THINK = Cue("think", "gaze", 2 * SECOND, 0, (
    "looks up and to the side, thinking", "glances upward in thought",
    "looks down, considering the question"))
PONDER = Cue("ponder", "gesture", 2 * SECOND, 1, (
    "rests the chin on one hand", "touches the chin thoughtfully",
    "taps the lips with a finger, pondering"))
IDLE = Cue("idle", "posture", 4 * SECOND, 5, (
    "stands relaxed, breathing calmly", "rests in a calm, natural stance",
    "shifts the weight gently, at ease"))
# fmt: on

KEYWORDS: dict[str, Cue] = {}
for _cue_of, _words in (
    (GREET, "hello hi hey welcome greetings howdy"),
    (FAREWELL, "bye goodbye farewell"),
    (BIG, "big huge enormous everything whole lots massive giant"),
    (SMALL, "small little tiny bit slightly"),
    (COUNT, "first second third firstly secondly finally"),
    (YOU, "you your yourself"),
    (SELF, "me myself i'm mine"),
    (UNSURE, "maybe perhaps probably guess might unsure"),
    (AGREE, "yes yeah exactly absolutely sure indeed right"),
    (DISAGREE, "no not never nothing don't can't won't nope"),
    (SMILE, "great glad happy love wonderful thanks thank nice awesome lovely fun enjoy"),
):
    KEYWORDS.update(dict.fromkeys(_words.split(), _cue_of))

# Common words that would otherwise trigger a gesture in every sentence fire only sometimes.
FREQUENT = {"you", "your", "not", "right", "sure", "bit", "me"}
WORD = re.compile(r"[A-Za-z']+")


class HeuristicPlanner:
    """Behaviors from prosody and keywords; deterministic for a given seed and call sequence."""

    def __init__(self, *, seed: int = 0, max_prompts: int = 4, silence_db: float = -40.0) -> None:
        self.max_prompts = max_prompts
        self.silence_db = silence_db
        self._rng = random.Random(seed)
        self._recent: dict[str, deque[str]] = defaultdict(lambda: deque(maxlen=2))

    @classmethod
    def from_settings(cls, settings: PlannerSettings) -> HeuristicPlanner:
        return cls(seed=settings.seed, max_prompts=settings.max_prompts)

    async def plan(self, request: PlanRequest) -> list[BehaviorPrompt]:
        return self.plan_now(request)

    def plan_now(self, request: PlanRequest) -> list[BehaviorPrompt]:
        """`plan` without awaiting, for callers that need an answer at once (fallbacks)."""
        if request.state == "thinking":
            chosen = [(0, THINK), (SECOND // 5, PONDER)] if request.first else [(0, THINK)]
        elif request.state == "idle":
            chosen = [(0, IDLE)] if request.first or self._rng.random() < 0.3 else []
        elif request.state == "listening":
            chosen = self._listening(request, analyse(request.pcm, silence_db=self.silence_db))
        else:
            chosen = self._speaking(request, analyse(request.pcm, silence_db=self.silence_db))
        chosen = sorted(chosen, key=lambda c: (c[1].rank, c[0]))
        prompts = [self._prompt(request, offset, cue) for offset, cue in chosen]
        return select(prompts, self.max_prompts)

    # --- states --------------------------------------------------------------------------

    def _speaking(self, request: PlanRequest, prosody: Prosody) -> list[tuple[int, Cue]]:
        chosen: list[tuple[int, Cue]] = [(0, SPEAK)] if request.first else []
        for offset, word in _timed_words(request.text, prosody, request.frames):
            cue = KEYWORDS.get(word)
            if cue is None or (word in FREQUENT and self._rng.random() < 0.6):
                continue
            if not any(c is cue for _, c in chosen):
                chosen.append((offset, cue))
        if request.question:
            last = _last_voiced(prosody, request.frames)
            chosen.append((max(0, last - SECOND), QUESTION))
        gestured = [o for o, c in chosen if c.channel == "gesture"]
        for peak in prosody.peaks[:2]:
            if all(abs(peak - o) > SECOND for o in gestured):
                chosen.append((max(0, peak - SECOND // 5), BEAT))
                gestured.append(peak)
        for start, _stop in prosody.pauses[:1]:
            chosen.append((start, NOD if self._rng.random() < 0.7 else GLANCE))
        if not any(c is SMILE for _, c in chosen) and self._rng.random() < 0.15:
            chosen.append((self._rng.randrange(request.frames), SMILE))
        return chosen

    def _listening(self, request: PlanRequest, prosody: Prosody) -> list[tuple[int, Cue]]:
        chosen: list[tuple[int, Cue]] = [(0, LISTEN), (0, ATTEND)] if request.first else []
        nods = [start for start, _ in prosody.pauses]
        if not nods and prosody.speech_frames > request.frames // 2 and self._rng.random() < 0.5:
            nods = [request.frames * 2 // 3]
        chosen += [(frame, NOD) for frame in nods[:2]]
        if self._rng.random() < 0.2:
            chosen.append((self._rng.randrange(request.frames), SMILE))
        return chosen

    # --- helpers -------------------------------------------------------------------------

    def _prompt(self, request: PlanRequest, offset: int, cue: Cue) -> BehaviorPrompt:
        frames = max(cue.frames, request.frames) if cue.channel == "posture" else cue.frames
        return prompt(request, self._phrase(cue), cue.channel, offset, frames)

    def _phrase(self, cue: Cue) -> str:
        recent = self._recent[cue.name]
        fresh = [p for p in cue.phrases if p not in recent] or list(cue.phrases)
        phrase = self._rng.choice(fresh)
        recent.append(phrase)
        return phrase


def _timed_words(text: str, prosody: Prosody, frames: int) -> list[tuple[int, str]]:
    """Words with an estimated start frame: spread over the voiced span by character count."""
    words = WORD.findall(text.lower())
    if not words:
        return []
    spoken = prosody.voiced.nonzero()[0]
    first, last = (int(spoken[0]), int(spoken[-1]) + 1) if len(spoken) else (0, frames)
    total = sum(len(w) + 1 for w in words)
    out, seen = [], 0
    for word in words:
        out.append((first + (last - first) * seen // total, word))
        seen += len(word) + 1
    return out


def _last_voiced(prosody: Prosody, frames: int) -> int:
    spoken = prosody.voiced.nonzero()[0]
    return int(spoken[-1]) if len(spoken) else frames - 1
