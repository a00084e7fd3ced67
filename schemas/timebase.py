"""The one media clock of a session.

Video runs at 25 fps and renderer audio at 16 kHz, so one video frame is exactly 640 samples.
The VAE packs 4 frames into a latent (the reference image is a latent of its own) and a chunk is
3 latents: 12 frames, 0.48 s, 7,680 samples. Chunk k covers frames [12k, 12k + 12) and samples
[7680k, 7680(k + 1)). Every timestamp on the wire is an integer on this clock.
"""

FPS = 25
SAMPLE_RATE = 16_000
FRAMES_PER_LATENT = 4
LATENTS_PER_CHUNK = 3
FRAMES_PER_CHUNK = FRAMES_PER_LATENT * LATENTS_PER_CHUNK
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
SAMPLES_PER_CHUNK = SAMPLES_PER_FRAME * FRAMES_PER_CHUNK
BYTES_PER_SAMPLE = 2  # s16le mono
CHUNK_SECONDS = FRAMES_PER_CHUNK / FPS


def chunk_frames(index: int) -> range:
    """Video frames of chunk `index` on the session clock."""
    return range(index * FRAMES_PER_CHUNK, (index + 1) * FRAMES_PER_CHUNK)


def chunk_samples(index: int) -> range:
    """16 kHz audio samples of chunk `index` on the session clock."""
    return range(index * SAMPLES_PER_CHUNK, (index + 1) * SAMPLES_PER_CHUNK)


def chunk_of_sample(sample: int) -> int:
    """The chunk whose window holds `sample`."""
    return sample // SAMPLES_PER_CHUNK


def chunk_of_frame(frame: int) -> int:
    """The chunk whose window holds video frame `frame`."""
    return frame // FRAMES_PER_CHUNK


def seconds_to_frames(seconds: float) -> int:
    """Round a human duration in seconds to whole video frames (at least one)."""
    return max(1, round(seconds * FPS))
