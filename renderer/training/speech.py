"""Speech for the avatar world: espeak-ng sentences, syllable-like babble, the mouth envelope.

Training speech is a bank of espeak-ng utterances (varied voices, rates and pitches) over
generated sentences, mixed with synthetic syllable-like audio; evaluation speech is espeak-ng
saying `EVAL_SENTENCES`, whose sentences are not in the training bank. All audio is float32 PCM
at 16 kHz, RMS-normalised per utterance so that mouth openness follows the envelope's shape.

`mouth_from_pcm` is the ground truth of the world: mouth openness of video frame t from the
loudness of its 640 samples. The lip-sync metric correlates the probe's reading of generated
frames against this same envelope.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from flowact.schemas.pcm import resample
from flowact.schemas.timebase import SAMPLE_RATE, SAMPLES_PER_FRAME

TARGET_RMS = 0.1  # -20 dBFS
FLOOR_DB = -45.0  # envelope at or below this: mouth closed
RANGE_DB = 32.0  # the envelope rise that opens the mouth fully

VOICES = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-029",
    "en-us+f3",
    "en-gb+f2",
    "en-us+m3",
    "en-gb+m1",
    "en-us+f4",
    "en-gb-x-rp",
)

_SUBJECTS = (
    "the old lighthouse",
    "my neighbour",
    "a quiet river",
    "the morning train",
    "our little team",
    "the bright kitchen",
    "every garden",
    "that tall museum",
    "the winter market",
    "a friendly robot",
    "the school choir",
    "this small village",
)
_VERBS = (
    "opens",
    "carries",
    "remembers",
    "paints",
    "follows",
    "builds",
    "finds",
    "shares",
    "answers",
    "watches",
    "collects",
    "repairs",
)
_OBJECTS = (
    "a basket of apples",
    "the yellow bicycle",
    "seven paper boats",
    "a long letter",
    "the broken clock",
    "fresh bread",
    "the silver key",
    "two warm blankets",
    "a map of the coast",
    "a box of pencils",
    "the blue umbrella",
    "some old photos",
)
_ENDINGS = (
    "before sunrise",
    "after lunch",
    "on rainy days",
    "every single week",
    "near the hill",
    "without a word",
    "with great care",
    "at the station",
    "in the evening",
    "by the sea",
)
# fmt: on

# Held-out evaluation speech: none of these sentences is generated for training.
EVAL_SENTENCES = (
    "Welcome back, it is really good to see you again today.",
    "Could you tell me a little more about the project you mentioned?",
    "I think the second option sounds much better than the first one.",
    "The weather forecast says it will be sunny all weekend long.",
    "Let me explain how this works, step by step, from the beginning.",
    "That is a wonderful idea, and I am happy to help with it.",
    "Honestly, I am not completely sure, but we can find out together.",
    "Our meeting starts at nine, so please arrive a few minutes early.",
    "Thank you so much for waiting, the results are finally ready.",
    "Numbers like twelve, forty two and ninety nine are easy to read.",
    "Yes, absolutely, we can try that right now if you like.",
    "No, I do not think that will work, let us try something else.",
)


def training_sentences(count: int, seed: int = 0) -> list[str]:
    """`count` distinct generated sentences (subject, verb, object, ending)."""
    rng = np.random.default_rng(seed)
    seen: dict[str, None] = {}
    while len(seen) < count:
        parts = [str(rng.choice(words)) for words in (_SUBJECTS, _VERBS, _OBJECTS, _ENDINGS)]
        seen[f"{parts[0].capitalize()} {parts[1]} {parts[2]} {parts[3]}."] = None
    return list(seen)


def espeak(text: str, voice: str = "en-us", wpm: int = 165, pitch: int = 50) -> np.ndarray:
    """espeak-ng speech of `text`, float32 at 16 kHz, RMS-normalised."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise FileNotFoundError("espeak-ng is not installed (apt-get install espeak-ng)")
    cmd = [binary, "--stdout", "-v", voice, "-s", str(wpm), "-p", str(pitch), text]
    wav = subprocess.run(cmd, capture_output=True, check=True).stdout
    rate, pcm = _parse_wav(wav)
    return normalise(resample(pcm, rate, SAMPLE_RATE))


