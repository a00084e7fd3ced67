"""What travels on the viewer's WebSocket: video chunks as binary messages, events as JSON text.

A chunk message is a little-endian u32 header length, a UTF-8 JSON header, then the frames one
after another (their byte lengths are in the header, in order), then the chunk's s16le audio.
The page needs no decoder but the browser's own: JPEG frames go to `createImageBitmap`, raw RGB
frames to an `ImageData`, and the PCM to a WebAudio buffer.
"""

from __future__ import annotations

import json
import struct

from flowact.schemas import timebase as tb
from flowact.schemas.messages import Message, VideoChunk

HEADER_LENGTH = struct.Struct("<I")


def pack_chunk(chunk: VideoChunk) -> bytes:
    """One binary WebSocket message for `chunk`."""
    header = {
        "index": chunk.index,
        "first_frame": chunk.first_frame,
        "fps": chunk.fps,
        "width": chunk.width,
        "height": chunk.height,
        "codec": chunk.codec,
        "frames": [len(frame) for frame in chunk.frames],
        "audio_rate": chunk.audio_rate,
        "samples": len(chunk.audio) // tb.BYTES_PER_SAMPLE,
        "state": chunk.state,
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([HEADER_LENGTH.pack(len(head)), head, *chunk.frames, chunk.audio])


def unpack_chunk(data: bytes) -> tuple[dict, list[bytes], bytes]:
    """(header, frames, pcm) of a chunk message: what the page does, for tests and tools."""
    (size,) = HEADER_LENGTH.unpack_from(data)
    header = json.loads(data[HEADER_LENGTH.size : HEADER_LENGTH.size + size])
    offset = HEADER_LENGTH.size + size
    frames = []
    for length in header["frames"]:
        frames.append(data[offset : offset + length])
        offset += length
    pcm = data[offset : offset + header["samples"] * tb.BYTES_PER_SAMPLE]
    return header, frames, pcm


def event_text(message: Message) -> str:
    """An event (state, utterance, error, transcript) as the JSON text message the page reads."""
    return json.dumps(message.model_dump(mode="json", exclude_none=True), separators=(",", ":"))
