"""Real footage as training data: a folder of videos with sidecar annotations, prepared once
(`prepare_footage`) into frames, 16 kHz speech and per-frame prompt ids at a preset's size, and
drawn from as a `base.ClipSource` (`FootageClips`).

Input: videos (`VIDEO_SUFFIXES`), each with a sidecar `<stem>.json` beside it (`Sidecar`):

    {"reference": 0.0, "split": "train",
     "prompts": [{"channel": "gesture", "text": "waves hello", "start": 1.2, "end": 3.4}]}

Times are seconds from the video's first frame; `reference` is the time of the neutral frame that
becomes frame 0 of every clip of the video (the renderer's reference image); `split` "eval" keeps
a video out of training for the held-out reports. A video without a sidecar is used with no
prompts, its first frame as reference, in the train split (and logged).

Output in `out`: `manifest.json` (`Manifest`: the preset, the frame size, the prompt texts, and
per video its frame count, reference frame and split; written last, so that a folder holding one
is prepared), per video `<stem>.frames.npy` (uint8 `[T, H, W, 3]`, memory-mapped when read:
footage at the larger presets' sizes does not fit in memory) and `<stem>.npz` (`pcm` int16
`[T * 640]`, `prompt` int64 `[T, channels]`: ids into the prompt texts, -1 none), and
`text_table.pt`, the preset's text encoder over the prompt texts (row i embeds prompt i, as the
world's table does its prompts).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import structlog
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tqdm import tqdm

from flowact.renderer.media import fit_image
from flowact.renderer.presets import BEHAVIOR_CHANNELS, get_preset
from flowact.renderer.training.base import Clip
from flowact.schemas.messages import Channel
from flowact.schemas.timebase import (
    FPS,
    FRAMES_PER_CHUNK,
    FRAMES_PER_LATENT,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    import av as av_mod

log = structlog.get_logger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm")
MANIFEST = "manifest.json"
TEXT_TABLE = "text_table.pt"
Split = Literal["train", "eval"]

# ---------------------------------------------------------------------------------- sidecars


class PromptSpan(BaseModel):
    """One prompt on one channel from `start` to `end` (seconds, end excluded)."""

    model_config = ConfigDict(extra="forbid")

    channel: Channel
    text: str = Field(min_length=1)
    start: float = Field(ge=0)
    end: float

    @model_validator(mode="after")
    def _end_after_start(self) -> PromptSpan:
        if self.end <= self.start:
            raise ValueError(f"end {self.end} s is not after start {self.start} s")
        return self


class Sidecar(BaseModel):
    """A video's annotations: its reference frame's time, its split and its prompts (no two of
    one channel overlapping)."""

    model_config = ConfigDict(extra="forbid")

    reference: float = Field(0.0, ge=0)
    split: Split = "train"
    prompts: list[PromptSpan] = []

    @model_validator(mode="after")
    def _no_overlap(self) -> Sidecar:
        for channel in BEHAVIOR_CHANNELS:
            spans = sorted(
                (p.start, p.end, i) for i, p in enumerate(self.prompts) if p.channel == channel
            )
            for (s0, e0, i), (s1, e1, j) in zip(spans, spans[1:], strict=False):
                if s1 < e0:
                    raise ValueError(
                        f"prompts {i} and {j} overlap on channel {channel!r} "
                        f"({s0}-{e0} s and {s1}-{e1} s)"
                    )
        return self

    def check_within(self, seconds: float, path: Path) -> None:
        """Raise `ValueError` naming `path` and the field where a time is past the video's
        `seconds`."""
        if self.reference >= seconds:
            raise ValueError(
                f"{path}: reference {self.reference} s is past the video's end ({seconds:.2f} s)"
            )
        for i, prompt in enumerate(self.prompts):
            if prompt.end > seconds + 1e-6:
                raise ValueError(
                    f"{path}: prompts.{i}.end {prompt.end} s is past the video's end "
                    f"({seconds:.2f} s)"
                )


def read_sidecar(video: Path) -> Sidecar:
    """The sidecar of `video` (`<stem>.json`), validated; defaults where there is none."""
    path = video.with_suffix(".json")
    if not path.is_file():
        log.warning("footage_without_sidecar", video=str(video), used_as="train, no prompts")
        return Sidecar()
    try:
        return Sidecar.model_validate_json(path.read_text())
    except ValidationError as err:
        raise ValueError(f"{path}: {err}") from None


# ---------------------------------------------------------------------------------- manifest


class PreparedVideo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str  # the stem of its files in the prepared folder
    source: str
    frames: int
    reference: int  # frame index
    split: Split


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: str
    height: int
    width: int
    prompts: list[str]  # row i of text_table.pt
    videos: list[PreparedVideo]


def is_footage(data: str | Path) -> bool:
    """Whether `data` is a folder `prepare_footage` made (rather than the world's data)."""
    return (Path(data) / MANIFEST).is_file()


def read_manifest(data: str | Path) -> Manifest:
    return Manifest.model_validate_json((Path(data) / MANIFEST).read_text())


# ---------------------------------------------------------------------------------- decoding


def _av() -> av_mod:
    try:
        import av
    except ImportError as err:
        raise ImportError("decoding footage needs PyAV: pip install 'flowact[media]'") from err
    return av


class _NearestFrames:
    """Source frames at their own times -> frames at 25 fps, each the source frame nearest in
    time to it (frame i is at i / 25 s); source frames between two are dropped, repeated where
    the source is slower."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size
        self.count = 0
        self._last: av_mod.VideoFrame | None = None
        self._last_time = 0.0

    def push(self, time: float, frame: av_mod.VideoFrame) -> Iterator[np.ndarray]:
        """The frames that `frame`, at `time` s, ends: those nearer its predecessor."""
        if self._last is not None:
            yield from self._until((self._last_time + time) / 2)
        self._last, self._last_time = frame, time

    def finish(self, end: float) -> Iterator[np.ndarray]:
        """The frames before `end` s, the last source frame's end."""
        if self._last is not None:
            yield from self._until(end)

    def _until(self, time: float) -> Iterator[np.ndarray]:
        image = None
        while self.count / FPS < time:
            image = fit_image(self._last.to_image(), *self.size) if image is None else image
            yield image
            self.count += 1


def _inspect(video: Path) -> float | None:
    """The video stream's duration in seconds (None if the file does not say); raises
    `ValueError` naming the file when it has no video or no audio track."""
    with _av().open(str(video)) as container:
        if not container.streams.video:
            raise ValueError(f"{video}: no video track")
        if not container.streams.audio:
            raise ValueError(f"{video}: no audio track; the renderer trains on speech")
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        return container.duration / 1_000_000 if container.duration else None


def decode(video: Path, size: tuple[int, int], frames_path: Path) -> tuple[int, np.ndarray]:
    """Decode `video` in one pass: frames at 25 fps (`_NearestFrames`), centre-cropped and
    resized to `size` as reference images are (`media.fit_image`), streamed to `frames_path` as
    uint8 `[T, H, W, 3]`; its first audio track mixed to mono 16 kHz int16, aligned to the first
    video frame, cut or padded with silence to T * 640 samples. Returns T and the speech."""
    av = _av()
    picker = _NearestFrames(size)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    parts: list[np.ndarray] = []
    starts: dict[str, float] = {}  # time of the first frame, per kind of stream
    raw_path = frames_path.with_suffix(".raw")
    with av.open(str(video)) as container, raw_path.open("wb") as raw:
        image_stream, audio_stream = container.streams.video[0], container.streams.audio[0]
        image_stream.thread_type = "AUTO"
        end = 0.0
        for frame in container.decode(image_stream, audio_stream):
            if frame.time is None:
                continue
            if isinstance(frame, av.AudioFrame):
                starts.setdefault("audio", frame.time)
                parts += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
                continue
            time = frame.time - starts.setdefault("video", frame.time)
            for image in picker.push(time, frame):
                raw.write(image.tobytes())
            step = frame.duration * frame.time_base if frame.duration else 1 / _rate(image_stream)
            end = time + float(step)
        parts += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
        for image in picker.finish(end):
            raw.write(image.tobytes())
    frames = picker.count
    if frames == 0:
        raw_path.unlink()
        raise ValueError(f"{video}: no video frames decoded")
    np.save(frames_path, np.memmap(raw_path, np.uint8, "r", shape=(frames, *size, 3)))
    raw_path.unlink()
    pcm = np.concatenate(parts) if parts else np.zeros(0, np.int16)
    offset = round((starts.get("audio", 0.0) - starts.get("video", 0.0)) * SAMPLE_RATE)
    pcm = np.concatenate([np.zeros(offset, np.int16), pcm]) if offset > 0 else pcm[-offset:]
    want = frames * SAMPLES_PER_FRAME
    if len(pcm) < want - SAMPLES_PER_FRAME:
        log.info(
            "footage_audio_padded",
            video=str(video),
            missing_seconds=(want - len(pcm)) / SAMPLE_RATE,
        )
    return frames, np.pad(pcm[:want], (0, max(0, want - len(pcm))))


def _rate(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else float(FPS)


def prompt_ids(sidecar: Sidecar, frames: int, index: dict[str, int]) -> np.ndarray:
    """`[frames, channels]` int64: the id (`index` of its text) of the prompt active at each
    frame's time (i / 25 s) on each channel, -1 none."""
    ids = np.full((frames, len(BEHAVIOR_CHANNELS)), -1, np.int64)
    times = np.arange(frames) / FPS
    for prompt in sidecar.prompts:
        active = (times >= prompt.start) & (times < prompt.end)
        ids[active, BEHAVIOR_CHANNELS.index(prompt.channel)] = index[prompt.text]
    return ids


# --------------------------------------------------------------------------------- preparing


def find_videos(folder: Path) -> list[Path]:
    """The videos in `folder`, sorted by name; raises `ValueError` if there are none or two
    share a stem (they would share a sidecar)."""
    videos = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise ValueError(f"{folder} holds no video ({', '.join(VIDEO_SUFFIXES)})")
    stems: dict[str, Path] = {}
    for video in videos:
        if video.stem in stems:
            raise ValueError(f"{stems[video.stem]} and {video} share the sidecar {video.stem}.json")
        stems[video.stem] = video
    return videos


def prepare_footage(videos: str | Path, out: str | Path, preset: str = "demo") -> Manifest:
    """Prepare the videos of the folder `videos` for training `preset` into `out` (see the
    module's docstring). Every sidecar and track is checked before anything is decoded: bad
    input raises `ValueError` naming the file and the field."""
    config = get_preset(preset)
    size = (config.height, config.width)
    out = Path(out)
    inputs = [(video, read_sidecar(video)) for video in find_videos(Path(videos))]
    said = {video: _inspect(video) for video, _ in inputs}  # the duration each file states
    for video, sidecar in inputs:
        if said[video] is not None:
            sidecar.check_within(said[video], video.with_suffix(".json"))
    texts = list(dict.fromkeys(p.text for _, sidecar in inputs for p in sidecar.prompts))
    index = {text: i for i, text in enumerate(texts)}
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # a folder cut off mid-way is not taken for prepared
    prepared = []
    for video, sidecar in tqdm(inputs, desc="footage", unit="video"):
        frames, pcm = decode(video, size, out / f"{video.stem}.frames.npy")
        if said[video] is None:  # known only now
            sidecar.check_within(frames / FPS, video.with_suffix(".json"))
        np.savez(out / f"{video.stem}.npz", pcm=pcm, prompt=prompt_ids(sidecar, frames, index))
        reference = min(round(sidecar.reference * FPS), frames - 1)
        prepared.append(
            PreparedVideo(
                name=video.stem,
                source=str(video),
                frames=frames,
                reference=reference,
                split=sidecar.split,
            )
        )
        log.info("footage_video", video=str(video), frames=frames, split=sidecar.split)
    from flowact.renderer.engine import build_text_encoder

    # with no prompt anywhere one zero row, never looked up: the lookups index row 0 under a mask
    encoder = build_text_encoder("auto", preset)
    table = encoder.encode(texts) if texts else torch.zeros(1, config.text_dim)
    torch.save(table, out / TEXT_TABLE)
    manifest = Manifest(
        preset=preset, height=size[0], width=size[1], prompts=texts, videos=prepared
    )
    tmp = out / f"{MANIFEST}.tmp"
    tmp.write_text(manifest.model_dump_json(indent=1) + "\n")
    tmp.replace(out / MANIFEST)
    log.info(
        "footage_prepared",
        out=str(out),
        videos=len(prepared),
        prompts=len(texts),
        frames=sum(v.frames for v in prepared),
    )
    return manifest


# ------------------------------------------------------------------------------------ clips


@dataclass
class _Speech:
    pcm: np.ndarray  # int16 [T * 640]
    prompt: np.ndarray  # int64 [T, channels]


class FootageClips:
    """Prepared footage (`prepare_footage` made `data`) as a `base.ClipSource`: clips at random
    places in the videos of `split` (each place on the 4-frame latent grid equally likely, so a
    long video gives more clips than a short one), frame 0 the video's reference frame. The
    clips carry frames, speech and prompts only (no ground truth); videos shorter than a clip
    are skipped (logged)."""

    ground_truth: ClassVar[bool] = False

    def __init__(self, data: str | Path, split: Split = "train") -> None:
        self.data = Path(data)
        self.split = split
        self.manifest = read_manifest(self.data)
        self.videos = [v for v in self.manifest.videos if v.split == split]
        if not self.videos:
            hint = ""
            if split == "eval":
                hint = ': mark held-out videos "split": "eval" in their sidecars'
            raise ValueError(f"{self.data} holds no {split} footage{hint}")
        self._speech: dict[str, _Speech] = {}
        self._frames: dict[str, np.ndarray] = {}
        self._places_of: dict[int, tuple[list[PreparedVideo], np.ndarray]] = {}

    @property
    def size(self) -> tuple[int, int]:
        return (self.manifest.height, self.manifest.width)

    def heldout(self) -> FootageClips:
        return FootageClips(self.data, "eval")

    def make(
        self, n: int, chunks: int, rng: np.random.Generator, device: str | torch.device = "cpu"
    ) -> Clip:
        length = chunks * FRAMES_PER_CHUNK
        videos, ends = self._places(length)
        frames, pcm, prompt = [], [], []
        for pick in rng.integers(ends[-1], size=n):
            k = int(np.searchsorted(ends, pick, side="right"))
            video = videos[k]
            start = FRAMES_PER_LATENT * int(pick - (ends[k - 1] if k else 0))
            images = self._frames_of(video)
            frames.append(
                np.concatenate([images[video.reference][None], images[start : start + length]])
            )
            speech = self._speech_of(video)
            pcm.append(speech.pcm[start * SAMPLES_PER_FRAME : (start + length) * SAMPLES_PER_FRAME])
            prompt.append(speech.prompt[start : start + length])
        video = torch.from_numpy(np.stack(frames)).to(device)  # [B, 1 + T, H, W, 3] uint8
        return Clip(
            frames=video.permute(0, 1, 4, 2, 3).float() / 127.5 - 1,  # [B, 1 + T, 3, H, W]
            pcm=torch.from_numpy(np.stack(pcm)).to(device).float() / 32768,
            prompt=torch.from_numpy(np.stack(prompt)).to(device),
        )

    def training_phrasings(self) -> dict[str, list[str]]:
        """Per behavior channel, the prompt texts the train split's videos carry there, in the
        manifest's order; what only held-out videos say is not among them. Reads the prompt ids
        alone, not the speech beside them."""
        used: dict[int, set[int]] = {ch: set() for ch in range(len(BEHAVIOR_CHANNELS))}
        for video in self.manifest.videos:
            if video.split != "train":
                continue
            with np.load(self.data / f"{video.name}.npz") as arrays:
                prompt = arrays["prompt"]
            for ch, ids in used.items():
                ids.update(int(i) for i in np.unique(prompt[:, ch]) if i >= 0)
        return {
            BEHAVIOR_CHANNELS[ch]: [self.manifest.prompts[i] for i in sorted(ids)]
            for ch, ids in used.items()
            if ids
        }

    def reference_image(self) -> np.ndarray:
        """The reference frame of the first video, uint8 `[H, W, 3]`."""
        video = self.videos[0]
        return np.array(self._frames_of(video)[video.reference])

    def _frames_of(self, video: PreparedVideo) -> np.ndarray:
        """The video's frames, memory-mapped once (a training step draws clips from them)."""
        if video.name not in self._frames:
            path = self.data / f"{video.name}.frames.npy"
            self._frames[video.name] = np.load(path, mmap_mode="r")
        return self._frames[video.name]

    def _speech_of(self, video: PreparedVideo) -> _Speech:
        if video.name not in self._speech:
            with np.load(self.data / f"{video.name}.npz") as arrays:
                self._speech[video.name] = _Speech(arrays["pcm"], arrays["prompt"])
        return self._speech[video.name]

    def _places(self, length: int) -> tuple[list[PreparedVideo], np.ndarray]:
        """The videos with room for a clip of `length` frames, and the running count of the
        places a clip can start in them (worked out, and logged, once per length)."""
        if length in self._places_of:
            return self._places_of[length]
        long = [v for v in self.videos if v.frames >= length]
        short = [v.name for v in self.videos if v.frames < length]
        if short:
            log.warning("footage_too_short", videos=short, clip_frames=length, split=self.split)
        if not long:
            longest = max(v.frames for v in self.videos)
            raise ValueError(
                f"no {self.split} video in {self.data} holds a clip of {length} frames "
                f"({length / FPS:.1f} s); the longest has {longest}"
            )
        ends = np.cumsum([(v.frames - length) // FRAMES_PER_LATENT + 1 for v in long])
        self._places_of[length] = (long, ends)
        return long, ends


def footage_summary(data: str | Path) -> dict:
    """What a prepared folder holds, per split: videos and seconds."""
    manifest = read_manifest(data)
    out = {}
    for split in ("train", "eval"):
        videos = [v for v in manifest.videos if v.split == split]
        out[split] = {"videos": len(videos), "seconds": sum(v.frames for v in videos) / FPS}
    return {**out, "prompts": len(manifest.prompts), "preset": manifest.preset}
