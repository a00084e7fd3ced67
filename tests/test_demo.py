"""The main job, `flowact demo`, on the tiny preset: a spoken conversation recorded to MP4."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from flowact.demo import run_demo
from flowact.schemas import timebase as tb
from flowact.schemas.agent_settings import AgentSettings
from flowact.schemas.settings import RendererSettings


@pytest.mark.skipif(not Path("/usr/bin/espeak-ng").exists(), reason="needs espeak-ng")
async def test_demo_records_the_agents_speech(tmp_path: Path) -> None:
    out = tmp_path / "demo.mp4"
    result = await run_demo(
        out,
        RendererSettings(preset="tiny", text_encoder="hash"),
        AgentSettings(),
        lines=("Hello! Who are you?",),
        timeout_s=120,
    )
    assert result.errors == []
    assert result.recording.chunks >= 6 and result.recording.filled == 0
    with av.open(str(out)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(out)) as container:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert frames == result.recording.chunks * tb.FRAMES_PER_CHUNK
    rms = [
        float(np.sqrt(np.mean(audio[i : i + tb.SAMPLES_PER_CHUNK] ** 2)))
        for i in range(0, len(audio), tb.SAMPLES_PER_CHUNK)
    ]
    spoken = [r > 0.02 for r in rms]
    assert sum(spoken) >= 3, rms  # the reply is heard...
    assert not spoken[0] and not spoken[-1], rms  # ...after a silent start, and ends in silence
    from PIL import Image

    sheet = Image.open(result.sheet)
    assert sheet.width == 10 * 32 and sheet.height >= 32
