"""`ScriptedResponder`: canned replies by simple intent. Offline, instant, the default.

It recognizes a handful of intents from keywords (greeting, farewell, thanks, how-are-you, name,
help, a question, agreement) and answers each with one of several lines, cycling through them in
a seeded shuffled order so a demo does not repeat itself. Anything else gets a line that picks
up a word the user said.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from flowact.agents.base import ResponderError, Turn
from flowact.schemas.agent_settings import AgentSettings

# fmt: off
INTENTS: dict[str, tuple[str, ...]] = {
    "greeting": (
        "Hello! It's lovely to see you. What would you like to talk about?",
        "Hi there! I'm all ears. How can I help today?",
        "Hey, welcome! What's on your mind?",
    ),
    "farewell": (
        "Goodbye! It was a pleasure talking with you.",
        "Bye for now. Come back any time!",
        "Take care, and see you soon!",
    ),
    "thanks": (
        "You're very welcome!",
        "Happy to help. Anything else?",
        "My pleasure! Is there something more you'd like to know?",
    ),
    "wellbeing": (
        "I'm doing great, thanks for asking! How about you?",
        "Pretty good! Talking with you makes it better. And you?",
        "I feel wonderful today. How are things on your side?",
    ),
    "name": (
        "I'm a FlowAct avatar, a real-time video character. You can call me Flo.",
        "My name is Flo. I'm an avatar rendered live while we talk.",
    ),
    "help": (
        "I can chat, answer simple questions, and show you how a live avatar moves and speaks.",
        "Ask me anything! I'll answer as well as a scripted avatar can.",
    ),
    "yes": (
        "Great, let's do that.",
        "Wonderful. Tell me more.",
        "Perfect! What comes next?",
    ),
    "no": (
        "That's fine. What would you prefer instead?",
        "No problem at all. Maybe something else then?",
    ),
    "question": (
        "That's a good question. I'm a scripted demo, so I can only guess, but I'd say it depends.",
        "Hmm, let me think. I don't know for sure, but it sounds interesting!",
        "Good question! Connect me to a language model and I'll give you a real answer.",
    ),
    "other": (
        "Interesting! Tell me more about {topic}.",
        "I see. What do you find most exciting about {topic}?",
        "{Topic}, really? I'd love to hear more.",
        "Okay! And how do you feel about {topic}?",
    ),
}

# Checked in this order; the first intent with a matching word wins.
KEYWORDS: tuple[tuple[str, frozenset[str]], ...] = (
    ("farewell", frozenset(["bye", "goodbye", "farewell", "see you", "good night"])),
    ("thanks", frozenset("thanks thank thx cheers appreciate".split())),
    ("wellbeing", frozenset(["how are you", "how's it going", "how do you do", "how are things"])),
    ("name", frozenset(["your name", "who are you", "what are you"])),
    ("help", frozenset(["help", "what can you do", "can you do"])),
    ("greeting", frozenset("hello hi hey greetings morning evening afternoon howdy".split())),
    ("yes", frozenset("yes yeah yep sure ok okay absolutely definitely".split())),
    ("no", frozenset("no nope nah never".split())),
)
# fmt: on

STOPWORDS = frozenset(
    "the a an and or but so to of in on at for with about from this that these those it its is "
    "are was were be been am i you he she we they me my your our their what which who whom how "
    "why when where there here do does did have has had can could would should will just really "
    "very like think know want tell some any more most much many not".split()
)
WORD = re.compile(r"[a-z']+")


def intent_of(text: str) -> str:
    """The intent of a user line, by keyword (a phrase matches within the text)."""
    lowered = text.lower()
    words = set(WORD.findall(lowered))
    for intent, keys in KEYWORDS:
        if any((" " in k and k in lowered) or k in words for k in keys):
            return intent
    return "question" if lowered.rstrip().endswith("?") else "other"


class ScriptedResponder:
    """Canned, varied replies by intent; seeded, so a run is reproducible."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._decks: dict[str, list[str]] = {}
        self._last: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> ScriptedResponder:
        return cls(settings.seed)

    async def reply(self, history: Sequence[Turn]) -> str:
        if not history or history[-1].role != "user":
            raise ResponderError("there is no user turn to reply to")
        text = history[-1].text
        intent = intent_of(text)
        line = self._draw(intent)
        if "{" in line:
            topic = _topic(text)
            line = line.format(topic=topic, Topic=topic[:1].upper() + topic[1:])
        return line

    def _draw(self, intent: str) -> str:
        """The next line of the intent's shuffled deck; a new shuffle when it runs out, never
        starting with the line just said."""
        deck = self._decks.get(intent)
        if not deck:
            deck = list(INTENTS[intent])
            self._rng.shuffle(deck)
            if len(deck) > 1 and deck[-1] == self._last.get(intent):
                deck[0], deck[-1] = deck[-1], deck[0]
            self._decks[intent] = deck
        line = deck.pop()
        self._last[intent] = line
        return line


def _topic(text: str) -> str:
    """The longest word of the line that is not a stopword ('that' when there is none)."""
    words = [w.strip("'") for w in WORD.findall(text.lower())]
    candidates = [w for w in words if w not in STOPWORDS and len(w) > 2]
    return max(candidates, key=len) if candidates else "that"