def _parse_wav(data: bytes) -> tuple[int, np.ndarray]:
    """(rate, float32 samples) of 16-bit mono WAV bytes; piped output has no valid sizes, so
    the data runs to the end of the bytes."""
    rate = int.from_bytes(data[24:28], "little")
    start = data.find(b"data") + 8
    body = data[start : start + (len(data) - start) // 2 * 2]
    return rate, np.frombuffer(body, "<i2").astype(np.float32) / 32768.0


def normalise(pcm: np.ndarray, rms: float = TARGET_RMS) -> np.ndarray:
    """Scale so that the voiced part (frames above -50 dB of the peak) has RMS `rms`."""
    frames = frame_rms(pcm)
    voiced = frames[frames > frames.max() * 10 ** (-50 / 20)] if frames.size else frames
    level = float(np.sqrt((voiced**2).mean())) if voiced.size else 0.0
    return (pcm * (rms / level)).astype(np.float32) if level > 0 else pcm.astype(np.float32)


def speech_bank(
    sentences: list[str], seed: int = 0, voices: tuple[str, ...] = VOICES
) -> list[np.ndarray]:
    """espeak-ng utterances of `sentences`, each with a random voice, rate and pitch."""
    rng = np.random.default_rng(seed)
    out = []
    for text in sentences:
        voice = str(rng.choice(voices))
        out.append(espeak(text, voice, int(rng.integers(130, 200)), int(rng.integers(25, 75))))
    return out


def save_bank(path: str | Path, utterances: list[np.ndarray]) -> None:
    """Utterances as one int16 array plus offsets (`.npz`)."""
    lengths = np.array([len(u) for u in utterances])
    pcm = np.concatenate(utterances) if utterances else np.zeros(0, np.float32)
    s16 = (np.clip(pcm, -1, 1) * 32767).astype(np.int16)
    np.savez(path, pcm=s16, offsets=np.concatenate([[0], np.cumsum(lengths)]))


def load_bank(path: str | Path) -> list[np.ndarray]:
    data = np.load(path)
    pcm, offsets = data["pcm"].astype(np.float32) / 32767, data["offsets"]
    return [pcm[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


# ------------------------------------------------------------------------------- babble


def syllable_speech(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Speech-like audio: voiced syllables (harmonics under random vowel formants, an
    attack-decay envelope, jittered pitch), noise bursts for consonants, pauses between
    words. float32 at 16 kHz, RMS-normalised."""
    n = int(seconds * SAMPLE_RATE)
    out = np.zeros(n, np.float32)
    pos = int(rng.uniform(0, 0.2) * SAMPLE_RATE)
    f0 = rng.uniform(90, 240)
    t_all = np.arange(n) / SAMPLE_RATE
    while pos < n:
        length = int(rng.uniform(0.1, 0.3) * SAMPLE_RATE)
        seg = slice(pos, min(n, pos + length))
        t = t_all[: seg.stop - seg.start]
        out[seg] = _syllable(t, f0 * rng.uniform(0.85, 1.2), rng)
        pos += length + int(rng.choice([0, 0, 0.03, 0.25, 0.5]) * SAMPLE_RATE * rng.random())
    return normalise(out)


def _syllable(t: np.ndarray, f0: float, rng: np.random.Generator) -> np.ndarray:
    duration = max(t[-1], 1e-3) if t.size else 1e-3
    formants = (rng.uniform(300, 900), rng.uniform(900, 2500))
    harmonics = np.arange(1, 25)[:, None]
    freq = f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))  # vibrato-like drift
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    gain = sum(np.exp(-(((harmonics * f0 - f) / 150) ** 2)) for f in formants)  # [24, 1]
    voiced = (gain * np.sin(harmonics * phase)).sum(0)
    envelope = np.sin(np.pi * np.clip(t / duration, 0, 1)) ** rng.uniform(0.5, 2.0)
    burst = rng.normal(0, 1, t.size) * np.exp(-t / 0.02) * rng.uniform(0, 0.6)
    return (voiced * envelope / 6 + burst).astype(np.float32)


# ---------------------------------------------------------------------------- envelope


def frame_rms(pcm: np.ndarray) -> np.ndarray:
    """RMS of each whole video frame's 640 samples; `[len(pcm) // 640]`."""
    frames = len(pcm) // SAMPLES_PER_FRAME
    x = pcm[: frames * SAMPLES_PER_FRAME].reshape(frames, SAMPLES_PER_FRAME)
    return np.sqrt((x.astype(np.float64) ** 2).mean(1)).astype(np.float32)


def mouth_from_pcm(pcm: np.ndarray) -> np.ndarray:
    """Ground-truth mouth openness per video frame, 0..1, from the loudness envelope."""
    db = 20 * np.log10(frame_rms(pcm) + 1e-6)
    open_ = np.clip((db - FLOOR_DB) / RANGE_DB, 0, 1)
    smoothed = open_.copy()
    smoothed[1:] = 0.7 * open_[1:] + 0.3 * open_[:-1]  # lips lag the sound a little
    return smoothed.astype(np.float32)


def conversation(
    seconds: float,
    rng: np.random.Generator,
    bank: list[np.ndarray] | None,
    speak_prob: float = 0.7,
    babble_prob: float = 0.3,
) -> np.ndarray:
    """A track of utterances (from `bank`, or babble) and pauses, float32 at 16 kHz."""
    n = int(seconds * SAMPLE_RATE)
    out = np.zeros(n, np.float32)
    pos = int(rng.uniform(0, 0.5) * SAMPLE_RATE)
    while pos < n:
        if rng.random() < speak_prob:
            if bank and rng.random() >= babble_prob:
                utt = bank[int(rng.integers(len(bank)))]
            else:
                utt = syllable_speech(rng.uniform(1.0, 3.0), rng)
            utt = utt * rng.uniform(0.8, 1.25)
            take = min(len(utt), n - pos)
            out[pos : pos + take] = utt[:take]
            pos += take
        pos += int(rng.uniform(0.2, 1.5) * SAMPLE_RATE)
    return out
